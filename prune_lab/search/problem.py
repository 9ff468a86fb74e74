"""One search problem: a model, its scores, its cost model, the candidate moves and the constraints.

A *state* is the frozenset of atoms removed so far. A move is admissible in a state when it adds something,
touches no protected atom, leaves every removed atom accounted for by the scores
(:meth:`prune_lab.search.importance.Importance.uncovered`) and leaves a plan the backbone can build
(:meth:`prune_lab.backbones.Backbone.buildable`; with `expressible`, as a plain diffusers config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..backbones import backbone_of, make_plan
from ..plan import Plan
from ..units import Graph, Move
from .costs import CostModel
from .importance import Importance


@dataclass
class Problem:
    """Everything a strategy needs (see the module docstring).

    Attributes:
        unet: the teacher (real or `meta` weights).
        graph: its walk.
        importance: the scored rows.
        costs: predicted costs of removals.
        moves: candidate moves.
        protected: atoms no move may remove.
        expressible: only plans with a plain diffusers config.
        source: where the model came from (recorded in plans).
        latent: latent side the costs are counted at.
    """

    unet: nn.Module
    graph: Graph
    importance: Importance
    costs: CostModel
    moves: list[Move]
    protected: frozenset[str] = frozenset()
    expressible: bool = False
    source: str = ""
    latent: int = 64
    _valid: dict[frozenset[str], bool] = field(default_factory=dict, init=False, repr=False)

    def plan(self, removed: frozenset[str], meta: dict | None = None) -> Plan:
        """The plan that removes exactly `removed` (atoms), with the substitutes it needs."""
        keep = [u.name for u in self.graph.atoms() if u.name not in removed]
        return make_plan(
            self.unet,
            keep,
            source=self.source,
            actions=backbone_of(self.graph).removal_actions(self.graph, removed),
            meta=meta,
            graph=self.graph,
        )

    def admissible(self, removed: frozenset[str], move: Move) -> frozenset[str] | None:
        """The state after `move`, or None when the move is not admissible in state `removed`."""
        after = removed | move.atoms
        if after == removed or move.atoms & self.protected:
            return None
        if self.importance.uncovered(self.graph, after) or not self.valid(after):
            return None
        return after

    def valid(self, removed: frozenset[str]) -> bool:
        """Whether `removed` leaves a network the export can build (cached per state)."""
        if removed not in self._valid:
            self._valid[removed] = self._check(removed)
        return self._valid[removed]

    def _check(self, removed: frozenset[str]) -> bool:
        try:
            plan = self.plan(removed)
        except ValueError:
            return False
        return backbone_of(self.graph).buildable(self.unet, self.graph, removed, plan, expressible=self.expressible)
