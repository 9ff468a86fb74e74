"""Reports: one model (or the student of a plan), or several side by side as in BK-SDM's Table 2.

Per denoising step the U-Net costs `unet_macs` (thop convention) or `unet_macs_with_attention`; a whole
generation costs text encoder(s) + U-Net x `steps` + VAE decoder (Kim et al. 2023, Table 2; batch 1, no
classifier-free-guidance doubling). Everything structural comes from one profiled forward per model on `meta`
tensors (:mod:`prune_lab.runtime.counting`); only latency needs real weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch.nn as nn

from ..backbones import backbone_for, build_student, create_plan, list_presets, walk
from ..models import load_unet
from ..plan import Plan
from ..runtime.counting import Profile, profile_call
from ..runtime.dtypes import cast_model
from ..runtime.loading import LoadedModel
from .components import (
    TEXT_ROLES,
    VAE_ROLE,
    ComponentSpec,
    component_call,
    component_specs,
    load_component,
    profile_component,
    vae_scale_factor,
)
from .latency import Latency, LatencySettings, materialise, measure
from .steps import unet_call, unit_table

DEFAULT_STEPS = 25
BASE = "base"


@dataclass
class Report:
    """Parameters and MACs of one U-Net (and its pipeline), optionally per unit and with latency.

    Attributes:
        model: the `--model` it came from.
        variant: `base`, a preset name or a plan file.
        resolution / latent: image and latent side (latent = resolution / VAE factor).
        steps: denoising steps of a whole generation.
        unet: the U-Net's profile (one step).
        components: profiles of the text encoder(s) and VAE decoder by role (empty when unknown).
        expressible: for plans, whether the student is a plain diffusers config.
        units: per-unit table (:func:`prune_lab.report.unit_table`) when asked for.
        latency: timings when asked for.
        backbone: the model's folder name in a pipeline (`unet`, `transformer`): what one step runs.
        text_tokens: text tower role -> the text length it runs at (77 for CLIP; T5 / Gemma: the pipeline's).
    """

    model: str
    variant: str
    resolution: int
    latent: int
    steps: int
    unet: Profile
    components: dict[str, Profile] = field(default_factory=dict)
    expressible: bool | None = None
    units: pd.DataFrame | None = field(default=None, repr=False)
    latency: Latency | None = None
    backbone: str = "unet"
    text_tokens: dict[str, int] = field(default_factory=dict)

    def convention(self) -> str:
        """One line saying how the numbers were counted (the CLI prints it above the table)."""
        text = ", ".join(f"{role} {n}" for role, n in self.text_tokens.items()) or "none"
        step = "77 text tokens" if self.backbone == "unet" else f"text tokens {text}"
        towers = "text encoder(s)" if self.text_tokens or self.backbone == "unet" else "no text encoder"
        name = "U-Net" if self.backbone == "unet" else self.backbone
        return (
            f"thop convention: zero inputs, batch 1, latent = resolution / {self.resolution // self.latent} "
            f"({self.latent}x{self.latent}), {step}, one denoising step; whole = {towers} + {name} x {self.steps} + "
            "VAE decoder; *_with_attention adds the attention-score matmuls thop does not count"
        )

    def _sum(self, roles, attr: str) -> int | None:
        present = [getattr(self.components[r], attr) for r in roles if r in self.components]
        return sum(present) if present else None

    @property
    def text_encoder_params(self) -> int | None:
        return self._sum(TEXT_ROLES, "params")

    @property
    def text_encoder_macs(self) -> int | None:
        return self._sum(TEXT_ROLES, "macs")

    @property
    def vae_decoder_params(self) -> int | None:
        return self._sum((VAE_ROLE,), "params")

    @property
    def vae_decoder_macs(self) -> int | None:
        return self._sum((VAE_ROLE,), "macs")

    def _whole(self, unet_value: int, attr: str, per_step: bool) -> int | None:
        text, vae = self._sum(TEXT_ROLES, attr), self._sum((VAE_ROLE,), attr)
        if text is None or vae is None:
            return None
        return text + unet_value * (self.steps if per_step else 1) + vae

    def to_dict(self) -> dict:
        """Flat JSON-ready dict: raw counts (`*_params`, `*_macs`), then units and latency if present."""
        u = self.unet
        out = {
            "model": self.model,
            "variant": self.variant,
            "resolution": self.resolution,
            "latent": self.latent,
            "steps": self.steps,
            "unet_params": u.params,
            "unet_macs": u.macs,
            "unet_attention_macs": u.attention_macs,
            "unet_macs_with_attention": u.macs_with_attention,
            "unet_macs_total": u.macs * self.steps,
            "unet_macs_with_attention_total": u.macs_with_attention * self.steps,
            "text_encoder_params": self.text_encoder_params,
            "text_encoder_macs": self.text_encoder_macs,
            "vae_decoder_params": self.vae_decoder_params,
            "vae_decoder_macs": self.vae_decoder_macs,
            "whole_params": self._whole(u.params, "params", per_step=False),
            "whole_macs": self._whole(u.macs, "macs", per_step=True),
            "whole_macs_with_attention": self._whole(u.macs_with_attention, "macs_with_attention", per_step=True),
            "expressible": self.expressible,
        }
        if self.latency is not None:
            out.update(self.latency.to_dict())
        if self.units is not None:
            out["units"] = json.loads(self.units.to_json(orient="records"))
        return out


# --------------------------------------------------------------------------------------------- building
def variant_plan(unet: nn.Module, variant: str, *, source: str) -> Plan:
    """A preset name or a plan file, as a plan for `unet`."""
    if Path(variant).is_file():
        return Plan.load(variant)
    if variant in list_presets():
        return create_plan(unet, variant, source=source)
    raise ValueError(
        f"{variant!r} is neither a preset ({', '.join(list_presets())}), an existing plan file nor a model folder"
    )


def _latent(unet: nn.Module, specs: tuple[ComponentSpec, ...], resolution: int | None) -> tuple[int, int]:
    factor = vae_scale_factor(specs)
    if resolution is None:
        size = backbone_for(unet).latent_size(unet)
        if not isinstance(size, int):
            raise ValueError(f"the U-Net's sample_size is {size!r}; pass --resolution")
        return size * factor, size
    if resolution <= 0 or resolution % factor:
        raise ValueError(f"--resolution {resolution} must be a positive multiple of the VAE factor {factor}")
    return resolution, resolution // factor


def profile_unet(unet: nn.Module, latent: int) -> Profile:
    """One step of `unet` at latent side `latent` under the thop convention (one profiled forward)."""
    fn, args = unet_call(unet, latent)
    return profile_call(unet, fn, *args)


def profile_components(specs: tuple[ComponentSpec, ...], latent: int) -> dict[str, Profile]:
    return {spec.role: profile_component(spec, latent) for spec in specs}


def _real_components(specs, latent: int, settings: LatencySettings) -> list[tuple]:
    parts = []
    for spec in specs:
        module = cast_model(load_component(spec).to(settings.device), settings.torch_dtype)
        call, inputs = component_call(spec, module, latent, settings.device)
        inputs = tuple(t.to(settings.torch_dtype) if t.is_floating_point() else t for t in inputs)
        parts.append((spec.role, module, call, inputs))
    return parts


def measure_latency(
    unet: nn.Module, specs: tuple[ComponentSpec, ...], latent: int, steps: int, settings: LatencySettings
) -> Latency:
    """Time one U-Net step, or whole generations: text encoder(s), `steps` U-Net steps, VAE decoder.

    The scheduler update between steps is not timed (a few element-wise operations); U-Net inputs are the
    thop-convention zeros at batch 1 (no classifier-free-guidance doubling).
    """
    real = materialise(unet, settings)
    fn, args = unet_call(real, latent, settings.device, settings.torch_dtype)
    if settings.target == "step":
        return measure("unet_step", lambda: fn(real, *args), settings)
    roles = {spec.role for spec in specs}
    if VAE_ROLE not in roles or not roles & set(TEXT_ROLES):
        raise ValueError("whole-generation latency needs the text encoder and VAE: use a pipeline or a built-in")
    parts = _real_components(specs, latent, settings)
    text = [p for p in parts if p[0] in TEXT_ROLES]
    _, vae, decode, z = next(p for p in parts if p[0] == VAE_ROLE)

    def generate() -> None:
        for _, module, call, inputs in text:
            call(module, *inputs)
        for _ in range(steps):
            fn(real, *args)
        decode(vae, *z)

    return measure(f"generation_{steps}_steps", generate, settings)


def report(
    loaded: LoadedModel,
    *,
    plan: Plan | None = None,
    variant: str | None = None,
    resolution: int | None = None,
    steps: int = DEFAULT_STEPS,
    per_unit: bool = False,
    latency: LatencySettings | None = None,
    components: dict[str, Profile] | None = None,
) -> Report:
    """Report on `loaded`'s U-Net, or on the compact student of `plan` (built with `build_student`).

    Args:
        loaded: from :func:`prune_lab.load_unet` (`meta=True` is enough unless latency is asked for).
        plan: report the student of this plan instead of the model itself.
        variant: the name shown for it (default: the plan's preset, or `base`).
        resolution: image side (default: the U-Net's `sample_size` x the VAE factor, e.g. 512 for SD-v1).
        steps: denoising steps of a whole generation.
        per_unit: add the per-unit table (same single profiled forward).
        latency: time the model as well.
        components: precomputed component profiles (:func:`profile_components`), to share across a comparison.

    Raises:
        ValueError: a plan that does not fit the model, a bad resolution, an unavailable device.
    """
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    specs = component_specs(loaded)
    resolution, latent = _latent(loaded.unet, specs, resolution)
    unet, expressible = loaded.unet, None
    if plan is not None:
        compacted = build_student(unet, plan)
        unet, expressible = compacted.student, compacted.expressible
    profile = profile_unet(unet, latent)
    if components is None:
        components = profile_components(specs, latent)
    name = variant or (plan.meta.get("preset", "plan") if plan is not None else BASE)
    result = Report(loaded.source, name, resolution, latent, steps, profile, components, expressible)
    result.backbone = backbone_for(unet).subfolder
    result.text_tokens = {spec.role: spec.tokens for spec in specs if spec.role in TEXT_ROLES}
    if per_unit:
        result.units = unit_table(walk(unet), profile)
    if latency is not None:
        result.latency = measure_latency(unet, specs, latent, steps, latency)
    return result


def _variant(loaded: LoadedModel, variant: str) -> Plan | LoadedModel:
    """A model folder (e.g. a `prunelab width` or `apply` output) as it is, else a preset or plan file's plan."""
    if Path(variant).is_dir():
        return load_unet(variant)
    return variant_plan(loaded.unet, variant, source=loaded.source)


def compare(loaded: LoadedModel, variants: list[str], **kwargs) -> list[Report]:
    """`loaded` itself, then each variant: the student of a preset name or plan file, or a model folder as it is
    (a width-pruned model next to a block plan of equal parameters, say); see :func:`report`."""
    resolved = [_variant(loaded, variant) for variant in variants]  # fail early
    specs = component_specs(loaded)
    _, latent = _latent(loaded.unet, specs, kwargs.get("resolution"))
    components = profile_components(specs, latent)
    reports = [report(loaded, components=components, **kwargs)]
    for variant, item in zip(variants, resolved):
        if isinstance(item, LoadedModel):
            reports.append(report(item, variant=variant, components=components, **kwargs))
        else:
            reports.append(report(loaded, plan=item, variant=variant, components=components, **kwargs))
    return reports


#: Columns of :func:`comparison_frame` with their scale: (report key, column, divisor).
METRICS = (
    ("unet_params", "unet_params_M", 1e6),
    ("unet_macs", "unet_macs_G", 1e9),
    ("unet_macs_with_attention", "unet_macs_with_attention_G", 1e9),
    ("unet_macs_total", "unet_macs_total_G", 1e9),
    ("text_encoder_params", "text_encoder_params_M", 1e6),
    ("text_encoder_macs", "text_encoder_macs_G", 1e9),
    ("vae_decoder_params", "vae_decoder_params_M", 1e6),
    ("vae_decoder_macs", "vae_decoder_macs_G", 1e9),
    ("whole_params", "whole_params_M", 1e6),
    ("whole_macs", "whole_macs_G", 1e9),
    ("whole_macs_with_attention", "whole_macs_with_attention_G", 1e9),
)


def comparison_frame(reports: list[Report]) -> pd.DataFrame:
    """One row per report, scaled columns (`*_M`, `*_G`, the backbone's named by its folder: `unet_params_M`,
    `transformer_params_M`) and `*_change_pct` against the first report."""
    rows = []
    first = reports[0].to_dict()
    for r in reports:
        d = r.to_dict()
        row = {"model": d["model"], "variant": d["variant"], "resolution": d["resolution"], "steps": d["steps"]}
        for key, column, scale in METRICS:
            if first[key] is None or d[key] is None:
                continue
            row[column] = round(d[key] / scale, 2)
            row[f"{column}_change_pct"] = round(100 * (d[key] - first[key]) / first[key], 1) if first[key] else None
        row["expressible"] = d["expressible"]
        row.update({k: v for k, v in d.items() if k.startswith("latency_")})
        if "latency_median_ms" in first and "latency_median_ms" in d:
            change = 100 * (d["latency_median_ms"] - first["latency_median_ms"]) / first["latency_median_ms"]
            row["latency_median_ms_change_pct"] = round(change, 1)
        rows.append(row)
    prefix = f"{reports[0].backbone}_"  # the backbone's own name: `transformer_params_M`
    return pd.DataFrame(rows).rename(columns=lambda c: prefix + c[5:] if c.startswith("unet_") else c)
