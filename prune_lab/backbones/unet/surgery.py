"""Surgery primitives and the reversible (analysis-mode) removal of units.

Analysis mode (:func:`taken_out`) swaps modules in place for the duration of a `with` block and puts the very
same module objects back afterwards, so the model is bit-identical once the block exits. Weights are never
touched. Export mode (the compact network) lives in :mod:`.compaction` and reuses the substitutes below.

Substitutes for a removed unit:

* identity when its input and output shapes match (residual blocks, transformer layers, attention blocks);
* :class:`ChannelInterpolation` otherwise: a parameter-free linear interpolation along the channel axis from
  C_in to C_out (`align_corners=True`, so the first and last channels are carried over exactly and C_in == C_out
  is the identity). It is what stands in for the first resnet of a wider stage and for up-stage resnets, whose
  input is the concatenation [hidden, skip].

A skip concatenation can be *zeroed* (the skip channels of the consumer's input are set to 0: BK-SDM appendix
Fig. 29) or *dropped* (the consumer's input channels for the skip are pruned away; its first GroupNorm keeps its
group count over the remaining channels).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ...runtime.modules import set_submodule
from .graph import SKIP_PREFIX, UNetGraph, walk

SKIP_MODES = ("zero", "drop")


def interpolate_channels(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Linearly interpolate `x` (B, C_in, H, W) along the channel axis to (B, C_out, H, W).

    Output channel c takes input position c · (C_in − 1) / (C_out − 1) (align_corners), blending its two
    neighbours linearly.
    """
    b, c, h, w = x.shape
    if c == out_channels:
        return x
    flat = x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    out = F.interpolate(flat, size=out_channels, mode="linear", align_corners=True)
    return out.reshape(b, h, w, out_channels).permute(0, 3, 1, 2)


class ChannelInterpolation(nn.Module):
    """Parameter-free stand-in for a removed block; identity when the channel counts agree.

    It accepts the call signatures diffusers uses for resnets (`(hidden, temb)`), transformer layers and
    attention blocks (keyword arguments, `return_dict=False` returning a 1-tuple).

    Args:
        in_channels: channels the removed block took (documentation; the actual input may differ in export).
        out_channels: channels the removed block produced.
        tuple_output: the removed block was a `Transformer2DModel` (returns a tuple when `return_dict=False`).
    """

    def __init__(self, in_channels: int, out_channels: int, tuple_output: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.tuple_output = in_channels, out_channels, tuple_output

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = interpolate_channels(hidden_states, self.out_channels) if hidden_states.ndim == 4 else hidden_states
        if not self.tuple_output:
            return out
        if kwargs.get("return_dict", True) is False:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


def substitute_for(module: nn.Module, in_channels: int, out_channels: int) -> ChannelInterpolation:
    """The parameter-free substitute for `module` (tuple output for transformer blocks and their substitutes: a
    progressive round's student carries the substitutes of units removed earlier, and taking one out again must keep
    its call convention)."""
    tuple_output = (
        module.tuple_output if isinstance(module, ChannelInterpolation) else hasattr(module, "transformer_blocks")
    )
    return ChannelInterpolation(in_channels, out_channels, tuple_output=tuple_output)


def zero_skip_hook(prev_channels: int):
    """Forward pre-hook for a consumer resnet: zero the skip channels (those after `prev_channels`)."""

    def hook(module, args, kwargs):
        hidden, *rest = args
        hidden = torch.cat([hidden[:, :prev_channels], torch.zeros_like(hidden[:, prev_channels:])], dim=1)
        return (hidden, *rest), kwargs

    return hook


def slice_skip_hook(prev_channels: int):
    """Forward pre-hook for a consumer whose skip was dropped: pass only the first `prev_channels` channels."""

    def hook(module, args, kwargs):
        hidden, *rest = args
        return (hidden[:, :prev_channels], *rest), kwargs

    return hook


def drop_skip_channels(resnet: nn.Module, prev_channels: int) -> nn.Module:
    """A copy of an up-stage resnet whose input channels for the skip are pruned away (torch-pruning).

    The copy takes `prev_channels` input channels; its first GroupNorm keeps the original group count, so
    `prev_channels` must be divisible by it. A pre-hook slices the concatenated input, so the copy can sit where
    diffusers concatenates [hidden, skip].
    """
    groups = resnet.norm1.num_groups
    if prev_channels % groups:
        raise ValueError(
            f"cannot drop the skip: {prev_channels} remaining channels are not divisible by the "
            f"{groups} groups of the consumer's GroupNorm"
        )
    pruned = copy.deepcopy(resnet)
    dropped = list(range(prev_channels, resnet.in_channels))
    tp.prune_groupnorm_out_channels(pruned.norm1, dropped)
    tp.prune_conv_in_channels(pruned.conv1, dropped)
    if getattr(pruned, "conv_shortcut", None) is not None:
        tp.prune_conv_in_channels(pruned.conv_shortcut, dropped)
    pruned.in_channels = prev_channels
    pruned.register_forward_pre_hook(slice_skip_hook(prev_channels), with_kwargs=True)
    return pruned


def expand_removal(graph: UNetGraph, names: Iterable[str]) -> list[str]:
    """Atoms to swap out for `names`: groups become their resnets and attention blocks, skips stay skips.

    Transformer layers inside a removed attention block are dropped from the list (the block goes whole).
    """
    chosen: set[str] = set()
    for name in names:
        unit = graph[name]
        if unit.kind in ("stage", "mid"):
            chosen.update(n for n in graph.descendants(name) if graph[n].kind in ("resnet", "attention"))
        else:
            chosen.add(name)
    removed_attn = {n for n in chosen if graph[n].kind == "attention"}
    chosen = {n for n in chosen if not (graph[n].kind == "transformer_layer" and graph[n].parent in removed_attn)}
    chosen = {n for n in chosen if not (graph[n].kind == "skip" and graph[n].consumer in chosen)}
    return sorted(chosen, key=lambda n: graph[n].order)


@contextmanager
def taken_out(
    unet: nn.Module, names: Iterable[str], *, skip_mode: str = "zero", graph: UNetGraph | None = None
) -> Iterator[nn.Module]:
    """Reversibly take units out of `unet` (analysis mode).

    Args:
        unet: the model; modified in place inside the block, restored exactly on exit.
        names: unit names from the graph walker (stages and the mid stage expand to their members).
        skip_mode: what removing a skip means here: `zero` its channels or `drop` them.
        graph: the walk of `unet`, if the caller already has it.

    Yields:
        the same `unet`, with the units replaced by identity / channel-interpolation substitutes.
    """
    if skip_mode not in SKIP_MODES:
        raise ValueError(f"skip_mode must be one of {SKIP_MODES}, got {skip_mode!r}")
    graph = graph or walk(unet)
    swaps: list[tuple[str, nn.Module]] = []
    handles = []
    try:
        for name in expand_removal(graph, list(names)):
            unit = graph[name]
            if unit.kind == "skip":
                consumer = graph[unit.consumer]
                prev = consumer.in_channels - unit.out_channels
                original = unet.get_submodule(unit.consumer)
                if skip_mode == "zero":
                    handles.append(original.register_forward_pre_hook(zero_skip_hook(prev), with_kwargs=True))
                else:
                    swaps.append((unit.consumer, original))
                    set_submodule(unet, unit.consumer, drop_skip_channels(original, prev))
                continue
            original = unet.get_submodule(name)
            swaps.append((name, original))
            set_submodule(unet, name, substitute_for(original, unit.in_channels, unit.out_channels))
        yield unet
    finally:
        for handle in handles:
            handle.remove()
        for path, original in reversed(swaps):
            set_submodule(unet, path, original)


__all__ = [
    "ChannelInterpolation",
    "SKIP_PREFIX",
    "drop_skip_channels",
    "expand_removal",
    "interpolate_channels",
    "set_submodule",
    "substitute_for",
    "taken_out",
]
