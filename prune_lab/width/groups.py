"""The torch-pruning side of width pruning: dependency graph, coupled channel groups, rounded keep counts.

Torch-Pruning's :class:`~torch_pruning.pruner.BasePruner` (Fang et al., "DepGraph: Towards Any Structural Pruning",
CVPR 2023) traces the U-Net once on example inputs and groups every set of channels that must go together: a
resnet's inner channels, a resolution level's residual stream with every skip concatenation it feeds (the traced
`cat` maps a producer's channels onto its slice of the consumer's input), the q/k/v projections of one attention
(coupled through `scaled_dot_product_attention`) with the input of `to_out`, a GEGLU's two halves, the time
embedding and every resnet's `time_emb_proj`. It also detects GroupNorm channel groups (`num_groups`); attention
heads and GEGLU halves are declared as `out_channel_groups`, so the same in-group positions are pruned in every
group: GroupNorm groups, head counts and the GEGLU split all survive.

Selection is uniform (every coupled group keeps the same fraction, Diff-Pruning's local pruning) and done here, not
by `BasePruner.step`, because torch-pruning's `round_to` rounds the per-group count against the total channel count
when channel groups exist (it would remove 8 of 10 channels per GroupNorm group for `round_to=8`). Each group keeps
`k` of its `S` positions per channel group, with `k` the nearest multiple of the smallest step that keeps every
member's width divisible by `round_to` (a GroupNorm member of `G` groups keeps `G·k` channels; a GEGLU output
`k`). `conv_out` is ignored, so the model's output channels stay; `conv_in`'s input channels are the latents and
have no group. Everything else is prunable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.nn as nn
import torch_pruning as tp
from diffusers.models.activations import GEGLU
from diffusers.models.attention_processor import Attention

from ..report.steps import unet_call

PARAMETRIC = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)


@dataclass
class Member:
    """One pruned dimension in a group: `axis` 0 (outputs / norm channels) or 1 (inputs) of `module`, `size` wide."""

    module: nn.Module
    axis: int
    size: int


@dataclass
class ChannelGroup:
    """Channels that are pruned together.

    Attributes:
        root: the module whose output channels index the group.
        handler: torch-pruning's pruning function for the root.
        channels: C, the root's channel count.
        groups: G, channel groups (GroupNorm groups, attention heads, GEGLU halves); positions S = C / G.
        members: every parameterised dimension the group prunes.
        step: k (positions kept per channel group) must be a multiple of this.
    """

    root: nn.Module
    handler: Callable
    channels: int
    groups: int
    members: list[Member] = field(default_factory=list)
    step: int = 1

    @property
    def positions(self) -> int:
        return self.channels // self.groups

    def keep(self, ratio: float) -> int:
        """Positions kept per channel group when a fraction `ratio` of the channels is pruned (never 0)."""
        size = self.positions
        if self.step > size:
            return size
        k = round(size * (1.0 - ratio) / self.step) * self.step
        return min(size, max(self.step, k))


def example_inputs(unet: nn.Module) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """The forward and the smallest valid zero inputs for tracing (latent 2^(levels-1); shapes do not matter)."""
    latent = 2 ** (len(unet.config.block_out_channels) - 1)
    device = next(unet.parameters()).device
    return unet_call(unet, latent, device=device)


def declared_channel_groups(unet: nn.Module) -> dict[nn.Module, int]:
    """Output channel groups torch-pruning cannot see: attention heads (q, k, v) and the two halves of a GEGLU."""
    groups = {}
    for module in unet.modules():
        if isinstance(module, Attention):
            for proj in (module.to_q, module.to_k, module.to_v):
                groups[proj] = module.heads
        elif isinstance(module, GEGLU):
            groups[module.proj] = 2
    return groups


def build_pruner(unet: nn.Module, importance) -> tp.pruner.BasePruner:
    """A `BasePruner` over `unet` (traced once on zero inputs), `conv_out` ignored, heads and GEGLU declared.

    The model must have gradients enabled for tracing (torch-pruning follows the autograd graph).
    """
    fn, args = example_inputs(unet)
    with torch.enable_grad():
        return tp.pruner.BasePruner(
            unet,
            example_inputs=args,
            forward_fn=lambda model, inputs: fn(model, *inputs),
            importance=importance,
            ignored_layers=[unet.conv_out],
            out_channel_groups=declared_channel_groups(unet),
            in_channel_groups={},  # fresh dicts: BasePruner fills them, and its defaults are shared between calls
            num_heads={},
            global_pruning=False,
        )


# --------------------------------------------------------------------------------------------- groups
def _axis(module: nn.Module, handler, graph: tp.DependencyGraph) -> int:
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return 0
    return 0 if graph.is_out_channel_pruning_fn(handler) else 1


def _members(group, graph: tp.DependencyGraph) -> list[Member]:
    seen = {}
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, PARAMETRIC):
            key = (module, _axis(module, dep.handler, graph))
            seen.setdefault(key, set()).update(int(i) for i in idxs)
    return [Member(m, axis, len(idxs)) for (m, axis), idxs in seen.items()]


def _channel_groups(pruner: tp.pruner.BasePruner, group) -> int:
    found = [1]
    for dep, _ in group:
        out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
        found.append((pruner.out_channel_groups if out else pruner.in_channel_groups).get(dep.target.module, 1))
    return max(found)


def _step(members: Iterable[Member], positions: int, round_to: int | None) -> int:
    """Smallest k such that every member's kept width (size·k / positions) is a multiple of `round_to`."""
    if not round_to or round_to == 1:
        return 1
    step = 1
    for m in members:
        per_position = Fraction(m.size, positions)
        need = round_to // math.gcd(round_to, per_position.numerator) if per_position.denominator == 1 else round_to
        step = math.lcm(step, need)
    return step


def channel_groups(pruner: tp.pruner.BasePruner, round_to: int | None = None) -> list[tuple[ChannelGroup, object]]:
    """Every prunable group of the traced model with its full torch-pruning group (for importance)."""
    out = []
    roots = pruner.root_module_types
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=roots):
        dep = group[0].dep
        channels = pruner.DG.get_out_channels(dep.target.module)
        g = _channel_groups(pruner, group)
        if not channels or channels % g:
            continue
        members = _members(group, pruner.DG)
        cg = ChannelGroup(dep.target.module, dep.handler, channels, g, members)
        cg.step = _step(members, cg.positions, round_to)
        out.append((cg, group))
    return out


# ---------------------------------------------------------------------------------------------- sizes
def _kept_sizes(groups: list[ChannelGroup], ratio: float) -> dict[tuple[nn.Module, int], float]:
    """Width removed from every (module, axis) when each group keeps `keep(ratio)` positions."""
    removed: dict[tuple[nn.Module, int], float] = {}
    for g in groups:
        fraction = 1.0 - g.keep(ratio) / g.positions
        for m in g.members:
            key = (m.module, m.axis)
            removed[key] = removed.get(key, 0.0) + m.size * fraction
    return removed


def estimate_params(model: nn.Module, groups: list[ChannelGroup], ratio: float) -> int:
    """Parameters of `model` after pruning every group at `ratio`, without pruning anything.

    Every parameter's first two dimensions are the (module, axis 0 / axis 1) widths (conv and linear weights: out,
    in; biases and norm affines: channels); the other dimensions (kernels) do not change.
    """
    removed = _kept_sizes(groups, ratio)
    total = 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            scale = 1.0
            for axis in range(min(p.dim(), 2)):
                cut = removed.get((module, axis), 0.0) if isinstance(module, PARAMETRIC) else 0.0
                scale *= (p.shape[axis] - cut) / p.shape[axis]
            total += round(p.numel() * scale)
    return total


@dataclass(frozen=True)
class RatioSearch:
    """The chosen uniform ratio, its parameter count, and that of the next wider plan (over budget; None if the
    unpruned model fits)."""

    ratio: float
    params: int
    wider_params: int | None


def search_ratio(model: nn.Module, groups: list[ChannelGroup], budget: int, iterations: int = 40) -> RatioSearch:
    """The smallest uniform pruning ratio whose estimated parameter count is within `budget` (bisection): the
    widest network the rounding allows within the budget.

    Raises:
        ValueError: even the narrowest network (every group at its minimum) exceeds the budget.
    """
    lo, hi = 0.0, 1.0
    smallest = estimate_params(model, groups, hi)
    if smallest > budget:
        raise ValueError(
            f"the narrowest network this rounding allows has {smallest:,} parameters, above the "
            f"target {budget:,}; raise --target or lower --round-to"
        )
    full = estimate_params(model, groups, lo)
    if full <= budget:
        return RatioSearch(lo, full, None)
    found, wider = smallest, full
    for _ in range(iterations):
        mid = (lo + hi) / 2
        params = estimate_params(model, groups, mid)
        if params <= budget:
            hi, found = mid, params
        else:
            lo, wider = mid, params
    return RatioSearch(hi, found, wider)


# --------------------------------------------------------------------------------------------- pruning
def pruning_indices(group: ChannelGroup, importance: torch.Tensor, ratio: float) -> list[int]:
    """Root indices to remove: the least important positions (mean over channel groups), in every channel group.

    Args:
        group: the channel group.
        importance: (C,) per-channel importance of the root's channels.
        ratio: the uniform pruning ratio.
    """
    size, k = group.positions, group.keep(ratio)
    if k >= size:
        return []
    per_position = importance.reshape(group.groups, size).mean(0)
    drop = torch.argsort(per_position)[: size - k]
    return sorted(int(p) + g * size for g in range(group.groups) for p in drop.tolist())


def prune_groups(pruner: tp.pruner.BasePruner, selected: list[tuple[ChannelGroup, list[int]]]) -> None:
    """Prune every group's indices (all importances were computed before the first cut, as BasePruner does)."""
    for group, idxs in selected:
        if not idxs:
            continue
        plan = pruner.DG.get_pruning_group(group.root, group.handler, idxs)
        if not pruner.DG.check_pruning_group(plan):
            raise RuntimeError(f"torch-pruning refused to prune {pruner.DG._module2name.get(group.root)}")
        plan.prune()
