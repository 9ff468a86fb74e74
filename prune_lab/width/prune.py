"""`width_prune`: uniform channel pruning of a diffusers U-Net to a parameter budget, through torch-pruning.

The recipe (Diff-Pruning, Fang et al., NeurIPS 2023, built on DepGraph): trace the U-Net once, score every
coupled channel group with the chosen criterion, find the one uniform pruning ratio that meets the budget (every
group keeps the same fraction, rounded per :mod:`prune_lab.width.groups`), prune all groups, and bring the diffusers
containers' width attributes up to date. This is the width baseline the block presets are compared against (BK-SDM,
Kim et al. 2023, §4: depth removal is faster than channel pruning at similar parameter counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel, UNet2DModel

from ..backbones import instantiate
from ..scoring.calibration import Calibration
from .criteria import GradientPass, TaylorSettings, accumulate_gradients, get_width_criterion
from .groups import build_pruner, channel_groups, prune_groups, pruning_indices, search_ratio
from .widths import changed_widths, count_params, on_meta, sync_attributes

#: Budget metrics `--target METRIC=FRACTION` accepts.
TARGET_METRICS = ("params",)


@dataclass(frozen=True)
class Target:
    """A parameter budget: keep `fraction` of the base model's `metric` (`params=0.5`), or at most `amount` of it
    (`params=480M`).

    Attributes:
        metric: what is budgeted (:data:`TARGET_METRICS`).
        fraction: the share of the base model kept, in (0, 1); None for an absolute budget.
        amount: the absolute bound (parameters), when `fraction` is None.
    """

    metric: str
    fraction: float | None = None
    amount: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """`plan --target`'s grammar (:func:`prune_lab.runtime.budget.parse_budget`) for the metrics width pruning
        supports: `params=0.5`, `params=50%` -> a fraction; `params=480M` -> an amount.

        Raises:
            ValueError: not `METRIC=VALUE`, an unknown metric or unit, a fraction outside (0, 1).
        """
        from ..runtime.budget import parse_budget, split_budget

        metric, sep, _ = str(text).partition("=")
        if not sep:
            raise ValueError(
                f"--target {text!r} is not METRIC=FRACTION; write e.g. params=0.5, params=50% or params=480M"
            )
        if metric.strip() not in TARGET_METRICS:
            raise ValueError(
                f"--target metric {metric.strip()!r} is not supported; use one of {', '.join(TARGET_METRICS)}"
            )
        _, number, unit = split_budget(str(text))
        if unit == "" and not 0 < number < 1:
            raise ValueError(f"--target fraction must be in (0, 1), got {number:g}")
        budget = parse_budget(str(text))
        if budget.fraction:
            return cls(budget.resource, budget.value)
        return cls(budget.resource, amount=budget.value)

    def limit(self, base: float) -> int:
        """The bound in the metric's units for a base model of `base`.

        Raises:
            ValueError: an absolute amount the base model already meets (nothing to prune).
        """
        if self.fraction is not None:
            return int(self.fraction * base)
        if self.amount >= base:
            raise ValueError(f"--target {self}: the model has only {base / 1e6:,.2f}M {self.metric}; nothing to prune")
        return int(self.amount)

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.metric}={self.fraction:g}"
        return f"{self.metric}={self.amount / 1e6:g}M"


@dataclass
class WidthResult:
    """A width-pruned U-Net and how it was made.

    Attributes:
        unet: the pruned model (the input model, pruned in place; eval mode, no gradients kept).
        criterion / target / round_to: the settings.
        ratio: the uniform channel-pruning ratio the budget search chose.
        base_params / params: parameters before and after.
        estimated_params: what the budget search predicted for `params` (equal unless a layer type escaped the
            estimate).
        wider_params: parameters of the next wider uniform plan the rounding allows (over the budget; None when
            the unpruned model fits): the target is met "within rounding" when params <= budget < wider_params.
        widths: the layers whose widths changed, by module path (what :func:`~prune_lab.width.persist.save_width`
            stores).
        gradients: the Taylor gradient pass (timesteps visited, losses), when the criterion needed one.
    """

    unet: nn.Module
    criterion: str
    target: Target
    round_to: int | None
    ratio: float
    base_params: int
    params: int
    estimated_params: int | None = None
    wider_params: int | None = None
    widths: dict[str, dict[str, int]] = field(default_factory=dict)
    gradients: GradientPass | None = None

    @property
    def params_fraction(self) -> float:
        return self.params / self.base_params

    def summary(self) -> dict:
        """JSON-ready provenance (stored in the width file)."""
        out = {
            "criterion": self.criterion,
            "target": str(self.target),
            "round_to": self.round_to,
            "ratio": round(self.ratio, 6),
            "base_params": self.base_params,
            "params": self.params,
            "params_fraction": round(self.params_fraction, 6),
            "estimated_params": self.estimated_params,
            "wider_params": self.wider_params,
        }
        if self.gradients is not None:
            out["taylor"] = self.gradients.to_dict()
        return out


def _check_model(unet: nn.Module, round_to: int | None) -> None:
    if not isinstance(unet, (UNet2DConditionModel, UNet2DModel)):
        raise ValueError(
            f"width pruning takes a diffusers UNet2DConditionModel or UNet2DModel, not {type(unet).__name__}"
        )
    if on_meta(unet):
        raise ValueError(
            "width pruning needs real weights (importance is computed from them); load a checkpoint "
            "or a built-in without meta=True"
        )
    if round_to is not None and round_to < 1:
        raise ValueError(f"--round-to must be >= 1, got {round_to}")


def _reference(unet: nn.Module) -> nn.Module:
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return instantiate(type(unet), config, meta=True)


def width_prune(
    unet: nn.Module,
    *,
    criterion: str = "magnitude",
    target: Target = Target("params", 0.5),
    round_to: int | None = 8,
    calibration: Calibration | None = None,
    scheduler=None,
    taylor: TaylorSettings | None = None,
    seed: int = 0,
    progress: bool = False,
) -> WidthResult:
    """Prune the channels of `unet` uniformly, in place, to `target` (see the module docstring).

    Args:
        unet: a diffusers U-Net with real weights, unpruned (its config describes its widths).
        criterion: a :data:`~prune_lab.width.criteria.WIDTH_CRITERIA` name.
        target: the parameter budget (a fraction of `unet`'s, or an amount).
        round_to: every pruned width stays a multiple of this (None: only GroupNorm groups and heads are kept).
        calibration / scheduler: clean latents + conditioning and the noise schedule, for criteria that need
            gradients (`taylor`).
        taylor: the gradient pass's settings (default :class:`TaylorSettings`).
        seed: seeds random criteria.
        progress: progress bars on stderr.

    Raises:
        ValueError: bad settings, a pruned or meta model, a budget the rounding cannot reach, missing calibration.
    """
    spec = get_width_criterion(criterion)
    _check_model(unet, round_to)
    reference = _reference(unet)
    if changed_widths(unet, reference):
        raise ValueError(
            "this U-Net is already width-pruned (its layers do not match its config); prune the original model instead"
        )
    if spec.needs_gradients and (calibration is None or scheduler is None):
        raise ValueError(
            f"criterion {criterion!r} needs calibration data (--calib-dir, --prompts, --calib-cache or --synthetic)"
        )
    base = count_params(unet)
    budget = target.limit(base)
    unet.requires_grad_(True)
    pruner = build_pruner(unet, spec.importance())
    groups = channel_groups(pruner, round_to)
    search = search_ratio(unet, [g for g, _ in groups], budget)
    gradients = None
    if spec.needs_gradients:
        gradients = accumulate_gradients(unet, calibration, scheduler, taylor or TaylorSettings(), progress)
    torch.manual_seed(seed)
    selected = [(g, pruning_indices(g, pruner.estimate_importance(full), search.ratio)) for g, full in groups]
    prune_groups(pruner, selected)
    sync_attributes(unet)
    unet.zero_grad(set_to_none=True)
    unet.requires_grad_(False).eval()
    widths = changed_widths(unet, reference)
    return WidthResult(
        unet,
        criterion,
        target,
        round_to,
        search.ratio,
        base,
        count_params(unet),
        search.params,
        search.wider_params,
        widths,
        gradients,
    )
