"""Calling a text-to-image pipeline: seeded initial latents and one pipeline call per batch.

Two ways to make generation reproducible, both used by prune_lab:

* explicit initial latents (:func:`initial_latents`: latent i drawn from seed + i alone), as the `clip` criterion
  and data-free calibration do, so every run of a unit starts from the same noise;
* one CPU generator per image (`generators`), as `prunelab generate` does, so an image depends on its prompt only.

Any pipeline with a `unet` or a `transformer` (:func:`prune_lab.pipelines.denoiser`): SD, SDXL, SD3, Flux (whose
call takes latents packed into 2x2 patches: :func:`initial_latents` packs them with the pipeline's own
`_pack_latents`), PixArt and Sana (called without resolution binning, so the image is the size asked for).
"""

from __future__ import annotations

import inspect

import torch

from .loading import denoiser

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


def _packs(pipe) -> bool:
    """Whether the pipeline's call takes latents packed into 2x2 patches (Flux)."""
    return hasattr(pipe, "_pack_latents") and hasattr(pipe, "_unpack_latents")


def native_side(pipe) -> int:
    """The image side a pipeline generates by default, in pixels (the denoiser's sample size, or the pipeline's
    default for a transformer without one (Flux), times the VAE's scale factor)."""
    if hasattr(pipe, "unet"):
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    size = denoiser(pipe).config.get("sample_size") or pipe.default_sample_size
    return int(size * pipe.vae_scale_factor)


def latent_shape(pipe, size: int | None = None) -> tuple[int, int, int]:
    """(C, h, w) of one image's unpacked initial latents at side `size` (None: the native side; a U-Net pipeline is
    always at its sample size, as before transformers).

    Raises:
        ValueError: a side that is not a multiple of the VAE's factor x the patch size (x 2 for packed latents).
    """
    if hasattr(pipe, "unet"):
        cfg = pipe.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    cfg = denoiser(pipe).config
    side = size or native_side(pipe)
    pack = 2 if _packs(pipe) else 1
    factor = pipe.vae_scale_factor * (cfg.get("patch_size") or 1) * pack
    if side % factor:
        raise ValueError(
            f"image side {side} is not a multiple of {factor} (VAE factor x patch size of this "
            f"{type(pipe).__name__}); use e.g. {max(1, side // factor) * factor}"
        )
    channels = cfg.in_channels // (pack * pack)
    return (channels, side // pipe.vae_scale_factor, side // pipe.vae_scale_factor)


def initial_latents(pipe, count: int, seed: int, size: int | None = None) -> torch.Tensor:
    """The initial noise for generation at side `size` (:func:`latent_shape`): latent i is drawn from seed + i alone
    (a fresh CPU generator each), so it does not depend on `count` or on the batch size.

    Returns:
        (count, C, h, w), or for a pipeline that packs latents (Flux) the same noise packed: (count, h/2·w/2, 4C).
    """
    shape = latent_shape(pipe, size)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)])
    return pipe._pack_latents(noise, count, *shape) if _packs(pipe) else noise


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
        latents: (B, C, h, w) initial noise (moved to the pipeline's device); packed (B, L, 4C) for Flux.
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
    if "use_resolution_binning" in inspect.signature(type(pipe).__call__).parameters:
        kwargs["use_resolution_binning"] = False  # PixArt / Sana: the size asked for, and latents of that size
    with torch.no_grad():
        return pipe(**kwargs).images


def generate(
    pipe,
    prompts: list[str],
    latents: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    batch_size: int = 4,
    size: int | None = None,
) -> list:
    """PIL images for `prompts`, from the given initial `latents` (N, ...: :func:`initial_latents` at the same
    `size`), `batch_size` prompts per call."""
    images = []
    for i in range(0, len(prompts), batch_size):
        part = slice(i, i + batch_size)
        images += sample(pipe, prompts[part], steps=steps, guidance=guidance, latents=latents[part], size=size)
    return images
