"""Calling a text-to-image pipeline: seeded initial latents and one pipeline call per batch.

Two ways to make generation reproducible, both used by prune_lab:

* explicit initial latents (:func:`initial_latents`: latent i drawn from seed + i alone), as the `clip` criterion
  and data-free calibration do, so every run of a unit starts from the same noise;
* one CPU generator per image (`generators`), as `prunelab generate` does, so an image depends on its prompt only.
"""

from __future__ import annotations

import torch

#: Image sides must be a multiple of this: the VAEs of SD, SDXL and the demo pipeline downsample by 8 or less.
LATENT_FACTOR = 8


def check_resolution(value: int | None, flag: str = "--resolution") -> None:
    """Refuse an image side that is not a positive multiple of :data:`LATENT_FACTOR` (None: the model's own).

    Raises:
        ValueError: naming `flag`, the value and the nearest valid one.
    """
    if value is not None and (value < LATENT_FACTOR or value % LATENT_FACTOR):
        nearest = max(1, value // LATENT_FACTOR) * LATENT_FACTOR
        raise ValueError(
            f"{flag} {value} is not a positive multiple of {LATENT_FACTOR} (the VAE's downsampling factor); "
            f"use e.g. {nearest}"
        )


def initial_latents(pipe, count: int, seed: int) -> torch.Tensor:
    """The initial noise (count, C, h, w) for generation at the U-Net's sample size: latent i is drawn from seed + i
    alone (a fresh CPU generator each), so it does not depend on `count` or on the batch size."""
    cfg = pipe.unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)])


def sample(
    pipe,
    prompts: list[str] | None = None,
    *,
    steps: int,
    guidance: float,
    prompt_embeds: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    generators: list[torch.Generator] | None = None,
    size: int | None = None,
    output_type: str = "pil",
):
    """One pipeline call on one batch.

    Args:
        pipe: a text-to-image pipeline.
        prompts: B prompts, or None when `prompt_embeds` are given.
        steps / guidance: denoising steps and classifier-free guidance scale.
        prompt_embeds: (B, L, D) text conditioning instead of `prompts`.
        latents: (B, C, h, w) initial noise (moved to the pipeline's device).
        generators: B generators, one per image (diffusers draws latent i from generator i).
        size: square output side in pixels; None is the pipeline's default.
        output_type: `pil` (a list of B images) or `latent` (a (B, C, h, w) tensor).
    """
    kwargs = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": output_type}
    optional = {"prompt": prompts, "prompt_embeds": prompt_embeds, "generator": generators}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if latents is not None:
        kwargs["latents"] = latents.to(pipe.device)
    if size is not None:
        kwargs["height"] = kwargs["width"] = size
    with torch.no_grad():
        return pipe(**kwargs).images


def generate(
    pipe, prompts: list[str], latents: torch.Tensor, *, steps: int, guidance: float, batch_size: int = 4
) -> list:
    """PIL images for `prompts`, from the given initial `latents` (N, C, h, w), `batch_size` prompts per call."""
    images = []
    for i in range(0, len(prompts), batch_size):
        part = slice(i, i + batch_size)
        images += sample(pipe, prompts[part], steps=steps, guidance=guidance, latents=latents[part])
    return images
