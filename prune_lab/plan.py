"""`plan.json`: what to keep, as a versioned file; validated against a model by its backbone before anything changes.

A plan lists the units to **keep**; everything else is removed. Containers expand: a unit listed with none of its
children keeps all of them; listed with some children it keeps only those (and listing a child keeps its parent).
Per-unit `actions` say how a removed unit goes: `interpolate` (the parameter-free channel-interpolation substitute)
or, for a skip whose consumer stays, `drop` (default) or `zero`.

The format is backbone-neutral; what a plan *means* for a model (which slots survive, how skips are rewired, whether
channels agree) is the backbone's `resolve` (:mod:`prune_lab.backbones`), which raises a `ValueError` naming the unit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .runtime.atomic import write_json
from .runtime.validate import as_path, json_type, need, read_json
from .units import Graph, unknown_unit_message

PLAN_FORMAT = "prune_lab.plan"
PLAN_VERSION = 1
ACTIONS = ("interpolate", "zero", "drop")


def fingerprint(unet) -> str:
    """A short hash of a U-Net's architecture config (class + structural keys; no paths, no versions)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    blob = json.dumps({"class": type(unet).__name__, **config}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """A versioned, human-editable pruning plan.

    Attributes:
        keep: unit names to keep (graph-walker names).
        base: the base architecture: `class`, `fingerprint`, and where it came from (`source`).
        actions: per removed unit, `interpolate`, `zero` or `drop`.
        meta: free-form provenance (preset name, criterion, budget ...).
    """

    keep: list[str]
    base: dict
    actions: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "base": self.base,
            "keep": list(self.keep),
            "actions": dict(self.actions),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a failed write leaves nothing behind."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str = "plan") -> Plan:
        """A plan from its dict (as :meth:`to_dict` writes it), every key checked.

        Raises:
            TypeError: `data` is not a dict, or `where` not a string (a wrong call).
            ValueError: a key is missing or has the wrong type or value (naming `where` and the key).
        """
        if not isinstance(where, str):
            raise TypeError(f"Plan.from_dict: where (the plan's name in messages) must be a str, got {where!r}")
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a plan must be a JSON object (a dict), got {json_type(data)}")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f'{where} is not a prune_lab plan (no "format": "{PLAN_FORMAT}")')
        version = need(data, "version", int, where)
        if version != PLAN_VERSION:
            raise ValueError(f"{where} has plan version {version!r}; this prune_lab reads {PLAN_VERSION}")
        keep = need(data, "keep", list, where)
        if not all(isinstance(k, str) for k in keep):
            raise ValueError(f'{where}: "keep" must be a list of unit names (strings)')
        actions = need(data, "actions", (dict, type(None)), where, default=None) or {}
        bad = {k: v for k, v in actions.items() if v not in ACTIONS}
        if bad:
            name, value = next(iter(bad.items()))
            raise ValueError(f"{where}: action {value!r} for {name!r} is not one of {', '.join(ACTIONS)}")
        base = need(data, "base", (dict, type(None)), where, default=None) or {}
        meta = need(data, "meta", (dict, type(None)), where, default=None) or {}
        return cls(keep=keep, base=base, actions=actions, meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file (FileNotFoundError / ValueError naming the file when it is missing or malformed)."""
        path = as_path(path, "path")
        fix = "write one with `prunelab plan`"
        return cls.from_dict(read_json(path, "plan file", fix=fix), str(path))


def expand_keep(graph: Graph, keep: list[str]) -> set[str]:
    """Apply the container rule (see module docstring) and return every kept unit name."""
    for name in keep:
        if name not in graph:
            raise ValueError(unknown_unit_message(name, graph.names))
    listed = set(keep)
    kept: set[str] = set()

    def visit(name: str) -> None:
        kept.add(name)
        children = graph[name].children
        chosen = [c for c in children if c in listed or any(d in listed for d in graph.descendants(c))]
        for child in chosen or children:
            visit(child)

    for name in keep:
        visit(name)
        unit = graph[name]
        if unit.kind in graph.keeps_parent:
            kept.add(unit.parent)
    return kept
