"""What a removal saves: per-unit costs from the reporter's one profiled forward, and the exact check.

:class:`CostModel` predicts a removal's params / MACs (and latency, from per-unit timings) by subtracting the
*own* cost of every atom removed from the whole model's: a unit's module cost minus that of the units nested in
it (an attention block without its transformer layers). Two things that are not atoms are added where they go:

* a skip dropped while its consumer stays prunes the consumer's input channels for it (`conv1`, `conv_shortcut`
  and `norm1`: the exact weight slices for params, the channel share of their MACs);
* removing an innermost level also removes the downsampler that led into it and the upsampler of its up stage,
  and a kept mid stage then runs at the finer resolution: its MACs and time grow 4x per level removed (counted
  as linear in the tokens; self-attention scores grow faster, which the exact count catches).

Substitutes are parameter-free and their channel interpolation counts no MACs (thop convention), so the model is
close to exact; the search still never trusts it for a plan it writes: :func:`exact_costs` builds the compact
student (:func:`prune_lab.build_student`) and profiles it with :func:`prune_lab.report.profile_unet`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch.nn as nn

from ..backbones import Compacted, backbone_of, build_student
from ..plan import Plan
from ..report import Profile, profile_unet
from ..units import Graph

#: Resources the profiled forward gives: name -> (profile -> whole-model value).
PROFILED: dict[str, Callable[[Profile], float]] = {
    "params": lambda p: p.params,
    "macs": lambda p: p.macs,
    "macs_with_attention": lambda p: p.macs_with_attention,
}


def profile_costs(profile: Profile) -> dict[str, float]:
    """Whole-model value of every profiled resource."""
    return {name: float(get(profile)) for name, get in PROFILED.items()}


def _params_of(unet: nn.Module) -> Callable[[str], float]:
    return lambda path: float(sum(p.numel() for p in unet.get_submodule(path).parameters()))


def module_costs(unet: nn.Module, profile: Profile) -> dict[str, Callable[[str], float]]:
    """Resource -> (module path -> its cost in the profiled forward)."""
    macs, attn = profile.module_macs, profile.module_attention_macs
    return {
        "params": _params_of(unet),
        "macs": lambda path: float(macs.get(path, 0)),
        "macs_with_attention": lambda path: float(macs.get(path, 0) + attn.get(path, 0)),
    }


@dataclass
class CostModel:
    """Additive cost prediction for a set of removed atoms.

    Attributes:
        base: resource -> whole unpruned model.
        own: resource -> atom -> what removing it saves (skips: saved when dropped with the consumer kept).
        levels: (level index, its atoms) for the levels that can go whole, innermost first.
        level_extra: resource -> level index -> samplers saved when the level goes.
        mid: the mid stage's atoms (they run 4x the tokens per level removed).
        spatial: resources that grow with the tokens (all but params).
    """

    graph: Graph
    base: dict[str, float]
    own: dict[str, dict[str, float]]
    levels: list[tuple[int, frozenset[str]]] = field(default_factory=list)
    level_extra: dict[str, dict[int, float]] = field(default_factory=dict)
    mid: frozenset[str] = frozenset()
    spatial: tuple[str, ...] = ()

    @property
    def resources(self) -> list[str]:
        return list(self.base)

    def saved(self, removed: frozenset[str]) -> dict[str, float]:
        """Resource -> amount `removed` saves."""
        counted = [a for a in removed if self.graph[a].kind != "skip" or self.graph[a].consumer not in removed]
        gone = [i for i, atoms in self.levels if atoms <= removed]
        out = {}
        for r, own in self.own.items():
            out[r] = sum(own.get(a, 0.0) for a in counted) + sum(self.level_extra.get(r, {}).get(i, 0.0) for i in gone)
            if gone and r in self.spatial:
                out[r] -= (4 ** len(gone) - 1) * sum(own.get(a, 0.0) for a in self.mid - removed)
        return out

    def estimate(self, removed: frozenset[str]) -> dict[str, float]:
        """Resource -> predicted amount left after `removed`."""
        saved = self.saved(removed)
        return {r: self.base[r] - saved[r] for r in self.base}


def build_cost_model(
    unet: nn.Module,
    graph: Graph,
    profile: Profile,
    extra: Mapping[str, tuple[float, Callable[[str], float]]] | None = None,
) -> CostModel:
    """A :class:`CostModel` from the teacher's profiled forward.

    Args:
        unet: the teacher (real or `meta` weights).
        graph: its walk.
        profile: :func:`prune_lab.report.profile_unet` of it (module-level MACs included).
        extra: more resources, name -> (whole-model value, module path -> cost), e.g. measured latency.
    """
    per_module = {**module_costs(unet, profile), **{k: v[1] for k, v in (extra or {}).items()}}
    base = {**profile_costs(profile), **{k: float(v[0]) for k, v in (extra or {}).items()}}
    backbone = backbone_of(graph)
    attributed = {resource: backbone.unit_costs(unet, graph, resource, cost) for resource, cost in per_module.items()}
    own = {resource: a.own for resource, a in attributed.items()}
    level_extra = {resource: a.extra for resource, a in attributed.items()}
    first = next(iter(attributed.values()))
    spatial = tuple(r for r in per_module if r != "params")
    return CostModel(graph, base, own, first.groups, level_extra, first.grows, spatial)


def exact_costs(unet: nn.Module, plan: Plan, latent: int) -> tuple[dict[str, float], Compacted]:
    """Params and MACs of the compact student of `plan`, from the reporter's profiled forward (not estimated)."""
    compacted = build_student(unet, plan)
    return profile_costs(profile_unet(compacted.student, latent)), compacted
