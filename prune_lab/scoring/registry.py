"""The criterion registry, the one contract every criterion follows, and the reductions they share.

A criterion is registered with :func:`register_criterion` and reached only through :func:`get_criterion` /
:func:`list_criteria` (the CLI's `--criterion` choices and the test parametrisation both come from here).

The contract, in two calls, so that the sweep can persist and resume unit by unit:

1. ``scorer = criterion.build(inputs)`` does the work every unit shares (backward passes, cached activations, the
   unpruned baseline) from the model and data in :class:`ScoringInputs`;
2. ``scorer(unit) -> UnitScore`` scores one :class:`~prune_lab.scoring.groups.ScoreUnit`: a finite `raw` metric
   and an `importance` (higher = more important) derived from it.

Both leave the model unchanged (weights, buffers, `requires_grad`, `.grad`) and are deterministic under the
seed in :class:`ScoringInputs`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..backbones import backbone_of
from ..units import Graph
from .groups import ScoreUnit

#: What a criterion may need beyond the model: denoising batches, or a pipeline plus prompts.
NEEDS = ("batches", "pipeline")


@dataclass
class ScoringInputs:
    """Model and data in.

    Attributes:
        unet: the U-Net (left unchanged by every criterion).
        graph: its walk.
        batches: denoising inputs for data-driven criteria (see :mod:`prune_lab.scoring.calibration`).
        pipeline: a diffusers pipeline whose `.unet` is `unet` (generation-based criteria).
        prompts: prompts for generation-based criteria.
        options: criterion settings (`skip_mode`, `prefix_cache`, `gradient_checkpointing`, CLIP settings ...).
        seed: the seed every random draw derives from.
    """

    unet: nn.Module
    graph: Graph
    batches: list | None = None
    pipeline: Any | None = None
    prompts: list[str] | None = None
    options: dict = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class UnitScore:
    """One unit's result: the raw metric, its importance (higher = more important) and extra metrics."""

    raw: float
    importance: float
    extras: dict[str, float] = field(default_factory=dict)


UnitScorer = Callable[[ScoreUnit], UnitScore]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion.

    Attributes:
        name: registry key (`--criterion NAME`).
        metric: name of the raw metric it reports (`mean_abs_weight`, `output_mse`, ...).
        needs: inputs it requires beyond the model (subset of :data:`NEEDS`).
        build: `build(inputs) -> scorer`, see the module docstring.
        description: one line, with the source it follows.
    """

    name: str
    metric: str
    needs: tuple[str, ...]
    build: Callable[[ScoringInputs], UnitScorer]
    description: str


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, metric: str, needs: Iterable[str] = (), description: str = ""):
    """Decorator registering `build(inputs) -> scorer` as criterion `name`."""
    needs = tuple(needs)
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"criterion {name!r} needs unknown inputs {sorted(unknown)}; choose from {NEEDS}")

    def wrap(build: Callable[[ScoringInputs], UnitScorer]):
        _CRITERIA[name] = Criterion(name, metric, needs, build, description or (build.__doc__ or "").split("\n")[0])
        return build

    return wrap


def _load_builtin() -> None:
    from . import ablation, clip, magnitude, taylor  # noqa: F401  (registration side effect)


def list_criteria() -> list[str]:
    """Registered criterion names, sorted."""
    _load_builtin()
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name`.

    Raises:
        ValueError: unknown name (with the closest registered name and the full list).
    """
    _load_builtin()
    if name not in _CRITERIA:
        close = difflib.get_close_matches(name, list(_CRITERIA), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown criterion {name!r}; {hint}choose from: {', '.join(sorted(_CRITERIA))}")
    return _CRITERIA[name]


# ---------------------------------------------------------------------------------------------------- reductions


@dataclass(frozen=True)
class WeightSlice:
    """A weight layer of a unit, optionally restricted to some input columns (a skip's channels).

    Attributes:
        path: module path of the `Conv2d` / `Linear`.
        weight: its weight parameter, (out, in, *kernel) or (out, in).
        in_slice: input-channel slice the unit owns (all of them unless the unit is a skip).
    """

    path: str
    weight: nn.Parameter
    in_slice: slice = field(default_factory=lambda: slice(None))


def _weight_layers(module: nn.Module, prefix: str) -> list[WeightSlice]:
    return [
        WeightSlice(f"{prefix}.{name}" if name else prefix, m.weight)
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.weight is not None
    ]


def unit_weights(unet: nn.Module, graph: Graph, unit: ScoreUnit) -> list[WeightSlice]:
    """Every weight layer a unit owns: convolutions and linear layers (attention projections included).

    A group owns its members' layers; a skip owns the input columns its channels feed in the consumer's `conv1`
    and `conv_shortcut` (the weights that would go if the skip were dropped).
    """
    out: list[WeightSlice] = []
    for name in backbone_of(graph).expand_removal(graph, unit.members):
        atom = graph[name]
        if atom.kind != "skip":
            out.extend(_weight_layers(unet.get_submodule(name), name))
            continue
        consumer = unet.get_submodule(atom.consumer)
        columns = slice(graph[atom.consumer].in_channels - atom.out_channels, None)
        for attr in ("conv1", "conv_shortcut"):
            layer = getattr(consumer, attr, None)
            if layer is not None:
                out.append(WeightSlice(f"{atom.consumer}.{attr}", layer.weight, columns))
    return out


def neuron_mean(rows: Iterable[torch.Tensor]) -> float:
    """E_{l,i} Σ_j X^l_ij: sum each layer's tensor over everything but the output axis, average over all neurons.

    Args:
        rows: per layer l a tensor (out_l, ...) (convolutions are flattened over (in, kh, kw)).

    Returns:
        the mean over all output neurons i of all layers l (pooled) of the per-neuron sums; 0.0 for no layers.
    """
    sums = [t.detach().reshape(t.shape[0], -1).float().sum(dim=1).double() for t in rows]
    if not sums:
        return 0.0
    return float(torch.cat(sums).mean())


def check_finite(criterion: str, unit: str, value: float) -> float:
    """`value`, or a ValueError naming the unit when it is NaN / infinite."""
    if not math.isfinite(value):
        raise ValueError(
            f"criterion {criterion!r} gave a non-finite score ({value}) for {unit}; "
            "check the model weights and calibration data (or use --dtype float32)"
        )
    return value
