"""The frozen parts of a latent diffusion pipeline that turn a data batch into U-Net inputs.

A batch is either raw (`pixel_values` in [-1, 1] plus `text`) or cached (`moments`, the VAE posterior's mean and
log-variance, plus `cond`, the text conditioning). Both go through the same two steps, so a cached run and an
on-the-fly run see identical latents for the same random generator:

* latents: z_0 = (mean + exp(logvar / 2) · n − shift) · scaling_factor, n ~ N(0, I) drawn from the step's generator;
* conditioning: a flat dict of tensors from a registered :data:`CONDITIONERS` entry (picked from the pipeline's
  components), turned into U-Net keyword arguments by :func:`unet_kwargs`.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ..pipelines import check_weights, from_pretrained, offline_message

ADDED_COND_KEYS = ("text_embeds", "time_ids")


def unet_kwargs(cond: dict[str, torch.Tensor]) -> dict:
    """U-Net keyword arguments from a flat conditioning dict (SDXL's added conditions nested as diffusers wants)."""
    kwargs = {k: v for k, v in cond.items() if k not in ADDED_COND_KEYS}
    added = {k: cond[k] for k in ADDED_COND_KEYS if k in cond}
    if added:
        kwargs["added_cond_kwargs"] = added
    return kwargs


@torch.no_grad()
def encode_moments(vae: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior parameters of images.

    Args:
        vae: a diffusers `AutoencoderKL`.
        pixels: (B, 3, H, W) in [-1, 1].

    Returns:
        (B, 2·C, H/f, W/f): mean and log-variance concatenated on the channel axis (`latent_dist.parameters`).
    """
    return vae.encode(pixels.to(vae.dtype)).latent_dist.parameters.float()


def sample_latents(
    moments: torch.Tensor, generator: torch.Generator | None, scaling_factor: float, shift_factor: float = 0.0
) -> torch.Tensor:
    """Draw z_0 from the posterior (B, 2·C, h, w) -> (B, C, h, w), scaled as the U-Net expects (fp32)."""
    latents = DiagonalGaussianDistribution(moments.float()).sample(generator=generator)
    return (latents - shift_factor) * scaling_factor


# ------------------------------------------------------------------------------------------- conditioners
def _tokens(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


class SDConditioner:
    """SD v1/v2: the text encoder's last hidden states, (B, L, D) `encoder_hidden_states`."""

    components = ("tokenizer", "text_encoder")

    def __init__(self, tokenizer, text_encoder: nn.Module) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        ids = _tokens(self.tokenizer, batch["text"], self.text_encoder.device)
        return {"encoder_hidden_states": self.text_encoder(ids)[0]}


class SDXLConditioner:
    """SDXL: both encoders' penultimate hidden states concatenated (B, L, D1 + D2), the second encoder's pooled
    projection `text_embeds` (B, P) and the micro-conditioning `time_ids` (B, 6) = original size, crop top-left,
    target size (Podell et al., "SDXL", 2023, §2.2)."""

    components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2) -> None:
        self.pairs = [(tokenizer, text_encoder), (tokenizer_2, text_encoder_2)]

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in self.pairs:
            out = encoder(_tokens(tokenizer, batch["text"], encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        size = batch["pixel_values"].shape[-2:]
        target = torch.tensor(size, device=pooled.device).expand(len(batch["text"]), 2)
        time_ids = torch.cat(
            [batch["original_size"].to(pooled.device), batch["crop_top_left"].to(pooled.device), target], dim=1
        ).to(pooled.dtype)
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled, "time_ids": time_ids}


class NoConditioner:
    """Unconditional pipelines (a `UNet2DModel` and a VAE): no conditioning tensors."""

    components = ()

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return {}


#: Conditioners by name; :func:`conditioner_kind` picks one from a pipeline's `model_index.json`.
CONDITIONERS: dict[str, Callable] = {"sd": SDConditioner, "sdxl": SDXLConditioner, "none": NoConditioner}


def conditioner_kind(root: Path) -> str:
    """`sdxl` (two text encoders), `sd` (one) or `none`, from `root/model_index.json`."""
    index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").exists() else {}
    if index.get("text_encoder_2") and index["text_encoder_2"][0]:
        return "sdxl"
    return "sd" if index.get("text_encoder") and index["text_encoder"][0] else "none"


def _load_component(root: Path, name: str, dtype: torch.dtype, device):
    library, cls_name = json.loads((root / "model_index.json").read_text())[name]
    cls = getattr(importlib.import_module(library), cls_name)
    obj = from_pretrained(cls, root / name)
    if isinstance(obj, nn.Module):
        obj = obj.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return obj


# ---------------------------------------------------------------------------------------------- encoders
@dataclass
class FrozenEncoders:
    """The VAE and the text conditioner of a pipeline, frozen, in the mixed-precision dtype.

    Either may be None when a latents cache supplies what it would compute.
    """

    vae: nn.Module | None
    conditioner: Callable[[dict], dict[str, torch.Tensor]] | None
    scaling_factor: float
    shift_factor: float = 0.0

    def latents(self, batch: dict, generator: torch.Generator | None) -> torch.Tensor:
        """z_0 (B, C, h, w) for a raw or cached batch (see the module docstring)."""
        moments = batch.get("moments")
        if moments is None:
            if self.vae is None:
                raise ValueError("the batch holds images but no VAE is loaded; the teacher must be a pipeline")
            moments = encode_moments(self.vae, batch["pixel_values"])
        return sample_latents(moments, generator, self.scaling_factor, self.shift_factor)

    def condition(self, batch: dict) -> dict[str, torch.Tensor]:
        """The flat conditioning dict for a raw (`text`) or cached (`cond`) batch."""
        if "cond" in batch:
            return batch["cond"]
        if self.conditioner is None:
            raise ValueError("the batch holds captions but no text encoder is loaded; the teacher must be a pipeline")
        return self.conditioner(batch)


def load_encoders(
    root: Path, *, dtype: torch.dtype = torch.float32, device="cpu", vae: bool = True, text: bool = True
) -> FrozenEncoders:
    """Load a pipeline folder's VAE and conditioner (frozen, `dtype`, on `device`); skip either with False."""
    root = Path(root)
    if not root.exists() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise FileNotFoundError(offline_message(root))
    if not (root / "model_index.json").exists():
        raise FileNotFoundError(
            f"{root} is not a diffusers pipeline folder (no model_index.json); images and "
            "captions need a pipeline teacher, or write a latents cache with "
            "`prunelab cache-latents` from one"
        )
    check_weights(root)  # every component, before the first one loads
    kind = conditioner_kind(root)
    cls = CONDITIONERS[kind]
    conditioner = cls(*[_load_component(root, c, dtype, device) for c in cls.components]) if text else None
    vae_model = _load_component(root, "vae", dtype, device) if vae else None
    config = json.loads((root / "vae" / "config.json").read_text())
    return FrozenEncoders(
        vae_model, conditioner, float(config.get("scaling_factor", 0.18215)), float(config.get("shift_factor") or 0.0)
    )
