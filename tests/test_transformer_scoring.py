"""Scoring transformers: which criteria apply, calibration batches by hand, prefix-cached ablation equal to the naive
one at the block-call count it promises, magnitude by hand, and `prunelab score` on a tiny transformer folder."""

import contextlib
import io

import pandas as pd
import pytest
import torch
from conftest import TINY_TRANSFORMERS, tiny_transformer

from prune_lab.backbones import backbone_for, get_backbone, walk
from prune_lab.backbones.transformer.calibration import (
    calibration_batches,
    clean_latents,
    random_conditioning,
    training_schedule,
)
from prune_lab.backbones.transformer.staged import block_paths
from prune_lab.cli import main
from prune_lab.demo.world import World, write_folder
from prune_lab.runtime.loading import LoadedModel
from prune_lab.runtime.schedule import noise_scheduler, noised
from prune_lab.scoring import score_model, score_units
from prune_lab.scoring.calibration import DenoisingBatch
from prune_lab.scoring.inputs import CalibrationSource, own_batches
from prune_lab.scoring.registry import ScoringInputs, criterion_options, get_criterion, list_criteria


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    """`prunelab argv`: its exit code and stderr lines. Not through `capsys`: diffusers binds its log handler to the
    stream of the moment, and a `capsys` stream closed after the test breaks conftest's handler reset in the next."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue().strip().splitlines()


def _pairs():
    """Every (backbone, criterion) pair the registry says applies."""
    return [(b, c) for b in ("unet", "transformer") for c in list_criteria(b)]


def test_applicability_selects_criteria_per_backbone():
    assert set(list_criteria("transformer")) == {"ablation", "magnitude", "similarity", "taylor"}
    assert set(list_criteria("unet")) == {"ablation", "clip", "magnitude", "taylor"}
    assert set(list_criteria()) == {c for _, c in _pairs()}
    for backbone, criterion in _pairs():
        assert get_criterion(criterion).applies_to(get_backbone(backbone))


def test_inapplicable_criterion_is_refused_before_loading_data(tiny_unet_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--criterion similarity does not apply to unet models .*block_streams"):
        score_model(tiny_unet_dir, ["similarity"], tmp_path / "s.csv", calibration=CalibrationSource(synthetic=True))
    assert not list(tmp_path.iterdir())


def _inputs(model, samples=2, **options):
    """Random calibration (8x8 latents, 9 text tokens, so tiny models stay fast), one timestep per sample."""
    pairs = backbone_for(model).calibration_batches(
        model, samples=samples, timesteps=1, batch_size=2, seed=0, scheduler=noise_scheduler(), tokens=9, latent=8
    )
    batches = [DenoisingBatch(kwargs, target) for kwargs, target in pairs]
    return ScoringInputs(model, walk(model), batches, options=criterion_options(options), seed=0)


def test_own_batches_say_what_they_are():
    model = tiny_transformer("SanaTransformer2DModel")
    batches, where = own_batches(LoadedModel(model, "tiny", "builtin"), CalibrationSource(samples=3, batch_size=2))
    assert [len(b.target) for b in batches] == [2, 2, 2]  # 3 samples x 2 timesteps
    assert batches[0].inputs["encoder_hidden_states"].shape == (2, 300, 12)  # Sana's 300 Gemma tokens
    assert where.startswith("synthetic:3 (random latents and text states shaped as the transformer backbone")


# ---------------------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("family", ["FluxTransformer2DModel", "SD3Transformer2DModel", "SanaTransformer2DModel"])
def test_flow_batches_by_hand(family):
    """x_t = (1 - s) x0 + s eps and target = eps - x0, so x_t - s * target is the clean latent (the first draw; Flux's
    packed into tokens, which the backbone's prediction unpacks)."""
    model = tiny_transformer(family)
    (kwargs, target), *_ = calibration_batches(model, samples=3, latent=8, timesteps=1, batch_size=3, seed=5)
    x0 = clean_latents(model, 3, 8, torch.Generator().manual_seed(5))
    assert x0.shape == (3, 2 if family == "FluxTransformer2DModel" else 4, 8, 8)
    sigma = kwargs["timestep"] * (1 if family == "FluxTransformer2DModel" else 1e-3)
    s = sigma.view(-1, *[1] * (target.ndim - 1))
    clean = backbone_for(model).prediction(model, kwargs["hidden_states"] - s * target, x0)
    torch.testing.assert_close(clean, x0, rtol=0, atol=1e-5)
    assert target.shape == model(**kwargs).sample.shape
    assert bool((sigma > 0).all() and (sigma <= 1).all())


@pytest.mark.parametrize("shift", [None, 3.0])
def test_flow_sigmas_come_from_the_models_schedule(shift):
    """σ = the flow schedule's grid at ⌊u·1000⌋ for the u drawn after the noise, as distillation draws it: SD3's
    static shift 3 applied (σ' = 3σ / (1 + 2σ)), the unshifted grid when the model has no flow scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = tiny_transformer("SD3Transformer2DModel")
    scheduler = None if shift is None else FlowMatchEulerDiscreteScheduler(shift=shift)
    (kwargs, _), *_ = calibration_batches(
        model, samples=4, latent=8, timesteps=1, batch_size=4, seed=2, scheduler=scheduler, tokens=9
    )
    g = torch.Generator().manual_seed(2)
    clean_latents(model, 4, 8, g), random_conditioning(model, 4, g, 9), torch.randn(4, 4, 8, 8, generator=g)
    grid = 1 - (torch.rand(4, generator=g) * 1000).floor() / 1000
    expected = grid if shift is None else shift * grid / (1 + (shift - 1) * grid)
    torch.testing.assert_close(kwargs["timestep"] / 1000, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(TINY_TRANSFORMERS))
def test_calibration_calls_the_model_as_the_backbone_does(family):
    """Every batch holds the backbone's step call (the one distillation makes) on the noised draw of
    :func:`~prune_lab.runtime.schedule.noised`, and its target in the output's layout."""
    model = tiny_transformer(family)
    backbone, scheduler = backbone_for(model), noise_scheduler()
    batches = calibration_batches(
        model, samples=3, latent=8, timesteps=2, batch_size=4, seed=7, scheduler=scheduler, tokens=9
    )
    g = torch.Generator().manual_seed(7)
    x0 = clean_latents(model, 3, 8, g).repeat_interleave(2, dim=0)
    cond = {k: v.repeat_interleave(2, dim=0) for k, v in random_conditioning(model, 3, g, 9).items()}
    x_t, t, target = noised(training_schedule(model, scheduler), x0, torch.randn(x0.shape, generator=g), g)
    assert [len(b[1]) for b in batches] == [4, 2]
    for (kwargs, got), part in zip(batches, (slice(0, 4), slice(4, 6))):
        expected = backbone.model_kwargs(model, x_t[part], t[part], {k: v[part] for k, v in cond.items()})
        assert kwargs.keys() == expected.keys()
        for key, value in expected.items():
            assert (value is None and kwargs[key] is None) or _equal(kwargs[key], value), key
        with torch.no_grad():
            prediction = backbone.prediction(model, model(**kwargs).sample, x_t[part])
        assert prediction.shape == x_t[part].shape
        torch.testing.assert_close(backbone.prediction(model, got, x_t[part]), target[part], rtol=0, atol=0)


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a is None and b is None or torch.equal(a, b)


def test_pixart_micro_conditions_are_the_images_size():
    """PixArt-α's resolution and aspect ratio as its pipeline passes them: the image's (height, width) in pixels
    (8x the latent) and height / width."""
    model = tiny_transformer(  # micro-condition embeddings take a third of the width each
        "PixArtTransformer2DModel", use_additional_conditions=True, attention_head_dim=12, cross_attention_dim=24
    )
    x, cond = torch.randn(2, 4, 8, 6), {"encoder_hidden_states": torch.randn(2, 5, 12)}
    added = backbone_for(model).model_kwargs(model, x, torch.tensor([3, 500]), cond)["added_cond_kwargs"]
    assert torch.equal(added["resolution"], torch.tensor([[64.0, 48.0]] * 2))
    assert torch.equal(added["aspect_ratio"], torch.full((2, 1), 8 / 6))
    with torch.no_grad():
        out = backbone_for(model).denoise(model, x, torch.tensor([3, 500]), cond)
    assert out.shape == x.shape


def test_ddpm_batches_by_hand():
    """DiT: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with eps the target; the output's first half regresses it."""
    model, scheduler = tiny_transformer("DiTTransformer2DModel"), noise_scheduler()
    (kwargs, target), *_ = calibration_batches(
        model, samples=2, latent=8, timesteps=2, batch_size=4, seed=1, scheduler=scheduler
    )
    x0 = clean_latents(model, 2, 8, torch.Generator().manual_seed(1)).repeat_interleave(2, dim=0)
    abar = scheduler.alphas_cumprod[kwargs["timestep"]].view(-1, 1, 1, 1)
    torch.testing.assert_close(kwargs["hidden_states"], abar.sqrt() * x0 + (1 - abar).sqrt() * target)
    assert model(**kwargs).sample.shape[1] == 2 * target.shape[1]
    assert kwargs["class_labels"].dtype == torch.long and len(kwargs["class_labels"]) == 4


# ------------------------------------------------------------------------------------------------- ablation
def _count_block_calls(model):
    calls = []
    handles = [
        model.get_submodule(p).register_forward_pre_hook(lambda m, a: calls.append(1)) for p in block_paths(model)
    ]
    return calls, handles


@pytest.mark.parametrize("units", ["blocks", "branches"])
def test_prefix_cached_ablation_equals_naive(tiny_family, units):
    """Every unit's score (output MSE and loss increase) is bit-identical with and without prefix caching, and a
    block sweep runs N + sum_i (N - 1 - i) block calls per batch instead of N + N (N - 1)."""
    model = tiny_transformer(tiny_family)
    assert backbone_for(model).staged(model) is not None
    todo = score_units(walk(model), units)
    scores, counts = {}, {}
    for cached in (True, False):
        inputs = _inputs(model, prefix_cache=cached)
        calls, handles = _count_block_calls(model)
        scorer = get_criterion("ablation").build(inputs)
        scores[cached] = [scorer(u) for u in todo]
        counts[cached] = len(calls)
        for h in handles:
            h.remove()
    assert scores[True] == scores[False]
    assert all(s.raw > 0 for s in scores[True])
    n, batches = len(block_paths(model)), len(inputs.batches)
    if units == "blocks":
        assert counts[False] == batches * (n + n * (n - 1))
        assert counts[True] == batches * (n + sum(n - 1 - i for i in range(n)))
    else:
        assert counts[True] < counts[False]


def test_prefix_cache_restores_the_blocks(tiny_family):
    model = tiny_transformer(tiny_family)
    before = [model.get_submodule(p) for p in block_paths(model)]
    staged, inputs = backbone_for(model).staged(model), _inputs(model, samples=1).batches[0].inputs
    states: list = []
    with torch.no_grad():
        full = staged.run(inputs, cache=states)
        assert torch.equal(staged.run(inputs, states[-1], len(states) - 1), full)
        assert torch.equal(model(**inputs).sample, full)
    assert [model.get_submodule(p) for p in block_paths(model)] == before


# ------------------------------------------------------------------------------------------------ magnitude
def test_magnitude_of_a_block_and_a_branch_by_hand():
    model = tiny_transformer("SD3Transformer2DModel")
    inputs = _inputs(model)
    scorer = get_criterion("magnitude").build(inputs)
    for name in ("transformer_blocks.1", "transformer_blocks.1.ff"):
        layers = [m.weight for m in model.get_submodule(name).modules() if isinstance(m, torch.nn.Linear)]
        expect = float(torch.cat([w.detach().abs().sum(dim=1).double() for w in layers]).mean())
        unit = next(u for g in ("blocks", "branches") for u in score_units(inputs.graph, g) if u.name == name)
        assert scorer(unit).raw == pytest.approx(expect, rel=1e-6)


def test_taylor_and_similarity_leave_the_model_unchanged(tiny_family):
    model = tiny_transformer(tiny_family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = _inputs(model)
    for name in ("taylor", "similarity"):
        scorer = get_criterion(name).build(inputs)
        assert all(scorer(u).raw > 0 for u in score_units(inputs.graph, "blocks"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------------ CLI
def test_score_cli_on_a_transformer_folder(tmp_path, capsys):
    folder = tmp_path / "sd3"
    tiny_transformer("SD3Transformer2DModel").save_pretrained(folder)
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", str(folder), "--criterion", "similarity", "ablation", "-o", str(out), "--quiet"]
    assert main([*argv, "--samples", "1", "--timesteps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "calibration: synthetic:1 (random latents and text states shaped as the transformer backbone" in printed
    df = pd.read_csv(out)
    assert len(df) == 2 * TINY_TRANSFORMERS["SD3Transformer2DModel"]["num_layers"]
    assert set(df["criterion"]) == {"similarity", "ablation"} and (df["raw"] > 0).all()
    assert df[df.criterion == "similarity"]["name"].tolist()[-1] == "transformer_blocks.3"


def test_score_cli_refuses_an_image_folder_without_a_pipeline(tmp_path):
    folder = tmp_path / "dit"
    tiny_transformer("DiTTransformer2DModel").save_pretrained(folder)
    images = write_folder(World(0), "train", 0, 2, tmp_path / "scenes")
    argv = ["score", "--model", str(folder), "--criterion", "taylor", "-o", str(tmp_path / "s.csv")]
    code, err = _cli([*argv, "--calib-dir", str(images), "--quiet"])
    assert code == 2 and len(err) == 1 and f"--model {folder} is not a pipeline folder" in err[0]
    assert not (tmp_path / "s.csv").exists()


def test_score_cli_refuses_a_calibration_cache_for_transformers(tmp_path):
    folder = tmp_path / "sd3"
    tiny_transformer("SD3Transformer2DModel").save_pretrained(folder)
    argv = ["score", "--model", str(folder), "--criterion", "taylor", "-o", str(tmp_path / "s.csv")]
    code, err = _cli([*argv, "--calib-cache", str(tmp_path / "c.safetensors"), "--quiet"])
    assert code == 2 and len(err) == 1 and "--calib-cache is not read for transformer models yet" in err[0]


def test_image_folder_calibration_of_a_flow_pipeline(tmp_path):
    """--calib-dir on an SD3 pipeline: the images' VAE latents noised by flow matching (x_t - σ·target = x_0, the
    posterior draw within its spread of the mean), the captions' own conditioning, sample-major."""
    from transformer_pipelines import save_pipeline

    from prune_lab.models import load_unet
    from prune_lab.runtime.readers import crop_tensor, read_image_text, read_rgb
    from prune_lab.scoring.calibration import load_pipeline

    root = save_pipeline("sd3", tmp_path / "sd3")
    images = write_folder(World(0), "train", 0, 3, tmp_path / "scenes")
    loaded = load_unet(root)
    pipe, backbone = load_pipeline(loaded), backbone_for(loaded.unet)
    source = CalibrationSource(folder=images, samples=3, batch_size=4, seed=0)
    batches, where = own_batches(loaded, source, pipeline=pipe, timesteps=2)
    assert where.startswith(f"images:{images} (3 images through the pipeline's VAE")
    rows = read_image_text(images)
    side = loaded.unet.config.sample_size * pipe.vae_scale_factor
    with torch.no_grad():
        pixels = torch.stack([crop_tensor(read_rgb(r.path), side)[0] for r in rows])
        posterior = pipe.vae.encode(pixels).latent_dist
    cfg = pipe.vae.config
    mean, std = (posterior.mean - cfg.shift_factor) * cfg.scaling_factor, posterior.std * cfg.scaling_factor
    cond = backbone.encode_prompts(pipe, [r.text for r in rows])
    x_t = torch.cat([b.inputs["hidden_states"] for b in batches])
    sigma = torch.cat([b.inputs["timestep"] for b in batches]) / 1000
    x0 = x_t - sigma.view(-1, 1, 1, 1) * torch.cat([b.target for b in batches])
    order = torch.arange(3).repeat_interleave(2)  # sample-major: each image at its two σ draws
    assert x0.shape == (6, 4, 8, 8) and [len(b.target) for b in batches] == [4, 2]
    torch.testing.assert_close(x0[0::2], x0[1::2], atol=1e-4, rtol=0)  # one latent draw per image
    assert ((x0 - mean[order]).abs() <= 6 * std[order] + 1e-4).all()
    for key in ("encoder_hidden_states", "pooled_projections"):
        torch.testing.assert_close(torch.cat([b.inputs[key] for b in batches]), cond[key][order])
