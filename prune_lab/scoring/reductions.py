"""Reductions every weight-based criterion shares: a unit's weight layers and the mean over output neurons.

Torch-Pruning's lesson: reduction and normalisation are shared helpers, not copied per criterion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..backbones import backbone_of
from ..units import Graph
from .groups import ScoreUnit


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
