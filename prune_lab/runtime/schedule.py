"""The training noise schedule and the regression target: one definition for scoring, distillation and width.

Two forward processes, picked by the model's own scheduler config (:func:`noise_scheduler`):

* DDPM's (Ho et al., 2020): x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε at a uniform integer t, with ᾱ_t from the config
  (SD, SDXL, PixArt). What the model regresses depends on the config's `prediction_type`: ε (`epsilon`),
  v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0 (`v_prediction`, Salimans & Ho, 2022) or x_0 (`sample`).
* Rectified flow (flow matching; Esser et al., "Scaling Rectified Flow Transformers", 2024 = SD3; Flux; Sana):
  x_t = (1 − σ)·x_0 + σ·ε, target ε − x_0, timestep σ·N. A `FlowMatchEulerDiscreteScheduler` config (SD3, Flux) or a
  flow-sigma DPM-Solver config (`use_flow_sigmas`, Sana) gives a flow-matching schedule. σ is drawn as diffusers'
  SD3 / Flux training scripts draw it: u from :func:`diffusers.training_utils.compute_density_for_timestep_sampling`
  (:class:`TimestepSampling`: uniform by default, or logit-normal / mode), index ⌊u·N⌋ into the scheduler's
  training sigmas (its static `shift` applied: SD3's 3.0, Sana's `flow_shift`). With `use_dynamic_shifting` (Flux)
  the scheduler's resolution-dependent shift is applied on top, with μ from the image's sequence length exactly as
  FluxPipeline computes it for sampling (2x2 latent patches; `calculate_shift` over `base/max_image_seq_len`).
  The loss weight is 1 (the scripts' `logit_normal` / `mode` schemes weight nothing either).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: SD's training schedule (used when a model brings no scheduler config): scaled-linear betas over 1000 steps.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _scheduler_folder(path: str | os.PathLike) -> Path | None:
    """The folder holding `scheduler_config.json`: `path/scheduler/` of a pipeline folder, or `path` itself."""
    path = Path(path)
    if (path / "scheduler").is_dir():
        return path / "scheduler"
    if (path / "scheduler_config.json").is_file():
        return path
    return None


def is_flow_config(config) -> bool:
    """Whether a scheduler config describes flow matching: a `FlowMatchEulerDiscreteScheduler` (SD3, Flux), or a
    scheduler on flow sigmas (`use_flow_sigmas` / `prediction_type: flow_prediction`, Sana's DPM-Solver)."""
    return (
        config.get("_class_name") == "FlowMatchEulerDiscreteScheduler"
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
    )


def is_flow_matching(scheduler) -> bool:
    """Whether `scheduler` (from :func:`noise_scheduler`) is a flow-matching schedule."""
    return type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def _flow_scheduler(config):
    """The flow-matching training schedule of a flow config, as a `FlowMatchEulerDiscreteScheduler` (a DPM-Solver
    on flow sigmas becomes one with `shift = flow_shift`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    steps = config.get("num_train_timesteps", 1000)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=float(config.get("flow_shift") or 1.0))


def noise_scheduler(source=None):
    """The training noise schedule: a diffusers `DDPMScheduler`, or a `FlowMatchEulerDiscreteScheduler` for a
    flow-matching config (:func:`is_flow_config`).

    Args:
        source: a pipeline (its scheduler's config), a pipeline folder (its `scheduler/` config), a scheduler
            folder (with `scheduler_config.json`), or None. Anything without a scheduler config (None, a bare
            U-Net folder) gives SD's schedule (:data:`SD_SCHEDULE`).
    """
    from diffusers import DDPMScheduler

    if hasattr(source, "scheduler"):
        config = source.scheduler.config
    else:
        folder = _scheduler_folder(source) if source is not None else None
        if folder is None:
            return DDPMScheduler(**SD_SCHEDULE)
        config = DDPMScheduler.load_config(folder)
    return _flow_scheduler(config) if is_flow_config(config) else DDPMScheduler.from_config(config)


def _epsilon(scheduler, x0, noise, t):
    return noise


def _v_prediction(scheduler, x0, noise, t):
    return scheduler.get_velocity(x0, noise, t)


def _sample(scheduler, x0, noise, t):
    return x0


#: Regression target per diffusers `prediction_type`: (scheduler, x_0, ε, t) -> y.
TARGETS: dict[str, Callable] = {"epsilon": _epsilon, "v_prediction": _v_prediction, "sample": _sample}


def training_target(scheduler, x0, noise, t):
    """What the model regresses at x_t = add_noise(x_0, ε, t), for the scheduler's `prediction_type` (the flow
    velocity ε − x_0 for a flow-matching schedule).

    Args:
        scheduler: a diffusers noise scheduler (`config.prediction_type` picks the target; `get_velocity` gives v).
        x0: clean latents x_0, (B, C, h, w).
        noise: the noise ε added to them, (B, C, h, w).
        t: (B,) timesteps.

    Returns:
        (B, C, h, w): ε, v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0, x_0, or ε − x_0.

    Raises:
        ValueError: a prediction type prune_lab does not handle.
    """
    if is_flow_matching(scheduler):
        return noise - x0
    kind = scheduler.config.prediction_type
    if kind not in TARGETS:
        raise ValueError(
            f"scheduler prediction_type {kind!r} is not supported; prune_lab handles {', '.join(TARGETS)}: "
            "use a model whose scheduler config sets one of them"
        )
    return TARGETS[kind](scheduler, x0, noise, t)


# ------------------------------------------------------------------------------------------- flow matching
#: `TimestepSampling.scheme` -> diffusers' `weighting_scheme` name (its "none" draws u uniformly).
DENSITIES = {"uniform": "none", "logit_normal": "logit_normal", "mode": "mode"}


@dataclass(frozen=True)
class TimestepSampling:
    """How flow-matching timesteps are drawn (the SD3 / Flux scripts' `--weighting_scheme` and its parameters).

    Attributes:
        scheme: `uniform` (u ~ U(0, 1)), `logit_normal` (u = sigmoid(N(logit_mean, logit_std²)), SD3 §3.1) or
            `mode` (mode sampling with heavy tails, `mode_scale`).
    """

    scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self):
        if self.scheme not in DENSITIES:
            raise ValueError(f"unknown timestep sampling {self.scheme!r}; choose one of {', '.join(DENSITIES)}")


def image_seq_len(latents: torch.Tensor) -> int:
    """Tokens of (B, C, h, w) latents in 2x2 patches, as FluxPipeline counts them for its dynamic shift."""
    return (latents.shape[-2] // 2) * (latents.shape[-1] // 2)


def flow_sigmas(scheduler, u: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
    """Training σ for u in [0, 1]: the scheduler's sigma grid at index ⌊u·N⌋ (clamped to N − 1), shifted for
    `seq_len` tokens when the scheduler shifts dynamically (see the module docstring).

    Args:
        scheduler: a `FlowMatchEulerDiscreteScheduler` as built (its training grid, not a `set_timesteps` one).
        u: (B,) draws in [0, 1].
        seq_len: image tokens, needed with `use_dynamic_shifting`.

    Returns:
        (B,) σ in (0, 1] on u's device.
    """
    import torch

    config = scheduler.config
    steps = config.num_train_timesteps
    grid = scheduler.timesteps.to(torch.float32) / steps  # σ grid, descending; static shift already applied
    sigmas = grid[(u.cpu() * steps).long().clamp(0, steps - 1)]
    if config.use_dynamic_shifting:
        if seq_len is None:
            raise ValueError("a dynamically shifting flow schedule needs the image sequence length")
        slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
        mu = config.base_shift + slope * (seq_len - config.base_image_seq_len)
        sigmas = scheduler.time_shift(mu, 1.0, sigmas)
    return sigmas.to(u.device)


def noised(
    scheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    generator: torch.Generator | None,
    sampling: TimestepSampling = TimestepSampling(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training sample of the forward process: (x_t, t, target), the timestep drawn from `generator`.

    DDPM schedules: t uniform in {0, ..., N − 1} (`sampling` does not apply), x_t = `add_noise`, target by
    :func:`training_target`. Flow matching: σ from :func:`flow_sigmas` with u drawn by `sampling`,
    x_t = (1 − σ)·x_0 + σ·ε, t = σ·N (float), target ε − x_0.

    Args:
        scheduler: from :func:`noise_scheduler`.
        x0: clean latents (B, C, h, w).
        noise: ε, (B, C, h, w).
        generator: the step's generator (on x0's device).
        sampling: flow-matching timestep density.

    Returns:
        x_t (B, C, h, w), t (B,), target (B, C, h, w).
    """
    import torch

    steps = scheduler.config.num_train_timesteps
    if not is_flow_matching(scheduler):
        t = torch.randint(0, steps, (x0.shape[0],), generator=generator, device=x0.device)
        return scheduler.add_noise(x0, noise, t), t, training_target(scheduler, x0, noise, t)
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        DENSITIES[sampling.scheme],
        x0.shape[0],
        logit_mean=sampling.logit_mean,
        logit_std=sampling.logit_std,
        mode_scale=sampling.mode_scale,
        device=x0.device,
        generator=generator,
    )
    sigma = flow_sigmas(scheduler, u, image_seq_len(x0)).to(x0.dtype)
    s = sigma.view(-1, *[1] * (x0.ndim - 1))
    return (1 - s) * x0 + s * noise, sigma * steps, noise - x0
