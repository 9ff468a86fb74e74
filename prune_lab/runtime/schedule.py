"""The training noise schedule and the regression target: one definition for scoring, distillation and width.

The forward process is DDPM's (Ho et al., 2020): x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε, with ᾱ_t from the
model's own scheduler config. What the U-Net regresses depends on the config's `prediction_type`: ε (`epsilon`),
v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0 (`v_prediction`, Salimans & Ho, 2022) or x_0 (`sample`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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


def noise_scheduler(source=None):
    """The training noise schedule, as a diffusers `DDPMScheduler`.

    Args:
        source: a pipeline (its scheduler's config), a pipeline folder (its `scheduler/` config), a scheduler
            folder (with `scheduler_config.json`), or None. Anything without a scheduler config (None, a bare
            U-Net folder) gives SD's schedule (:data:`SD_SCHEDULE`).
    """
    from diffusers import DDPMScheduler

    if hasattr(source, "scheduler"):
        return DDPMScheduler.from_config(source.scheduler.config)
    folder = _scheduler_folder(source) if source is not None else None
    if folder is not None:
        return DDPMScheduler.from_pretrained(folder)
    return DDPMScheduler(**SD_SCHEDULE)


def _epsilon(scheduler, x0, noise, t):
    return noise


def _v_prediction(scheduler, x0, noise, t):
    return scheduler.get_velocity(x0, noise, t)


def _sample(scheduler, x0, noise, t):
    return x0


#: Regression target per diffusers `prediction_type`: (scheduler, x_0, ε, t) -> y.
TARGETS: dict[str, Callable] = {"epsilon": _epsilon, "v_prediction": _v_prediction, "sample": _sample}


def training_target(scheduler, x0, noise, t):
    """What the U-Net regresses at x_t = add_noise(x_0, ε, t), for the scheduler's `prediction_type`.

    Args:
        scheduler: a diffusers noise scheduler (`config.prediction_type` picks the target; `get_velocity` gives v).
        x0: clean latents x_0, (B, C, h, w).
        noise: the noise ε added to them, (B, C, h, w).
        t: (B,) integer timesteps.

    Returns:
        (B, C, h, w): ε, v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0, or x_0.

    Raises:
        ValueError: a prediction type prune_lab does not handle.
    """
    kind = scheduler.config.prediction_type
    if kind not in TARGETS:
        raise ValueError(
            f"scheduler prediction_type {kind!r} is not supported; prune_lab handles {', '.join(TARGETS)}: "
            "use a model whose scheduler config sets one of them"
        )
    return TARGETS[kind](scheduler, x0, noise, t)
