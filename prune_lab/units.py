"""Units: the one vocabulary every capability speaks (scores, plans, reports, plots, distillation).

A :class:`Unit` is one prunable piece of a backbone, named by its diffusers module path
(`down_blocks.1.attentions.0`, `transformer_blocks.7`); a :class:`Graph` is every unit of one model in forward
order. Only a backbone's walker (:mod:`prune_lab.backbones`) makes them; paper-style labels (D1-R1, U2-A3) are a
display column, never a key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

#: Row name for the cost no unit accounts for (embeddings, `conv_in`, the output head ...).
OTHER = "other"


@dataclass(frozen=True)
class Unit:
    """One prunable unit.

    Attributes:
        name: diffusers module path (skips: `skip:<consumer path>`).
        label: paper-style short label, for display only.
        kind: one of the backbone's unit kinds (U-Net: resnet, attention, transformer_layer, skip, mid, stage).
        stage: module path of the stage / stack it belongs to (`down_blocks.0`, `mid_block`, `transformer_blocks`).
        parent: the enclosing unit, None for top-level units.
        order: position in forward order.
        level: resolution level it runs at (0 = full latent resolution).
        in_channels / out_channels: channels in and out (an up-stage resnet's input includes its skip).
        params: parameter count of the module (0 for skips).
        removal: how it goes: `remove` (identity), `interpolate` (channel-interpolation substitute), `zero`
            (a skip: zeroed in analysis, dropped in export) or `members` (a group of other units).
        producer / consumer: for skips, the module whose output is concatenated and the module taking it.
        children: names of the units directly inside this one.
    """

    name: str
    label: str
    kind: str
    stage: str
    parent: str | None
    order: int
    level: int
    in_channels: int
    out_channels: int
    params: int
    removal: str
    producer: str | None = None
    consumer: str | None = None
    children: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["children"] = list(self.children)
        return d


def unknown_unit_message(name: str, known) -> str:
    """`unknown unit 'x'; did you mean 'y'?` (or where to list the names)."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; `prunelab blocks --model M` lists the valid names"
    return f"unknown unit {name!r}{hint}"


@dataclass
class Graph:
    """Every unit of one model, in forward order. Backbones subclass it to add their routing (e.g. U-Net skips).

    Class attributes:
        backbone: the registered name of the backbone that walked it (:func:`prune_lab.backbones.get_backbone`).
        atom_kinds: the kinds a plan lists individually (the others are groups of them).
        keeps_parent: kinds whose listing in a plan keeps their parent too (a transformer layer its attention block).
    """

    backbone: ClassVar[str] = ""
    atom_kinds: ClassVar[tuple[str, ...]] = ()
    keeps_parent: ClassVar[tuple[str, ...]] = ()

    units: list[Unit]
    _by_name: dict[str, Unit] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {u.name: u for u in self.units}

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, name: str) -> Unit:
        if name not in self._by_name:
            raise ValueError(unknown_unit_message(name, self._by_name))
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def of_kind(self, *kinds: str) -> list[Unit]:
        return [u for u in self.units if u.kind in kinds]

    def descendants(self, name: str) -> list[str]:
        """Every unit inside `name` (recursively), in forward order."""
        out: list[str] = []
        for child in self[name].children:
            out.append(child)
            out.extend(self.descendants(child))
        return sorted(out, key=lambda n: self._by_name[n].order)

    def atoms(self) -> list[Unit]:
        return self.of_kind(*self.atom_kinds)

    def to_records(self) -> list[dict]:
        return [u.to_dict() for u in self.units]


@dataclass(frozen=True)
class Move:
    """One candidate removal for plan search (a backbone's :meth:`~prune_lab.backbones.Backbone.moves` makes them).

    Attributes:
        kind: how it was built (backbone-specific: `pair`, `level`, `mid`, `attention` ...).
        members: walker names it removes (containers stand for everything inside them).
        atoms: every atom it removes.
        order: forward-order position of its first member (for stable tie-breaking).
    """

    kind: str
    members: tuple[str, ...]
    atoms: frozenset[str]
    order: int

    @property
    def name(self) -> str:
        return "+".join(self.members)


def atoms_of(graph: Graph, names: Iterable[str]) -> frozenset[str]:
    """Every atom inside or equal to `names` (a container brings its members along)."""
    out: set[str] = set()
    for name in names:
        out.update(n for n in (name, *graph.descendants(name)) if graph[n].kind in graph.atom_kinds)
    return frozenset(out)
