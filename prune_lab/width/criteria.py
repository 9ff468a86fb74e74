"""Channel-importance criteria for width pruning, and Diff-Pruning's gradient pass for the Taylor one.

A criterion is a registered :class:`WidthCriterion` wrapping a torch-pruning importance (a callable over a coupled
group that returns one score per channel; reduction over the group's layers and normalisation are torch-pruning's
shared `group_reduction="mean"` / `normalizer="mean"`). The CLI's `--criterion` choices come from
:data:`WIDTH_CRITERIA`.

Taylor importance follows Diff-Pruning (Fang, Ma & Wang, "Structural Pruning for Diffusion Models", NeurIPS 2023,
§3.3, Eq. 8): gradients of the denoising loss are accumulated over the timesteps t = 0, 1, ... in increasing order
for one fixed draw of clean latents and noise, and the importance of a weight is |w · Σ_t ∂L_t/∂w| summed per
channel (`TaylorImportance(multivariable=False)`). Its timestep selection stops the accumulation at the first
timestep whose loss falls below `threshold` times the largest loss seen so far: late, noise-dominated steps carry
little content and would only add noise to the estimate (the paper's `--thr`, 0.05 by default there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from tqdm.auto import tqdm

from ..runtime.schedule import training_target
from ..scoring.calibration import Calibration


@dataclass(frozen=True)
class WidthCriterion:
    """A channel-importance criterion.

    Attributes:
        name: registry key (`--criterion NAME`).
        importance: a factory for the torch-pruning importance object.
        needs_gradients: whether the denoising-loss gradients must be accumulated first (Taylor).
        description: one line, with the source it follows.
    """

    name: str
    importance: Callable[[], tp.importance.Importance]
    needs_gradients: bool
    description: str


WIDTH_CRITERIA: dict[str, WidthCriterion] = {}


def register_width_criterion(criterion: WidthCriterion) -> WidthCriterion:
    if criterion.name in WIDTH_CRITERIA:
        raise ValueError(f"width criterion {criterion.name!r} is already registered")
    WIDTH_CRITERIA[criterion.name] = criterion
    return criterion


def get_width_criterion(name: str) -> WidthCriterion:
    if name not in WIDTH_CRITERIA:
        raise ValueError(f"unknown width criterion {name!r}; choose one of {', '.join(WIDTH_CRITERIA)}")
    return WIDTH_CRITERIA[name]


register_width_criterion(
    WidthCriterion(
        "magnitude",
        lambda: tp.importance.MagnitudeImportance(p=2),
        False,
        "group L2 norm of the coupled weights (Li et al. 2017; DepGraph, Fang et al. 2023)",
    )
)
register_width_criterion(
    WidthCriterion(
        "taylor",
        lambda: tp.importance.TaylorImportance(multivariable=False),
        True,
        "|w * accumulated denoising-loss gradient| (Diff-Pruning, Fang et al. 2023; Molchanov et al. 2019)",
    )
)
register_width_criterion(
    WidthCriterion(
        "random",
        tp.importance.RandomImportance,
        False,
        "uniformly random channels (the sanity baseline)",
    )
)


# ------------------------------------------------------------------------------------------ Taylor gradients
@dataclass(frozen=True)
class TaylorSettings:
    """Diff-Pruning's gradient pass.

    Attributes:
        timesteps: how many timesteps, evenly spaced over [0, T) and visited in increasing order (Diff-Pruning
            visits all T = 1000; fewer keeps a CPU run short).
        threshold: stop after the first timestep whose loss is below `threshold` x the largest so far (Diff-Pruning's
            timestep selection, 0.05 there); None visits every timestep.
        batch_size: calibration samples per forward/backward.
        seed: seeds the single noise draw shared by all timesteps.
    """

    timesteps: int = 100
    threshold: float | None = None
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.timesteps < 1 or self.batch_size < 1:
            raise ValueError(
                f"need --calib-timesteps >= 1 and --batch-size >= 1, got {self.timesteps}, {self.batch_size}"
            )
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"--timestep-threshold must be in (0, 1), got {self.threshold}")


@dataclass
class GradientPass:
    """What the gradient pass did: the timesteps it visited and the mean loss at each."""

    timesteps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "losses": [round(v, 6) for v in self.losses],
            "stopped_early": self.stopped_early,
        }


def schedule(num_train_timesteps: int, count: int) -> list[int]:
    """`count` timesteps evenly spaced over [0, T - 1], increasing (all of them when count >= T)."""
    count = min(count, num_train_timesteps)
    return torch.linspace(0, num_train_timesteps - 1, count).round().long().unique().tolist()


def _conditioning(calib: Calibration, part: slice) -> dict:
    kwargs = {}
    if calib.embeddings is not None:
        kwargs["encoder_hidden_states"] = calib.embeddings[part]
    if calib.added is not None:
        kwargs["added_cond_kwargs"] = {k: v[part] for k, v in calib.added.items()}
    return kwargs


def _timestep_loss(
    unet: nn.Module, calib: Calibration, noise: torch.Tensor, scheduler, t: int, batch_size: int
) -> float:
    """Backward of the mean denoising loss at timestep `t` over the calibration set; returns that loss."""
    device, total, n = next(unet.parameters()).device, 0.0, len(calib)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        x0, eps = calib.latents[part], noise[part]
        steps = torch.full((x0.shape[0],), t, dtype=torch.long)
        noisy = scheduler.add_noise(x0, eps, steps)
        target = training_target(scheduler, x0, eps, steps)
        cond = {
            k: v.to(device) if torch.is_tensor(v) else {a: b.to(device) for a, b in v.items()}
            for k, v in _conditioning(calib, part).items()
        }
        out = unet(noisy.to(device), steps.to(device), **cond).sample
        loss = F.mse_loss(out.float(), target.to(device).float()) * (x0.shape[0] / n)
        loss.backward()
        total += loss.item()
    return total


def accumulate_gradients(
    unet: nn.Module, calib: Calibration, scheduler, settings: TaylorSettings, progress: bool = False
) -> GradientPass:
    """Accumulate Σ_t ∂L_t/∂w into every parameter's `.grad` (Diff-Pruning's recipe, see the module docstring).

    Args:
        unet: the model (gradients are zeroed first; `.grad` holds the sum afterwards).
        calib: clean latents x0 (N, C, h, w) and their conditioning.
        scheduler: the training noise schedule (`add_noise`, `prediction_type`, `num_train_timesteps`).
        settings: timesteps, threshold, batch size, seed.
        progress: show a progress bar.
    """
    unet.zero_grad(set_to_none=True)
    unet.requires_grad_(True)
    noise = torch.randn(calib.latents.shape, generator=torch.Generator().manual_seed(settings.seed))
    trace, peak = GradientPass(), 0.0
    steps = schedule(scheduler.config.num_train_timesteps, settings.timesteps)
    for t in tqdm(steps, desc="taylor gradients", disable=not progress, leave=False):
        loss = _timestep_loss(unet, calib, noise, scheduler, t, settings.batch_size)
        trace.timesteps.append(t)
        trace.losses.append(loss)
        peak = max(peak, loss)
        if settings.threshold is not None and loss < settings.threshold * peak:
            trace.stopped_early = True
            break
    return trace
