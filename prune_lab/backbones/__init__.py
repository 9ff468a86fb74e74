"""Backbones: one subpackage per model family behind one interface (:class:`~.base.Backbone`).

Capabilities call the generic functions here, which dispatch on the model's class (or the graph's backbone):
:func:`walk`, :func:`taken_out`, :func:`resolve`, :func:`build_student`, and the presets (:func:`create_plan`,
:func:`make_plan`, :func:`list_presets`). To add a family, add a subpackage that subclasses `Backbone`, registers an
instance in :data:`BACKBONES` and its presets in :data:`PRESETS`, and list it in :data:`~.base.BUILTIN_BACKBONES`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..units import Graph
from .base import (
    BACKBONES,
    PRESETS,
    Backbone,
    Compacted,
    Preset,
    architectures,
    backbone_for,
    backbone_of,
    feature_scopes,
    get_backbone,
    granularities,
    instantiate,
    model_class,
)
from .presets import create_plan, get_preset, list_presets, make_plan, model_family, read_importance


def _check_plan(plan) -> None:
    from ..plan import Plan

    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan (Plan.load(path), Plan.from_dict(d)), got {type(plan).__name__}")


def walk(model) -> Graph:
    """Every prunable unit of `model`, in forward order (its backbone's walker)."""
    return backbone_for(model).walk(model)


def taken_out(model, names: Iterable[str], *, skip_mode: str = "zero", graph: Graph | None = None):
    """Reversibly take `names` out of `model` (a context manager; see :meth:`Backbone.taken_out`)."""
    return backbone_for(model).taken_out(model, names, skip_mode=skip_mode, graph=graph)


def resolve(plan, graph: Graph, fingerprint: str | None = None):
    """`plan` validated against `graph` by the backbone that walked it."""
    _check_plan(plan)
    return backbone_of(graph).resolve(plan, graph, fingerprint)


def build_student(model, plan) -> Compacted:
    """The compact student of `plan` for `model` (nothing is written)."""
    _check_plan(plan)
    return backbone_for(model).build_student(model, plan)


def build_architecture(name: str, *, meta: bool = False, seed: int = 0):
    """A built-in architecture (any backbone's) with random (seeded) weights, or on the `meta` device."""
    builders = architectures()
    if name not in builders:
        raise ValueError(f"unknown architecture {name!r}; built-ins are: {', '.join(builders)}")
    return builders[name].build(name, meta=meta, seed=seed)


__all__ = [
    "BACKBONES",
    "PRESETS",
    "Backbone",
    "Compacted",
    "Preset",
    "architectures",
    "backbone_for",
    "backbone_of",
    "build_architecture",
    "build_student",
    "create_plan",
    "feature_scopes",
    "get_backbone",
    "get_preset",
    "granularities",
    "instantiate",
    "list_presets",
    "make_plan",
    "model_class",
    "model_family",
    "read_importance",
    "resolve",
    "taken_out",
    "walk",
]
