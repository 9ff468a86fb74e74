"""The frozen parts of a latent diffusion pipeline that turn a data batch into U-Net (or transformer) inputs.

A batch is either raw (`pixel_values` in [-1, 1] plus `text`) or cached (`moments`, the VAE posterior's mean and
log-variance, plus `cond`, the text conditioning). Both go through the same two steps, so a cached run and an
on-the-fly run see identical latents for the same random generator:

* latents: z_0 = (mean + exp(logvar / 2) · n − shift) · scaling_factor, n ~ N(0, I) drawn from the step's generator
  (a deterministic encoder, Sana's DC-AE, has log-variance −inf: z_0 = (mean − shift) · scaling_factor);
* conditioning: a flat dict of tensors under the model's keyword names from a registered :data:`CONDITIONERS` entry
  (picked from the pipeline's components; transformer pipelines through their own `encode_prompt`: SD3's CLIP-L +
  CLIP-G penultimate states ‖ T5, zeros without T5, and pooled projections; Flux's T5 states and pooled CLIP; PixArt's
  T5 states and mask; Sana's Gemma2 states of the pipeline's complex human instruction and mask).

The model is called as its backbone says the family's pipeline calls it (:func:`model_call`:
:meth:`~prune_lab.backbones.base.Backbone.model_kwargs` and :meth:`~prune_lab.backbones.base.Backbone.prediction`,
the same call scoring's calibration batches use: Flux's packed latents and position ids, PixArt's micro-conditions and
learned σ, Sana's `timestep_scale`, SDXL's added conditions). DiT is class-conditional (no text): `distill` refuses
it.
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

from ..backbones import backbone_for
from ..backbones.base import backbone_for_class
from ..pipelines import check_weights, from_pretrained, offline_message
from ..runtime.dtypes import cast_model
from ..runtime.loading import absent_components


@torch.no_grad()
def encode_moments(vae: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior parameters of images.

    Args:
        vae: a diffusers `AutoencoderKL`.
        pixels: (B, 3, H, W) in [-1, 1].

    Returns:
        (B, 2·C, H/f, W/f): mean and log-variance concatenated on the channel axis (`latent_dist.parameters`); a
        deterministic encoder's (`.latent`, Sana's DC-AE) log-variance is −inf.
    """
    out = vae.encode(pixels.to(vae.dtype))
    if hasattr(out, "latent_dist"):
        return out.latent_dist.parameters.float()
    mean = out.latent.float()
    return torch.cat([mean, torch.full_like(mean, float("-inf"))], dim=1)


def sample_latents(
    moments: torch.Tensor, generator: torch.Generator | None, scaling_factor: float, shift_factor: float = 0.0
) -> torch.Tensor:
    """Draw z_0 from the posterior (B, 2·C, h, w) -> (B, C, h, w), scaled as the model expects (fp32).

    A posterior whose log-variance is all −inf (a deterministic encoder) gives its mean; the same noise is drawn
    either way, so the step's generator stays in step."""
    moments = moments.float()
    point_mass = bool(torch.isneginf(moments.chunk(2, dim=1)[1]).all())
    latents = DiagonalGaussianDistribution(moments, deterministic=point_mass).sample(generator=generator)
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


class PipelineConditioner:
    """Transformer pipelines: the text conditioning of the pipeline's own `encode_prompt` (exactly what it feeds the
    transformer when generating, no classifier-free guidance), from a pipeline loaded without transformer and VAE.

    Args:
        pipe: the text-only pipeline.
        backbone: the transformer's backbone, whose
            :meth:`~prune_lab.backbones.base.Backbone.encode_prompts` calls the pipeline's encoders (the conditioning
            scoring's calibration reads too).
    """

    def __init__(self, pipe, backbone) -> None:
        self.pipe, self.backbone = pipe, backbone
        self.device = next(m.device for m in pipe.components.values() if isinstance(m, nn.Module))

    @classmethod
    def load(cls, root: Path, dtype: torch.dtype, device):
        """The text part of the pipeline at `root` (frozen, `dtype`, on `device`)."""
        from diffusers import DiffusionPipeline

        index = json.loads((root / "model_index.json").read_text())
        skip = {name: None for name in ("transformer", "vae", "image_encoder", "feature_extractor") if name in index}
        skip.update(absent_components(index))
        pipe = from_pretrained(DiffusionPipeline, root, torch_dtype=dtype, **skip)
        if (root / "transformer" / "config.json").is_file():  # SD3 without T5 pads with the transformer's width
            pipe.transformer = _ConfigOnly(json.loads((root / "transformer" / "config.json").read_text()))
        for module in pipe.components.values():
            if isinstance(module, nn.Module):
                module.to(device).eval().requires_grad_(False)
        return cls(pipe, backbone_for_class(index["transformer"][1]))

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        texts = list(batch["text"])
        return self.backbone.encode_prompts(self.pipe, texts, batch_size=len(texts), device=self.device)


class _ConfigOnly:
    """A stand-in for a pipeline's transformer whose `encode_prompt` reads only its config."""

    def __init__(self, config: dict) -> None:
        from diffusers.configuration_utils import FrozenDict

        self.config = FrozenDict(config)


#: Conditioner kinds of transformer pipelines, by `model_index.json` `_class_name`.
PIPELINE_KINDS = {
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "PixArtSigmaPipeline": "pixart",
    "PixArtAlphaPipeline": "pixart",
    "SanaPipeline": "sana",
}


class NoConditioner:
    """Unconditional pipelines (a `UNet2DModel` and a VAE): no conditioning tensors."""

    components = ()

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return {}


#: Conditioners by name; :func:`conditioner_kind` picks one from a pipeline's `model_index.json`.
CONDITIONERS: dict[str, Callable] = {
    "sd": SDConditioner,
    "sdxl": SDXLConditioner,
    "none": NoConditioner,
    **{kind: PipelineConditioner for kind in PIPELINE_KINDS.values()},
}


def conditioner_kind(root: Path) -> str:
    """A transformer pipeline's kind (:data:`PIPELINE_KINDS`), else `sdxl` (two text encoders), `sd` (one) or
    `none`, from `root/model_index.json`."""
    index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").exists() else {}
    if index.get("_class_name") in PIPELINE_KINDS:
        return PIPELINE_KINDS[index["_class_name"]]
    if index.get("text_encoder_2") and index["text_encoder_2"][0]:
        return "sdxl"
    return "sd" if index.get("text_encoder") and index["text_encoder"][0] else "none"


def _load_component(root: Path, name: str, dtype: torch.dtype, device):
    library, cls_name = json.loads((root / "model_index.json").read_text())[name]
    cls = getattr(importlib.import_module(library), cls_name)
    obj = from_pretrained(cls, root / name)
    if isinstance(obj, nn.Module):
        obj = cast_model(obj.to(device), dtype).eval().requires_grad_(False)
    return obj


def _conditioner(root: Path, dtype: torch.dtype, device):
    kind = conditioner_kind(root)
    cls = CONDITIONERS[kind]
    if cls is PipelineConditioner:
        return cls.load(root, dtype, device)
    return cls(*[_load_component(root, c, dtype, device) for c in cls.components])


# -------------------------------------------------------------------------------------------- model call
def model_call(model: nn.Module) -> Callable:
    """The step call of `model`: `call(module, x_t, t, cond) -> prediction (B, C, h, w)`, where `module` is `model`
    or a wrapper of it (DDP), called as its backbone says the family's pipeline calls it
    (:meth:`~prune_lab.backbones.base.Backbone.denoise`; the configuration is read from `model` here).

    Raises:
        ValueError: a model without a backbone, or a class-conditional one (DiT: no text to distil from).
    """
    backbone = backbone_for(model)
    if backbone.conditioning(model) == "class":
        raise ValueError(
            f"distill has no step call for a {type(model).__name__} (a class-conditional model without text); it "
            "retrains the U-Net and text-to-image transformer students of pipelines"
        )

    def call(module: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return backbone.denoise(model, x_t, t, cond, module=module)

    return call


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
    conditioner = _conditioner(root, dtype, device) if text else None
    vae_model = _load_component(root, "vae", dtype, device) if vae else None
    config = json.loads((root / "vae" / "config.json").read_text())
    return FrozenEncoders(
        vae_model, conditioner, float(config.get("scaling_factor", 0.18215)), float(config.get("shift_factor") or 0.0)
    )
