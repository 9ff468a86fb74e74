"""Calibration batches of a transformer: the forward keyword arguments of denoising steps, and what they regress.

Clean latents are Gaussian draws of the model's size (`latent_size`; Flux's packed into 2x2 patches); the text
conditioning is the pipeline's own `encode_prompt` of calibration prompts (:func:`encode_prompts`), or random states
shaped as the backbone's example call (:data:`~.spec.TEXT_TOKENS` tokens) when there is no pipeline. Noisy inputs
and targets follow the family's training objective (:attr:`~.spec.Family.objective`):

* `ddpm` (DiT, PixArt): x_t = add_noise(x_0, ε, t) of the model's noise scheduler at integer t ~ U{0..T-1}, target
  :func:`~prune_lab.runtime.schedule.training_target` (ε); the learned-variance half of their output is not regressed.
* `flow` (SD3 / SD3.5, Flux, Sana; rectified flow, Esser et al., 2024): σ ~ U(0, 1), x_t = (1 − σ)·x_0 + σ·ε, target
  the velocity ε − x_0 (diffusers' flow-matching training scripts); the model's timestep is 1000σ as their
  pipelines pass it (Flux takes σ and scales it itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...runtime.schedule import noise_scheduler, training_target
from .spec import TEXT_TOKENS, Family, family_of

#: Flux-dev's default guidance scale (the guidance embedding of guidance-distilled models).
FLUX_GUIDANCE = 3.5


# ------------------------------------------------------------------------------------------- conditioning
def _chunks(prompts: Sequence[str], size: int):
    return [list(prompts[i : i + size]) for i in range(0, len(prompts), size)]


def _text_and_mask(pipe, prompts: list[str]) -> dict:
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe.device)
    return {"text": embeds, "text_mask": mask}


def _sd3_text(pipe, prompts: list[str]) -> dict:
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, device=pipe.device, do_classifier_free_guidance=False
    )
    return {"text": embeds, "pooled": pooled}


def _flux_text(pipe, prompts: list[str]) -> dict:
    embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=pipe.device)
    return {"text": embeds, "pooled": pooled}


def _dit_labels(pipe, prompts: list[str]) -> dict:
    try:
        return {"labels": torch.tensor(pipe.get_label_ids(prompts), device=pipe.device)}
    except ValueError:
        raise ValueError(
            "DiT is class-conditional: its calibration prompts must be ImageNet class names of the pipeline's "
            f"id2label (e.g. {next(iter(pipe.labels))!r}); fix the prompts file or use --synthetic"
        ) from None


#: Family -> `encode(pipe, prompts) -> conditioning` through the pipeline's own encoders.
_ENCODERS = {
    "dit": _dit_labels,
    "pixart": _text_and_mask,
    "sd3": _sd3_text,
    "flux": _flux_text,
    "sana": _text_and_mask,
}


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """The conditioning of `prompts` from the pipeline's own `encode_prompt` (no classifier-free guidance, the
    pipeline's default `max_sequence_length`): `text` (N, L, D), and as the family has them `text_mask` (N, L),
    `pooled` (N, P), or DiT's class `labels` (N,) looked up from the prompts as ImageNet class names."""
    encode = _ENCODERS[family_of(pipe.transformer).name]
    parts = [encode(pipe, chunk) for chunk in _chunks(prompts, batch_size)]
    return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}


def random_conditioning(
    model: nn.Module, samples: int, generator: torch.Generator, tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """Random conditioning shaped as the backbone's example call: Gaussian text states of the family's token count
    (or `tokens`) and width (and pooled vectors), or DiT class labels."""
    family, cfg = family_of(model), model.config
    if family.name == "dit":
        return {"labels": torch.randint(0, cfg.num_embeds_ada_norm, (samples,), generator=generator)}
    width = cfg.get("caption_channels") or cfg.joint_attention_dim
    out = {"text": torch.randn(samples, tokens or TEXT_TOKENS[family.name], width, generator=generator)}
    if cfg.get("pooled_projection_dim"):
        out["pooled"] = torch.randn(samples, cfg.pooled_projection_dim, generator=generator)
    return out


# ------------------------------------------------------------------------------------------- forward kwargs
def _text(cond: dict) -> dict:
    mask = {"encoder_attention_mask": cond["text_mask"]} if "text_mask" in cond else {}
    return {"encoder_hidden_states": cond["text"], **mask}


def _dit_kwargs(model, x, t, cond):
    return {"hidden_states": x, "timestep": t, "class_labels": cond["labels"]}


def _pixart_kwargs(model, x, t, cond):
    n, side = x.shape[0], float(x.shape[-1] * 8)
    added = {"resolution": None, "aspect_ratio": None}
    if model.use_additional_conditions:
        added = {"resolution": torch.full((n, 2), side), "aspect_ratio": torch.ones(n, 1)}
    return {"hidden_states": x, "timestep": t, "added_cond_kwargs": added, **_text(cond)}


def _sd3_kwargs(model, x, t, cond):
    return {"hidden_states": x, "timestep": t, "pooled_projections": cond["pooled"], **_text(cond)}


def _flux_ids(tokens: int, text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's position ids: (row, column) of every 2x2 patch of a square latent, zeros for the text tokens."""
    side = int(round(tokens**0.5))
    image = torch.zeros(side, side, 3)
    image[..., 1] += torch.arange(side)[:, None]
    image[..., 2] += torch.arange(side)[None, :]
    return image.reshape(tokens, 3), torch.zeros(text, 3)


def _flux_kwargs(model, x, t, cond):
    img_ids, txt_ids = _flux_ids(x.shape[1], cond["text"].shape[1])
    guidance = torch.full((x.shape[0],), FLUX_GUIDANCE) if model.config.guidance_embeds else None
    return {
        "hidden_states": x,
        "timestep": t / 1000,
        "encoder_hidden_states": cond["text"],
        "pooled_projections": cond["pooled"],
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "guidance": guidance,
    }


def _sana_kwargs(model, x, t, cond):
    return {"hidden_states": x, "timestep": t, **_text(cond)}


#: Family -> `kwargs(model, x_t, timestep, conditioning)` of `model(**kwargs)`.
_KWARGS = {
    "dit": _dit_kwargs,
    "pixart": _pixart_kwargs,
    "sd3": _sd3_kwargs,
    "flux": _flux_kwargs,
    "sana": _sana_kwargs,
}


# ----------------------------------------------------------------------------------------------- batches
def clean_latents(model: nn.Module, samples: int, latent: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian x_0 of the model's input: (N, C, s, s), or Flux's packed (N, (s/2)^2, C·4 = in_channels)."""
    if family_of(model).name == "flux":
        return torch.randn(samples, (latent // 2) ** 2, model.config.in_channels, generator=generator)
    return torch.randn(samples, model.config.in_channels, latent, latent, generator=generator)


def _noisy(family: Family, scheduler, x0, noise, generator):
    """(x_t, the model's timestep, target) under the family's objective (module docstring)."""
    n = x0.shape[0]
    if family.objective == "ddpm":
        scheduler = scheduler or noise_scheduler()
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
        return scheduler.add_noise(x0, noise, t), t, training_target(scheduler, x0, noise, t)
    sigma = torch.rand(n, generator=generator)
    s = sigma.view(n, *[1] * (x0.ndim - 1))
    return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0


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
) -> list[tuple[dict, torch.Tensor]]:
    """`(model(**kwargs) keyword arguments, target)` per batch: `samples` Gaussian latents at `timesteps` draws each
    (sample-major, as the U-Net's calibration), with `conditioning` (N rows, :func:`encode_prompts`) or random
    conditioning (:func:`random_conditioning`).

    Args:
        scheduler: the DDPM noise schedule of `ddpm` families (default SD's; unused by `flow` ones).
        tokens: text tokens of random conditioning (default: the family's, :data:`~.spec.TEXT_TOKENS`).
    """
    family, g = family_of(model), torch.Generator().manual_seed(seed)
    x0 = clean_latents(model, samples, latent, g)
    cond = conditioning if conditioning is not None else random_conditioning(model, samples, g, tokens)
    index = torch.arange(samples).repeat_interleave(timesteps)
    x0 = x0[index]
    noisy, t, target = _noisy(family, scheduler, x0, torch.randn(x0.shape, generator=g), g)
    build, batches = _KWARGS[family.name], []
    for s in range(0, len(index), batch_size):
        part = slice(s, s + batch_size)
        rows = {k: v[index[part]] for k, v in cond.items()}
        batches.append((build(model, noisy[part], t[part], rows), target[part]))
    return batches
