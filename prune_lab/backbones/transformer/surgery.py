"""Analysis mode: reversible removal of blocks and branches, with parameter-free stand-ins.

A removed block becomes :class:`Bypass`: identity on its residual stream(s), returning exactly what the model's loop
expects (the hidden states; or `(encoder_hidden_states, hidden_states)` for MMDiT / Flux blocks, Flux single blocks
included: they split the concatenated stream back before returning, so identity on the concatenation is identity on
both). It reads any other attribute from the block it stands for, so code that reaches into a block from outside the
loop keeps working (DiT's output layer reads `transformer_blocks[0].norm1.emb`; SD3 reads `context_pre_only`).

A removed branch becomes :class:`ZeroBranch`: its output is zeros of the shape it would have had (a joint attention:
zeros on both streams), so the block adds nothing on that residual and `h + gate * 0 == h` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from ...runtime.modules import set_submodule
from .graph import BLOCK, TransformerGraph
from .spec import Family, family_of


def _stream(args: tuple, kwargs: dict, name: str, position: int):
    return kwargs[name] if name in kwargs else args[position]


class Bypass(nn.Module):
    """A removed block: identity on its streams (`("image",)` or `("context", "image")`, in return order).

    Args:
        streams: the block's return streams.
        original: the block it stands for (read for any attribute the bypass lacks; not a submodule).
    """

    def __init__(self, streams: tuple[str, ...], original: nn.Module | None = None) -> None:
        super().__init__()
        self.streams = streams
        object.__setattr__(self, "_original", original)

    def forward(self, *args, **kwargs):
        hidden = _stream(args, kwargs, "hidden_states", 0)
        if self.streams == ("image",):
            return hidden
        return _stream(args, kwargs, "encoder_hidden_states", 1), hidden

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:
                raise
            return getattr(original, name)


class ZeroBranch(nn.Module):
    """A removed residual branch: zeros shaped like its input (a joint attention: like both of its inputs)."""

    def __init__(self, joint: bool = False) -> None:
        super().__init__()
        self.joint = joint

    def forward(self, *args, **kwargs):
        hidden = _stream(args, kwargs, "hidden_states", 0)
        if not self.joint:
            return torch.zeros_like(hidden)
        context = kwargs.get("encoder_hidden_states")
        return torch.zeros_like(hidden), None if context is None else torch.zeros_like(context)

    def extra_repr(self) -> str:
        return "joint" if self.joint else ""


def stack_of(family: Family, attr: str):
    return next(s for s in family.stacks if s.attr == attr)


def branch_of(family: Family, graph: TransformerGraph, name: str):
    """The :class:`~.spec.Branch` spec of branch unit `name`."""
    unit = graph[name]
    attr = name.rsplit(".", 1)[1]
    return next(b for b in stack_of(family, unit.stage).branches if b.attr == attr)


def expand_removal(graph: TransformerGraph, names: Iterable[str]) -> list[str]:
    """The units to swap for `names`: a block goes whole, so its branches are dropped from the list."""
    chosen = {graph[n].name for n in names}
    chosen = {n for n in chosen if graph[n].kind == BLOCK or graph[n].parent not in chosen}
    return sorted(chosen, key=lambda n: graph[n].order)


def stand_in(family: Family, graph: TransformerGraph, name: str, original: nn.Module) -> nn.Module:
    """The parameter-free stand-in for unit `name` (:class:`Bypass` or :class:`ZeroBranch`)."""
    unit = graph[name]
    if unit.kind == BLOCK:
        return Bypass(stack_of(family, unit.stage).streams, original)
    return ZeroBranch(branch_of(family, graph, name).joint)


@contextmanager
def taken_out(model: nn.Module, names: Iterable[str], *, graph: TransformerGraph | None = None) -> Iterator[nn.Module]:
    """Reversibly take blocks and branches out of `model` (analysis mode); the same modules go back on exit.

    Yields:
        the same `model`, with the units replaced by :class:`Bypass` / :class:`ZeroBranch`.
    """
    from .graph import walk

    family = family_of(model)
    graph = graph or walk(model, family)
    swaps: list[tuple[str, nn.Module]] = []
    try:
        for name in expand_removal(graph, list(names)):
            original = model.get_submodule(name)
            swaps.append((name, original))
            set_submodule(model, name, stand_in(family, graph, name, original))
        yield model
    finally:
        for path, original in reversed(swaps):
            set_submodule(model, path, original)
