"""Flow matching and transformer text-to-image pipelines: training targets and timesteps by hand, the conditioners
and step calls against the pipelines' own denoising calls, a distill step by hand, and seeded generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_distill import write_image_folder
from transformer_pipelines import FAMILIES, save_pipeline, student_folder

from prune_lab.distill.data import ImageTextFolder, collate
from prune_lab.distill.encoders import load_encoders, model_call
from prune_lab.distill.losses import DistillationLoss
from prune_lab.distill.step import DistillStep, step_generator
from prune_lab.runtime.schedule import TimestepSampling, is_flow_matching, noise_scheduler, noised, training_target

#: The image side each tiny family is driven at (Sana's pipeline wants multiples of 32).
SIDE = {"sd3": 16, "flux": 16, "pixart": 16, "sana": 32}


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-pipes")
    return {family: save_pipeline(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("flow-data") / "images", n=4, corrupt=False, size=(32, 32))


def _pipeline(folder):
    from prune_lab.pipelines import load_pipeline

    return load_pipeline(folder)


# ------------------------------------------------------------------------------------------------ schedules
def _shifted_grid(shift: float, steps: int = 1000) -> torch.Tensor:
    sigmas = torch.arange(steps, 0, -1, dtype=torch.float32) / steps
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def test_noise_scheduler_follows_the_pipeline_config(pipeline_dirs):
    kinds = {family: noise_scheduler(pipeline_dirs[family]) for family in FAMILIES}
    assert {f: is_flow_matching(s) for f, s in kinds.items()} == {
        "sd3": True,
        "flux": True,
        "pixart": False,
        "sana": True,
    }
    assert kinds["sd3"].config.shift == 3.0 and not kinds["sd3"].config.use_dynamic_shifting
    assert kinds["sana"].config.shift == 3.0  # Sana's DPM-Solver `flow_shift`
    assert kinds["flux"].config.use_dynamic_shifting
    assert kinds["pixart"].config.prediction_type == "epsilon"


def test_flow_noising_by_hand_uniform_and_logit_normal():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 4, 6, 6, generator=g)
    grid = _shifted_grid(3.0)
    for sampling, draw in (
        (TimestepSampling(), lambda g: torch.rand(3, generator=g)),
        (TimestepSampling("logit_normal", 0.5, 0.8), lambda g: torch.sigmoid(0.5 + 0.8 * torch.randn(3, generator=g))),
    ):
        x_t, t, target = noised(scheduler, x0, noise, torch.Generator().manual_seed(7), sampling)
        sigma = grid[(draw(torch.Generator().manual_seed(7)) * 1000).long()]
        s = sigma.view(3, 1, 1, 1)
        torch.testing.assert_close(x_t, (1 - s) * x0 + s * noise)
        torch.testing.assert_close(t, sigma * 1000)
        torch.testing.assert_close(target, noise - x0)
        assert torch.equal(training_target(scheduler, x0, noise, t), noise - x0)


def test_flux_dynamic_shift_by_hand():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    x0 = torch.randn(2, 4, 64, 32)  # 32 x 16 = 512 tokens of 2x2 patches
    _, t, _ = noised(scheduler, x0, torch.randn_like(x0), torch.Generator().manual_seed(3))
    u = torch.rand(2, generator=torch.Generator().manual_seed(3))
    sigma = torch.arange(1000, 0, -1, dtype=torch.float32)[(u * 1000).long()] / 1000  # unshifted grid
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (512 - 256)
    torch.testing.assert_close(t, 1000 * math.exp(mu) / (math.exp(mu) + (1 / sigma - 1)))


def test_ddpm_noising_is_unchanged():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(prediction_type="v_prediction")
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x_t, t, target = noised(scheduler, x0, noise, torch.Generator().manual_seed(5))
    expected_t = torch.randint(0, 1000, (2,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(t, expected_t)
    assert torch.equal(x_t, scheduler.add_noise(x0, noise, t))
    assert torch.equal(target, scheduler.get_velocity(x0, noise, t))


def test_timestep_sampling_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="unknown timestep sampling 'cosmap'; choose one of uniform"):
        TimestepSampling("cosmap")


# ---------------------------------------------------------------------------- conditioning and step calls
def _captured_call(pipe, family: str, prompt: str, latents: torch.Tensor) -> tuple:
    """Run one denoising step of the pipeline itself and capture its transformer's call: (timestep, output)."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen.update(timestep=kwargs["timestep"], output=output[0])

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    guidance = 3.5 if family == "flux" else 1.0  # no classifier-free guidance; Flux-dev's embedded guidance
    try:
        from prune_lab.runtime.generation import sample

        sample(pipe, [prompt], steps=1, guidance=guidance, latents=latents, size=SIDE[family], output_type="latent")
    finally:
        handle.remove()
    return seen["timestep"], seen["output"]


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioner_and_step_call_equal_the_pipelines_own_call(family, pipeline_dirs):
    """The conditioning of `load_encoders` and the class's `model_call` reproduce, to the bit, the transformer
    output the pipeline computes in its first denoising step."""
    from prune_lab.runtime.generation import initial_latents

    pipe = _pipeline(pipeline_dirs[family])
    latents = initial_latents(pipe, 1, seed=0, size=SIDE[family])
    timestep, output = _captured_call(pipe, family, "a red cat", latents)
    encoders = load_encoders(pipeline_dirs[family], vae=False)
    cond = encoders.condition({"text": ["a red cat"]})
    if family == "flux":  # the pipeline passes t / 1000 and packed tokens
        timestep, latents = timestep * 1000, pipe._unpack_latents(latents, SIDE[family], SIDE[family], 2)
        output = pipe._unpack_latents(output, SIDE[family], SIDE[family], 2)
    if family == "pixart":  # learned sigma: the pipeline keeps the epsilon half
        output = output[:, :4]
    with torch.no_grad():
        mine = model_call(pipe.transformer)(pipe.transformer, latents, timestep, cond)
    assert mine.shape == latents.shape
    torch.testing.assert_close(mine, output, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_text_is_the_distillation_conditioning(family, pipeline_dirs):
    """Scoring's calibration text (the backbone's `encode_prompts` of a loaded pipeline, on the CPU) is, to the bit,
    the conditioning distillation's text-only pipeline gives (Sana's complex human instruction included)."""
    from prune_lab.backbones import backbone_for

    pipe, prompts = _pipeline(pipeline_dirs[family]), ["a red cat", "the big dog", "a tree"]
    mine = backbone_for(pipe.transformer).encode_prompts(pipe, prompts, batch_size=3)  # one batch, as distill's
    theirs = load_encoders(pipeline_dirs[family], vae=False).condition({"text": prompts})
    assert mine.keys() == theirs.keys() and all(v.device.type == "cpu" for v in mine.values())
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=0)


def test_dit_has_no_text_to_image_step_call():
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1)
    with pytest.raises(ValueError, match="no step call for a DiTTransformer2DModel \\(a class-conditional"):
        model_call(model)


# ------------------------------------------------------------------------------------------ distill step
def _student(teacher):
    import copy

    student = copy.deepcopy(teacher).float()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return student.train()


def test_sd3_distill_step_by_hand(pipeline_dirs, images):
    """One step on SD3: z_0 from the VAE (shift and scale), σ from the shifted grid, x_t, target ε − z_0, and the
    loss from the transformers called as SD3's pipeline calls them."""
    from diffusers import SD3Transformer2DModel
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    folder = pipeline_dirs["sd3"]
    teacher = SD3Transformer2DModel.from_pretrained(folder / "transformer").eval()
    student = _student(teacher)
    encoders = load_encoders(folder)
    assert (encoders.scaling_factor, encoders.shift_factor) == (1.5, 0.1)
    scheduler = noise_scheduler(folder)
    batch = collate([ImageTextFolder(images, resolution=16, seed=0)[(0, i)] for i in range(2)])
    terms = DistillStep(teacher, student, encoders, scheduler, DistillationLoss(1.0, 0.5, 0.0), [])(
        batch, step_generator(0, 3)
    )

    g = step_generator(0, 3)
    with torch.no_grad():
        moments = encoders.vae.encode(batch["pixel_values"]).latent_dist.parameters
        z0 = (DiagonalGaussianDistribution(moments).sample(generator=g) - 0.1) * 1.5
        noise = torch.randn(z0.shape, generator=g)
        sigma = _shifted_grid(3.0)[(torch.rand(2, generator=g) * 1000).long()].view(2, 1, 1, 1)
        x_t = (1 - sigma) * z0 + sigma * noise
        pipe = _pipeline(folder)
        embeds, _, pooled, _ = pipe.encode_prompt(batch["text"], None, None, do_classifier_free_guidance=False)
        kwargs = dict(timestep=sigma.flatten() * 1000, encoder_hidden_states=embeds, pooled_projections=pooled)
        teacher_out = teacher(x_t, **kwargs).sample
        student_out = student(x_t, **kwargs).sample
    task = F.mse_loss(student_out, noise - z0)
    out = F.mse_loss(student_out, teacher_out)
    torch.testing.assert_close(terms.task.detach(), task, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.out.detach(), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.total.detach(), task + 0.5 * out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["flux", "pixart", "sana"])
def test_distill_step_trains_each_family(family, pipeline_dirs, images):
    """A step per family: the student's gradients are finite and non-zero, the teacher gets none, and the student
    equal to the teacher has no output loss."""
    import diffusers

    folder = pipeline_dirs[family]
    cls = getattr(diffusers, _pipeline(folder).transformer.__class__.__name__)
    teacher = cls.from_pretrained(folder / "transformer").eval().requires_grad_(False)
    student = cls.from_pretrained(folder / "transformer").train()
    step = DistillStep(teacher, student, load_encoders(folder), noise_scheduler(folder), DistillationLoss(), [])
    side = SIDE[family]
    batch = collate([ImageTextFolder(images, resolution=side, seed=0)[(0, i)] for i in range(2)])
    terms = step(batch, step_generator(1, 0))
    terms.total.backward()
    assert terms.out.item() == 0.0 and terms.task.item() > 0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


def test_deterministic_encoder_latents_are_its_mean(pipeline_dirs, images):
    """Sana's DC-AE has no posterior: its latents are (mean − shift) · scale, however the generator draws."""
    encoders = load_encoders(pipeline_dirs["sana"], text=False)
    batch = collate([ImageTextFolder(images, resolution=32, seed=0)[(0, 0)]])
    with torch.no_grad():
        mean = encoders.vae.encode(batch["pixel_values"]).latent
    for seed in (0, 1):
        latents = encoders.latents(batch, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(latents, mean * 0.4, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_is_seeded_and_takes_a_pruned_transformer(family, pipeline_dirs, tmp_path):
    """Images from seeded latents repeat across calls; a pipeline folder whose transformer lost a block loads and
    draws other images from the same latents."""
    import numpy as np

    from prune_lab.runtime.generation import generate, initial_latents

    pipe = _pipeline(pipeline_dirs[family])
    latents = initial_latents(pipe, 3, seed=4, size=SIDE[family])
    again = initial_latents(pipe, 2, seed=4, size=SIDE[family])
    assert torch.equal(latents[:2], again)
    side = SIDE[family] // pipe.vae_scale_factor
    expected = (3, side * side // 4, 16) if family == "flux" else (3, 4, side, side)
    assert tuple(latents.shape) == expected

    prompts = ["a red cat", "the big dog", "a tree"]
    first = generate(pipe, prompts, latents, steps=2, guidance=2.0, batch_size=2, size=SIDE[family])
    second = generate(pipe, prompts, latents, steps=2, guidance=2.0, batch_size=3, size=SIDE[family])
    assert [im.size for im in first] == [(SIDE[family], SIDE[family])] * 3
    for a, b in zip(first, second, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1

    student = _pipeline(student_folder(pipeline_dirs[family], tmp_path / "student"))
    assert student.transformer.config.num_layers == pipe.transformer.config.num_layers - 1
    pruned = generate(student, prompts[:1], latents[:1], steps=2, guidance=2.0, size=SIDE[family])
    assert np.asarray(pruned[0]).shape == np.asarray(first[0]).shape
    assert not np.array_equal(np.asarray(pruned[0]), np.asarray(first[0]))


def test_flow_pipelines_take_the_flow_sampler_only(pipeline_dirs):
    from prune_lab.evaluation.generate import load_pipeline, native_resolution

    pipe = load_pipeline(pipeline_dirs["sd3"], scheduler="flow-euler")
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    assert native_resolution(pipe) == 8 * 2  # transformer sample size x VAE factor
    assert native_resolution(load_pipeline(pipeline_dirs["flux"], scheduler="flow-euler")) == 128 * 2
    with pytest.raises(ValueError, match="cannot sample a flow-matching pipeline; use flow-euler"):
        load_pipeline(pipeline_dirs["sd3"], scheduler="pndm")
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler cannot sample a DPMSolverMultistep"):
        load_pipeline(pipeline_dirs["pixart"], scheduler="flow-euler")


def test_sd3_without_t5_pads_with_zeros_as_its_pipeline_does(tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from transformer_pipelines import build_sd3

    build_sd3(t5=False).save_pretrained(tmp_path / "sd3")
    cond = load_encoders(tmp_path / "sd3", vae=False).condition({"text": ["a red cat"]})
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", text_encoder_3=None, tokenizer_3=None)
    embeds, _, pooled, _ = pipe.encode_prompt(["a red cat"], None, None, do_classifier_free_guidance=False)
    assert embeds.shape == (1, 77 + 256, 32) and not embeds[:, 77:].any()  # CLIP tokens, then 256 zero T5 tokens
    torch.testing.assert_close(cond["encoder_hidden_states"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond["pooled_projections"], pooled, rtol=0, atol=0)
    assert _pipeline(tmp_path / "sd3").text_encoder_3 is None  # prune_lab's loader takes the folder as it is
