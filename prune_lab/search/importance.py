"""What a removal costs in importance: a score table read as additive over the units it scores.

A plan's importance lost is the sum of the importance of every scored row it removes completely. That is exactly
the LAPTOP-Diff assumption for the output-ablation loss (Zhang et al., 2024: the output loss of removing several
layers is close to the sum of their single losses, so single scores rank combinations), and the plain reading of
any other criterion.

Rows may be walker units or `+`-joined groups (`--units pairs`); their atoms must not overlap (one granularity per
criterion). An atom is *covered* by a removal when a scored row holding it is removed whole; a skip is covered by
its removed consumer, an attention block by its removed, all-scored transformer layers. A removal is assessable
only when every atom it takes is covered: no move may remove something the scores say nothing about.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from ..units import Graph, atoms_of, unknown_unit_message


@dataclass(frozen=True)
class Row:
    name: str
    atoms: frozenset[str]
    importance: float


@dataclass
class Importance:
    """Scored rows of one criterion, indexed by atom.

    Attributes:
        criterion: the criterion the rows come from.
        rows: one per scored unit or group.
    """

    criterion: str
    rows: list[Row]

    def __post_init__(self) -> None:
        self._rows_of: dict[str, list[Row]] = defaultdict(list)
        for row in self.rows:
            for atom in row.atoms:
                self._rows_of[atom].append(row)

    @property
    def total(self) -> float:
        return sum(r.importance for r in self.rows)

    def removed_rows(self, removed: frozenset[str]) -> list[Row]:
        """Rows whose atoms are all in `removed`."""
        candidates = {r.name: r for a in removed for r in self._rows_of.get(a, ())}
        return [r for r in candidates.values() if r.atoms <= removed]

    def lost(self, removed: frozenset[str]) -> float:
        """Summed importance of the rows `removed` takes out completely (exactly rounded: independent of the set's
        iteration order, so reruns agree to the last digit)."""
        return math.fsum(r.importance for r in self.removed_rows(removed))

    def uncovered(self, graph: Graph, removed: frozenset[str]) -> list[str]:
        """Atoms of `removed` no removed row accounts for (see the module docstring), in forward order."""
        covered = {a for r in self.removed_rows(removed) for a in r.atoms}
        covered |= {a for a in removed if graph[a].kind == "skip" and graph[a].consumer in removed}
        for a in removed:
            children = graph[a].children
            if graph[a].kind == "attention" and children and set(children) <= covered:
                covered.add(a)
        return sorted(removed - covered, key=lambda a: graph[a].order)


def _criterion_rows(df: pd.DataFrame, criterion: str | None, where: str) -> tuple[str, pd.DataFrame]:
    criteria = list(dict.fromkeys(df["criterion"].astype(str))) if "criterion" in df else ["(unnamed)"]
    if criterion is None:
        if len(criteria) > 1:
            raise ValueError(f"{where} holds several criteria ({', '.join(criteria)}); choose one with --criterion")
        return criteria[0], df
    if criterion not in criteria:
        raise ValueError(f"{where} has no criterion {criterion!r}; it holds: {', '.join(criteria)}")
    return criterion, df[df["criterion"].astype(str) == criterion]


def importance_from_scores(
    df: pd.DataFrame, graph: Graph, criterion: str | None = None, where: str = "scores"
) -> Importance:
    """The rows of one criterion of a score table (columns `name`, `importance`, and `criterion` if several).

    Raises:
        ValueError: several criteria and none chosen, an unknown criterion or unit name, a non-finite
            importance, or rows that overlap.
    """
    criterion, part = _criterion_rows(df, criterion, where)
    rows, owner = [], {}
    for name, value in zip(part["name"].astype(str), part["importance"].astype(float)):
        for member in name.split("+"):
            if member not in graph:
                raise ValueError(f"{where}: {unknown_unit_message(member, graph.names)} (scores of another model?)")
        if not pd.notna(value) or abs(value) == float("inf"):
            raise ValueError(f"{where}: the importance of {name} is {value}; rescore it")
        row = Row(name, atoms_of(graph, name.split("+")), float(value))
        clash = next((owner[a] for a in row.atoms if a in owner), None)
        if clash is not None:
            raise ValueError(f"{where}: rows {clash} and {name} overlap; use one --units granularity per criterion")
        owner.update(dict.fromkeys(row.atoms, name))
        rows.append(row)
    if not rows:
        raise ValueError(f"{where} has no rows for criterion {criterion!r}")
    return Importance(criterion, rows)
