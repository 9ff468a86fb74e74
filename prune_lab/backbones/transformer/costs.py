"""Cost attribution and search moves of a transformer: what removing each block or branch saves, and what may go.

Per-unit figures come from one profiled step (:mod:`prune_lab.runtime.counting`, the family's call in
:mod:`.spec`): a block saves its own cost minus its branches' (counted separately), a branch its module's cost. The
MAC attribution is exact for block removals except SD3's new last block, which also sheds its context MLP (the
search's exact check catches the difference). Moves are every block and every branch of a kept block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ...units import Move, atoms_of
from ..base import UnitCosts
from .compaction import derive_config, resolve
from .graph import BLOCK, TransformerGraph


def unit_costs(graph: TransformerGraph, cost: Callable[[str], float]) -> UnitCosts:
    """What removing each atom saves, given `cost(module path)` from one profiled step."""
    own = {}
    for unit in graph.atoms():
        own[unit.name] = cost(unit.name) - sum(cost(c) for c in unit.children)
    return UnitCosts(own, [], {})


def candidate_moves(graph: TransformerGraph) -> list[Move]:
    """One move per block (with its branches) and one per branch, in forward order."""
    moves = [Move(u.kind, (u.name,), atoms_of(graph, [u.name]), u.order) for u in graph.atoms()]
    return sorted(moves, key=lambda m: (m.order, -len(m.atoms)))


def buildable(model: nn.Module, graph: TransformerGraph, removed: frozenset[str], plan, *, expressible=False) -> bool:
    """Whether the plan removing `removed` resolves (no kept block without branches, a block left, DiT's head
    block kept or shared) and, with `expressible`, has a stock config."""
    if any(u.name not in removed and u.children and set(u.children) <= removed for u in graph.of_kind(BLOCK)):
        return False  # a kept block without branches: a plan cannot say that (it is the block's removal)
    try:
        res = resolve(plan, graph)
    except ValueError:
        return False
    return not expressible or derive_config(model, res) is not None
