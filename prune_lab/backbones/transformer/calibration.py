"""Calibration batches of a transformer: the forward keyword arguments of denoising steps, and what they regress.

One denoising step of each family is called as its diffusers pipeline calls it (:func:`model_kwargs`,
:func:`prediction`; the backbone's :meth:`~prune_lab.backbones.base.Backbone.model_kwargs` and
:meth:`~prune_lab.backbones.base.Backbone.prediction`, which scoring's calibration and distillation share), on latents
x_t (B, C, h, w), the schedule's timestep t (B,) and conditioning under diffusers' keyword names:

| family | conditioning | call |
|---|---|---|
| DiT | `class_labels` | integer t; the prediction drops the learned σ half |
| PixArt | T5 states + mask | `added_cond_kwargs`: pixel size, aspect ratio (α) or None (Σ); σ half dropped |
| SD3 / SD3.5 | CLIP-L + CLIP-G ‖ T5 states, `pooled_projections` | t = σ·1000 |
| Flux | T5 states, CLIP `pooled_projections` | 2x2-packed tokens and position ids, t = σ, guidance 3.5 (dev) |
| Sana | Gemma2 `encoder_hidden_states` + mask | t = σ·1000·`timestep_scale` |

Calibration batches: clean latents are Gaussian draws of the model's latent size (`latent_size`), or real images'
latents through the pipeline's VAE (an image-text folder, :func:`prune_lab.scoring.inputs.own_batches`); the
conditioning is the pipeline's own `encode_prompt` of calibration prompts or captions (:func:`encode_prompts`), or
random states shaped as the backbone's example call (:data:`~.spec.TEXT_TOKENS` tokens) when there is no pipeline.
Noisy inputs and targets come from :func:`~prune_lab.runtime.schedule.noised`, the one forward process distillation
trains with, under the family's training objective (:attr:`~.spec.Family.objective`, :func:`training_schedule`):

* `ddpm` (DiT, PixArt): x_t = add_noise(x_0, ε, t) of the model's noise scheduler (SD's without one) at integer
  t ~ U{0..T-1}, target :func:`~prune_lab.runtime.schedule.training_target` (ε); the learned-variance half of their
  output is not regressed.
* `flow` (SD3 / SD3.5, Flux, Sana; rectified flow, Esser et al., 2024): x_t = (1 − σ)·x_0 + σ·ε, target the velocity
  ε − x_0, with σ drawn as distillation draws it by default: u ~ U(0, 1) indexed into the model's flow schedule (its
  static shift, Flux's resolution-dependent shift), or the unshifted 1000-step grid when the model brings no flow
  scheduler config (a built-in name).

Targets are in the layout of the model's output (Flux: packed tokens), as scoring compares them with `.sample`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ...runtime.schedule import is_flow_matching, noise_scheduler, noised
from .spec import TEXT_TOKENS, family_of

#: Flux-dev's default guidance scale (the guidance embedding of guidance-distilled models; diffusers' Flux training
#: scripts' default).
FLUX_GUIDANCE = 3.5
#: VAE downsampling of the families whose config carries pixel micro-conditions (PixArt-α: resolution, aspect ratio).
VAE_SCALE = 8


# ------------------------------------------------------------------------------------------- conditioning
def _chunks(prompts: Sequence[str], size: int):
    return [list(prompts[i : i + size]) for i in range(0, len(prompts), size)]


def _masked(pipe, prompts: list[str], device, **options) -> dict:
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device=device, clean_caption=False, **options
    )
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}


def _sana_text(pipe, prompts: list[str], device) -> dict:
    """Sana's prompts carry the pipeline's default complex human instruction, as its `__call__` adds it."""
    instruction = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    return _masked(pipe, prompts, device, complex_human_instruction=instruction)


def _sd3_text(pipe, prompts: list[str], device) -> dict:
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _flux_text(pipe, prompts: list[str], device) -> dict:
    embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=device)  # text ids: rebuilt by each step call
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _dit_labels(pipe, prompts: list[str], device) -> dict:
    try:
        return {"class_labels": torch.tensor(pipe.get_label_ids(prompts), device=device)}
    except ValueError:
        raise ValueError(
            "DiT is class-conditional: its calibration prompts must be ImageNet class names of the pipeline's "
            f"id2label (e.g. {next(iter(pipe.labels))!r}); fix the prompts file or use --synthetic"
        ) from None


#: Family -> `encode(pipe, prompts, device) -> conditioning` through the pipeline's own encoders.
_ENCODERS = {"dit": _dit_labels, "pixart": _masked, "sd3": _sd3_text, "flux": _flux_text, "sana": _sana_text}
#: Families of the transformer pipelines, by class (a pipeline loaded for its text encoders has no transformer).
PIPELINE_FAMILIES = {
    "DiTPipeline": "dit",
    "PixArtSigmaPipeline": "pixart",
    "PixArtAlphaPipeline": "pixart",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "SanaPipeline": "sana",
}


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 8, device=None) -> dict[str, torch.Tensor]:
    """The conditioning of `prompts` from the pipeline's own `encode_prompt`, exactly what the pipeline feeds the
    transformer when generating (no classifier-free guidance, its default `max_sequence_length`, Sana's complex human
    instruction), under the model's keyword names: `encoder_hidden_states` (N, L, D), and as the family has them
    `encoder_attention_mask` (N, L), `pooled_projections` (N, P), or DiT's `class_labels` (N,) looked up from the
    prompts as ImageNet class names.

    Args:
        pipe: a transformer pipeline (one of :data:`PIPELINE_FAMILIES`, whose transformer may be left out, or another
            class whose transformer names the family).
        device: where the encoders run and the tensors stay; None: the pipeline's device, the result on the CPU.
    """
    names = [c.__name__ for c in type(pipe).__mro__]
    family = next((PIPELINE_FAMILIES[n] for n in names if n in PIPELINE_FAMILIES), None)
    encode = _ENCODERS[family or family_of(pipe.transformer).name]
    parts = [encode(pipe, chunk, device or pipe.device) for chunk in _chunks(prompts, batch_size)]
    return {k: torch.cat([p[k] for p in parts]).to(device or "cpu") for k in parts[0]}


def random_conditioning(
    model: nn.Module, samples: int, generator: torch.Generator, tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """Random conditioning shaped as the backbone's example call: Gaussian text states of the family's token count
    (or `tokens`) and width (and pooled vectors), or DiT class labels."""
    family, cfg = family_of(model), model.config
    if family.name == "dit":
        return {"class_labels": torch.randint(0, cfg.num_embeds_ada_norm, (samples,), generator=generator)}
    width = cfg.get("caption_channels") or cfg.joint_attention_dim
    out = {
        "encoder_hidden_states": torch.randn(samples, tokens or TEXT_TOKENS[family.name], width, generator=generator)
    }
    if cfg.get("pooled_projection_dim"):
        out["pooled_projections"] = torch.randn(samples, cfg.pooled_projection_dim, generator=generator)
    return out


# ------------------------------------------------------------------------------------------------ one step
def _image_kwargs(model, x, t, cond):
    return {"hidden_states": x, "timestep": t, **cond}


def _pixart_kwargs(model, x, t, cond):
    """PixArt's micro-conditions as its pipeline passes them: the image's (height, width) in pixels and their ratio
    (PixArt-α), or None (PixArt-Σ)."""
    added = {"resolution": None, "aspect_ratio": None}
    if model.config.get("use_additional_conditions"):
        n, (h, w) = x.shape[0], x.shape[-2:]
        size = torch.tensor([h * VAE_SCALE, w * VAE_SCALE], device=x.device, dtype=x.dtype)
        added = {
            "resolution": size.expand(n, 2),
            "aspect_ratio": torch.full((n, 1), h / w, device=x.device, dtype=x.dtype),
        }
    return {**_image_kwargs(model, x, t, cond), "added_cond_kwargs": added}


def _flux_kwargs(model, x, t, cond):
    """Flux: (B, C, h, w) latents packed into (B, h/2·w/2, 4C) tokens with their (row, column) position ids, zero
    text ids, t = σ (the pipeline passes t / 1000), the guidance scale when the model embeds it (Flux-dev)."""
    from diffusers import FluxPipeline

    b, c, h, w = x.shape
    text = cond["encoder_hidden_states"]
    guidance = torch.full((b,), FLUX_GUIDANCE, device=x.device) if model.config.guidance_embeds else None
    return {
        "hidden_states": FluxPipeline._pack_latents(x, b, c, h, w),
        "timestep": t / 1000,
        "guidance": guidance,
        "img_ids": FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
        "txt_ids": torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
        **cond,
    }


def _sana_kwargs(model, x, t, cond):
    return _image_kwargs(model, x, t * model.config.get("timestep_scale", 1.0), cond)


#: Family -> `kwargs(model, x_t, t, conditioning)` of `model(**kwargs)` (module docstring).
_KWARGS: dict[str, Callable] = {
    "dit": _image_kwargs,
    "pixart": _pixart_kwargs,
    "sd3": _image_kwargs,
    "flux": _flux_kwargs,
    "sana": _sana_kwargs,
}
#: What each family is conditioned on: `class` (labels) or `text`.
CONDITIONING = {"dit": "class"}


def model_kwargs(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
    """Keyword arguments of `model(**kwargs)` for one step on x_t (B, C, h, w) at the schedule's timestep t (B,)
    with `cond` under the model's keyword names, as the family's pipeline calls it (module docstring)."""
    return _KWARGS[family_of(model).name](model, x_t, t, cond)


def _packed(model: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) in the layout of the model's output: Flux's packed tokens (B, h/2·w/2, 4C), else as is."""
    if family_of(model).name != "flux":
        return latents
    from diffusers import FluxPipeline

    return FluxPipeline._pack_latents(latents, *latents.shape)


def prediction(model: nn.Module, output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The part of `model`'s output (`.sample`) that regresses the training target, shaped as x_t (B, C, h, w):
    Flux's tokens unpacked; the ε half of a learned-variance output (DiT, PixArt: ε, then the variance, on the
    channel axis), as their pipelines' samplers use it."""
    if family_of(model).name == "flux":
        from diffusers import FluxPipeline

        output = FluxPipeline._unpack_latents(output, x_t.shape[-2], x_t.shape[-1], 1)
    return output[:, : x_t.shape[1]] if output.shape[1] == 2 * x_t.shape[1] else output


# ----------------------------------------------------------------------------------------------- batches
def clean_latents(model: nn.Module, samples: int, latent: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian x_0 (N, C, s, s) of the model's latent space (C: Flux's latent channels, `in_channels` / 4)."""
    channels = model.config.in_channels // (4 if family_of(model).name == "flux" else 1)
    return torch.randn(samples, channels, latent, latent, generator=generator)


def training_schedule(model: nn.Module, scheduler=None):
    """The schedule calibration noises with: `scheduler` when it follows the family's objective, else the
    objective's default (SD's DDPM schedule; the unshifted 1000-step flow-matching grid)."""
    flow = family_of(model).objective == "flow"
    if scheduler is not None and is_flow_matching(scheduler) == flow:
        return scheduler
    if not flow:
        return noise_scheduler()
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler()


def calibration_batches(
    model: nn.Module,
    *,
    samples: int,
    latent: int,
    timesteps: int = 2,
    batch_size: int = 4,
    seed: int = 0,
    conditioning: dict[str, torch.Tensor] | None = None,
    scheduler=None,
    tokens: int | None = None,
    latents: torch.Tensor | None = None,
) -> list[tuple[dict, torch.Tensor]]:
    """`(model(**kwargs) keyword arguments, target)` per batch: `samples` Gaussian latents (or the given clean
    `latents`) at `timesteps` draws each (sample-major, as the U-Net's calibration), with `conditioning` (N rows,
    :func:`encode_prompts`) or random conditioning (:func:`random_conditioning`).

    Args:
        latents: clean latents x_0 (N, C, s, s) of real images, as the VAE lays them out (scaled and shifted as the
            pipeline's VAE config says), one per sample; None: `samples` Gaussian draws of side `latent`.
        scheduler: the model's noise schedule (:func:`~prune_lab.runtime.schedule.noise_scheduler`); one that does
            not follow the family's objective (None, or SD's default for a model without a scheduler config) gives
            way to the objective's default (:func:`training_schedule`).
        tokens: text tokens of random conditioning (default: the family's, :data:`~.spec.TEXT_TOKENS`).

    Returns:
        The batches; each target (B, C, s, s) in the layout of the model's output (Flux: (B, (s/2)^2, 4C)).
    """
    g = torch.Generator().manual_seed(seed)
    x0 = clean_latents(model, samples, latent, g) if latents is None else latents.float()
    samples = len(x0)
    cond = conditioning if conditioning is not None else random_conditioning(model, samples, g, tokens)
    index = torch.arange(samples).repeat_interleave(timesteps)
    x0 = x0[index]
    noisy, t, target = noised(training_schedule(model, scheduler), x0, torch.randn(x0.shape, generator=g), g)
    target, batches = _packed(model, target), []
    for s in range(0, len(index), batch_size):
        part = slice(s, s + batch_size)
        rows = {k: v[index[part]] for k, v in cond.items()}
        batches.append((model_kwargs(model, noisy[part], t[part], rows), target[part]))
    return batches
