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

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..graph import ATOM_KINDS, SKIP_PREFIX, UNetGraph, unknown_unit_message


@dataclass(frozen=True)
class Move:
    """One candidate removal.

    Attributes:
        kind: how it was built (see the module docstring).
        members: walker names it removes (containers stand for everything inside them).
        atoms: every atom (resnet, attention, transformer layer, skip) it removes.
        order: forward-order position of its first member (for stable tie-breaking).
    """

    kind: str
    members: tuple[str, ...]
    atoms: frozenset[str]
    order: int

    @property
    def name(self) -> str:
        return "+".join(self.members)


def atoms_of(graph: UNetGraph, names: Iterable[str]) -> frozenset[str]:
    """Every atom inside or equal to `names` (an attention block brings its transformer layers)."""
    out: set[str] = set()
    for name in names:
        out.update(n for n in (name, *graph.descendants(name)) if graph[n].kind in ATOM_KINDS)
    return frozenset(out)


def _move(graph: UNetGraph, kind: str, members: list[str]) -> Move:
    members = [m for m in members if m in graph]
    return Move(kind, tuple(members), atoms_of(graph, members), min(graph[m].order for m in members))


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


def protected_atoms(graph: UNetGraph, keep_units: Iterable[str] = (), never_remove: Iterable[str] = ()) -> frozenset:
    """Atoms no move may remove.

    Args:
        keep_units: exact walker names; each protects itself and everything inside it (a transformer layer
            also protects its attention block, which cannot go without it).
        never_remove: unit kinds (`attention`, `skip` ...) or shell-style patterns over names
            (`up_blocks.3.*`, `*attentions.0`).

    Raises:
        ValueError: an unknown name (with the closest one) or a kind / pattern that matches nothing.
    """
    names: set[str] = set()
    for name in keep_units:
        if name not in graph:
            raise ValueError(f"--keep-units: {unknown_unit_message(name, graph.names)}")
        names.add(name)
    for token in never_remove:
        matched = [u.name for u in graph.units if u.kind == token or fnmatch.fnmatchcase(u.name, token)]
        if not matched:
            raise ValueError(
                f"--never-remove {token!r} matches no unit; give a kind ({', '.join(ATOM_KINDS)}) or a pattern "
                "over the names `prunelab blocks` lists, e.g. 'up_blocks.3.*'"
            )
        names.update(matched)
    protected = set(atoms_of(graph, names))
    protected.update(graph[n].parent for n in protected if graph[n].kind == "transformer_layer")
    return frozenset(protected)
