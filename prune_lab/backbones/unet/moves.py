"""Candidate moves: groups of units whose removal can leave a valid plan, and the constraints on them.

Diffusers routes skips positionally, so a down-stage slot cannot go alone: the up stage of the same level must
lose one consumer too (BK-SDM removes down slot 2 with up slot 2 at every level). A move is therefore one of

* `pair` — a down-stage slot (resnet + attention) with an up-stage slot (resnet + attention + its skip) of the
  same resolution level, every combination; which ones leave a valid network depends on the channels and on
  what is already gone, so :class:`~prune_lab.search.problem.Problem` checks each with :func:`prune_lab.plan.resolve`;
* `level` — a whole innermost resolution level (down stage + mirrored up stage, BK-SDM-Tiny);
* `mid`, `mid_tail` — the whole mid stage (BK-SDM-Small), or all of it but its first resnet (SSD-1B, Vega);
* `attention`, `transformer_layer`, `resnet`, `skip` — one unit alone (a layer only where its block has several;
  a removed resnet whose slot stays gets the channel-interpolation substitute; a skip alone is dropped).

A move's `atoms` are every graph atom it removes (an attention block takes its transformer layers along).
Move names join their members' walker names with `+`, as score groups do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ...plan import Plan
from ...units import Move, atoms_of
from .compaction import derive_config
from .graph import SKIP_PREFIX, UNetGraph
from .resolve import resolve


def _move(graph: UNetGraph, kind: str, members: list[str]) -> Move:
    members = [m for m in members if m in graph]
    return Move(kind, tuple(members), atoms_of(graph, members), min(graph[m].order for m in members))


def stage_slots(graph: UNetGraph, stage: str) -> list[list[str]]:
    """Members of each slot (resnet j and attention j) of a down / up stage, in forward order."""
    resnets = [c for c in graph[stage].children if graph[c].kind == "resnet"]
    return [[r] + [a for a in (f"{stage}.attentions.{j}",) if a in graph] for j, r in enumerate(resnets)]


def _slots(graph: UNetGraph, stage: str) -> list[list[str]]:
    resnets = [c for c in graph[stage].children if graph[c].kind == "resnet"]
    return [[f"{SKIP_PREFIX}{r}", r, f"{stage}.attentions.{j}"] for j, r in enumerate(resnets)]


def _pairs(graph: UNetGraph) -> list[Move]:
    n, moves = graph.num_levels, []
    for i in range(n):
        for down in _slots(graph, f"down_blocks.{i}"):
            for up in _slots(graph, f"up_blocks.{n - 1 - i}"):
                moves.append(_move(graph, "pair", down[1:] + up))
    return moves


def _levels(graph: UNetGraph) -> list[Move]:
    n = graph.num_levels
    return [_move(graph, "level", [f"down_blocks.{i}", f"up_blocks.{n - 1 - i}"]) for i in range(n - 1, 0, -1)]


def _mid(graph: UNetGraph) -> list[Move]:
    if "mid_block" not in graph:
        return []
    children = graph["mid_block"].children
    tail = [_move(graph, "mid_tail", list(children[1:]))] if len(children) > 1 else []
    return [_move(graph, "mid", ["mid_block"]), *tail]


def _single(kind: str, keep: Callable = lambda graph, unit: True) -> Callable[[UNetGraph], list[Move]]:
    def build(graph: UNetGraph) -> list[Move]:
        return [_move(graph, kind, [u.name]) for u in graph.of_kind(kind) if keep(graph, u)]

    return build


def _layer_of_deep_block(graph: UNetGraph, unit) -> bool:
    return len(graph[unit.parent].children) > 1


#: Move kind -> builder, in the order candidates are listed.
MOVE_BUILDERS: dict[str, Callable[[UNetGraph], list[Move]]] = {
    "pair": _pairs,
    "level": _levels,
    "mid": _mid,
    "attention": _single("attention"),
    "transformer_layer": _single("transformer_layer", _layer_of_deep_block),
    "resnet": _single("resnet"),
    "skip": _single("skip"),
}


def candidate_moves(graph: UNetGraph) -> list[Move]:
    """Every candidate move of `graph` (duplicates by atoms removed), in forward order of their first member."""
    seen: dict[frozenset[str], Move] = {}
    for build in MOVE_BUILDERS.values():
        for move in build(graph):
            seen.setdefault(move.atoms, move)
    return sorted(seen.values(), key=lambda m: (m.order, len(m.atoms)))


# ------------------------------------------------------------------------------------ checks on searched plans
def removal_actions(graph: UNetGraph, removed: frozenset[str]) -> dict[str, str]:
    """`interpolate` for every removed channel-changing resnet whose slot (or mid stage) keeps something."""
    out = {}
    for name in removed:
        unit = graph[name]
        if unit.kind != "resnet" or unit.removal != "interpolate":
            continue
        if unit.stage == "mid_block":
            rest = graph["mid_block"].children
        else:
            rest = [f"{unit.stage}.attentions.{name.rsplit('.', 1)[1]}"]
        if any(r in graph and r not in removed for r in rest):
            out[name] = "interpolate"
    return out


def buildable(
    unet: nn.Module, graph: UNetGraph, removed: frozenset[str], plan: Plan, *, expressible: bool = False
) -> bool:
    """Whether removing the atoms `removed` (as `plan` does) leaves a student the export can build (and, with
    `expressible`, one with a plain diffusers config).

    On top of :func:`~.resolve.resolve`: no attention block is left without transformer layers, every dropped
    skip leaves its consumer a channel count its GroupNorm can split, and a down stage left without slots feeds
    its downsampler the channels it expects.
    """
    for unit in graph.of_kind("attention"):
        if unit.name not in removed and unit.children and set(unit.children) <= removed:
            return False
    try:
        res = resolve(plan, graph)
    except ValueError:
        return False
    if not _groups_divide(unet, graph, res) or not _samplers_fed(graph, res):
        return False
    return not expressible or derive_config(unet, res) is not None


def _samplers_fed(graph: UNetGraph, res) -> bool:
    """A down stage left without slots passes its input straight to its downsampler: channels must agree."""
    for i, stage in enumerate(res.down[:-1]):
        unit = graph[stage.path]
        active = not stage.level_removed and not res.down[i + 1].level_removed
        if active and not stage.kept_slots and unit.in_channels != unit.out_channels:
            return False
    return True


def _groups_divide(unet: nn.Module, graph: UNetGraph, res) -> bool:
    for stage in res.up:
        for slot in stage.kept_slots:
            if slot.resnet_kept and slot.skip_mode == "drop":
                consumer = unet.get_submodule(slot.resnet)
                kept = graph[slot.resnet].in_channels - graph[slot.skip].out_channels
                if kept % consumer.norm1.num_groups:
                    return False
    return True
