"""What one score is about: the units of a `--units` granularity, built from graph-walker names only.

* `blocks` — every residual and attention block (BK-SDM Fig 5a);
* `transformer_layers` — every transformer layer inside the attention blocks (SDXL layer choice);
* `pairs` — the paper's groups (Fig 5b): every R-A pair (resnet j with attention j of a stage; a lone resnet
  where the stage has no attention) and the mid stage's R-A-R triplet;
* `stages` — every down / up stage and the mid stage;
* `skips` — every skip concatenation, zeroed (appendix Fig 29).

A group's name joins its members' walker names with `+`; its label joins their paper labels (`U2-R1+A1`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the `--units` choices stay import-cheap
    from ..graph import UNetGraph, Unit


@dataclass(frozen=True)
class ScoreUnit:
    """One scored thing: a walker unit or a group of them.

    Attributes:
        name: walker name, or members joined with `+`.
        label: paper-style label (display only).
        kind: walker kind, or `pair` for groups.
        members: walker names to take out together.
        params: parameters the members hold.
        substitute: taking it out needs a channel-interpolation substitute (marked `*` in plots).
        order: forward-order position of its first member.
    """

    name: str
    label: str
    kind: str
    members: tuple[str, ...]
    params: int
    substitute: bool
    order: int


def _single(unit: Unit) -> ScoreUnit:
    return ScoreUnit(
        unit.name, unit.label, unit.kind, (unit.name,), unit.params, unit.removal == "interpolate", unit.order
    )


def _group(graph: UNetGraph, names: list[str]) -> ScoreUnit:
    if len(names) == 1:
        return _single(graph[names[0]])
    units = [graph[n] for n in names]
    label = units[0].label + "".join("+" + u.label.rsplit("-", 1)[-1] for u in units[1:])
    return ScoreUnit(
        "+".join(names),
        label,
        "pair",
        tuple(names),
        sum(u.params for u in units),
        any(u.removal == "interpolate" for u in units),
        units[0].order,
    )


def _slots(graph: UNetGraph, stage: str) -> list[list[str]]:
    """Members of each slot (resnet j and attention j) of a down / up stage, in forward order."""
    resnets = [c for c in graph[stage].children if graph[c].kind == "resnet"]
    return [[r] + [a for a in (f"{stage}.attentions.{j}",) if a in graph] for j, r in enumerate(resnets)]


def _pairs(graph: UNetGraph) -> list[ScoreUnit]:
    groups = [_single(graph["mid_block"])] if "mid_block" in graph else []
    for unit in graph.of_kind("stage"):
        groups.extend(_group(graph, slot) for slot in _slots(graph, unit.name))
    return sorted(groups, key=lambda u: u.order)


def _of_kind(*kinds: str) -> Callable[[UNetGraph], list[ScoreUnit]]:
    def build(graph: UNetGraph) -> list[ScoreUnit]:
        return [_single(u) for u in graph.of_kind(*kinds)]

    return build


#: `--units` choices: granularity name -> units of a graph, in forward order.
GROUPINGS: dict[str, Callable[[UNetGraph], list[ScoreUnit]]] = {
    "blocks": _of_kind("resnet", "attention"),
    "transformer_layers": _of_kind("transformer_layer"),
    "pairs": _pairs,
    "stages": _of_kind("stage", "mid"),
    "skips": _of_kind("skip"),
}


def score_units(graph: UNetGraph, units: str = "blocks", names: list[str] | None = None) -> list[ScoreUnit]:
    """The units to score at granularity `units`, optionally only those named in `names`.

    Raises:
        ValueError: unknown granularity, a name not among the units, or no unit at all (e.g. no transformer layers).
    """
    if units not in GROUPINGS:
        raise ValueError(f"unknown --units {units!r}; choose from: {', '.join(GROUPINGS)}")
    found = GROUPINGS[units](graph)
    if names:
        by_name = {u.name: u for u in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{missing[0]!r} is not a unit of --units {units}; `prunelab blocks` lists the names")
        found = [u for u in found if u.name in set(names)]
    if not found:
        raise ValueError(f"the model has no units of kind {units!r}")
    return found
