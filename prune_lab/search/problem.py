"""One search problem: a model, its scores, its cost model, the candidate moves and the constraints.

A *state* is the frozenset of atoms removed so far. A move is admissible in a state when it adds something,
touches no protected atom, leaves every removed atom accounted for by the scores
(:meth:`prune_lab.search.importance.Importance.uncovered`) and leaves a valid plan: :func:`prune_lab.plan.resolve`
accepts it, every dropped skip leaves its consumer a channel count its GroupNorm can split, a down stage left
without slots feeds its downsampler the channels it expects, no attention block is left without transformer
layers, and with `expressible` the plan has a plain diffusers config (:func:`prune_lab.export.derive_config`:
uniform slot counts per stage, no substitutes, no dropped skips).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..export import derive_config
from ..graph import UNetGraph
from ..plan import Plan, resolve
from ..presets import make_plan
from .costs import CostModel
from .importance import Importance
from .moves import Move


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
    graph: UNetGraph
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
            self.unet, keep, source=self.source, actions=self._actions(removed), meta=meta, graph=self.graph
        )

    def _actions(self, removed: frozenset[str]) -> dict[str, str]:
        """`interpolate` for every removed channel-changing resnet whose slot (or mid stage) keeps something."""
        out = {}
        for name in removed:
            unit = self.graph[name]
            if unit.kind != "resnet" or unit.removal != "interpolate":
                continue
            if unit.stage == "mid_block":
                rest = self.graph["mid_block"].children
            else:
                rest = [f"{unit.stage}.attentions.{name.rsplit('.', 1)[1]}"]
            if any(r in self.graph and r not in removed for r in rest):
                out[name] = "interpolate"
        return out

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
        for unit in self.graph.of_kind("attention"):
            if unit.name not in removed and unit.children and set(unit.children) <= removed:
                return False
        try:
            res = resolve(self.plan(removed), self.graph)
        except ValueError:
            return False
        if not self._groups_divide(res) or not self._samplers_fed(res):
            return False
        return not self.expressible or derive_config(self.unet, res) is not None

    def _samplers_fed(self, res) -> bool:
        """A down stage left without slots passes its input straight to its downsampler: channels must agree.

        (:func:`prune_lab.plan.resolve` checks every block's input, not the downsamplers'.)
        """
        for i, stage in enumerate(res.down[:-1]):
            unit = self.graph[stage.path]
            active = not stage.level_removed and not res.down[i + 1].level_removed
            if active and not stage.kept_slots and unit.in_channels != unit.out_channels:
                return False
        return True

    def _groups_divide(self, res) -> bool:
        for stage in res.up:
            for slot in stage.kept_slots:
                if slot.resnet_kept and slot.skip_mode == "drop":
                    consumer = self.unet.get_submodule(slot.resnet)
                    kept = self.graph[slot.resnet].in_channels - self.graph[slot.skip].out_channels
                    if kept % consumer.norm1.num_groups:
                        return False
        return True
