"""Presets and plans for any backbone: `create_plan(model, preset)`, `make_plan(model, keep)`, `list_presets()`.

Presets are registered by the backbones (:data:`~prune_lab.backbones.base.PRESETS`); this module applies them to a
model through its backbone, and writes the result as a :class:`~prune_lab.plan.Plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..plan import Plan, expand_keep, fingerprint
from ..runtime.validate import read_score_table
from ..units import Graph
from .base import PRESETS, Preset, backbone_for


def list_presets(family: str | None = None) -> list[str]:
    """Registered preset names (only those for `family`, when given)."""
    return [n for n, p in PRESETS.items() if family is None or family in p.families]


def get_preset(name: str) -> Preset:
    """The preset registered as `name` (ValueError with the list otherwise)."""
    return PRESETS.get(name)


def model_family(model) -> str:
    """The preset family of `model`, from its backbone."""
    return backbone_for(model).family(model)


def make_plan(
    model,
    keep,
    *,
    source: str,
    actions: dict | None = None,
    meta: dict | None = None,
    graph: Graph | None = None,
) -> Plan:
    """A plan keeping `keep` (listed in forward order) for `model`.

    Raises:
        TypeError: `keep` is not a list (or set, tuple) of unit names, or `source` not a string.
    """
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Iterable) or not all(isinstance(k, str) for k in keep):
        raise TypeError(f"make_plan: keep must be a list of unit names (str), got {keep!r:.80}")
    if not isinstance(source, str):
        raise TypeError(f"source must be a string (where the model came from), got {type(source).__name__}")
    graph = graph or backbone_for(model).walk(model)
    keep = set(keep)
    surplus = sorted(expand_keep(graph, keep) - keep - {u.name for u in graph.units if u.kind not in graph.atom_kinds})
    if surplus:
        raise ValueError(
            f"the keep list implies {surplus[0]} (a kept transformer layer keeps its attention block; "
            "an attention block kept alone keeps all its layers); remove or keep both together"
        )
    ordered = [u.name for u in graph.units if u.name in keep]
    base = {"class": type(model).__name__, "fingerprint": fingerprint(model), "source": source}
    return Plan(keep=ordered, base=base, actions=dict(actions or {}), meta=dict(meta or {}))


def create_plan(model, preset: str, *, source: str, scores: Mapping[str, float] | None = None) -> Plan:
    """The plan of a registered preset for `model`.

    Raises:
        TypeError: `preset` not a name, `source` not a string, `scores` not a mapping of unit name -> importance.
        ValueError: unknown preset, or a preset for another model family.
    """
    if not isinstance(preset, str):
        raise TypeError(f"create_plan: preset must be a preset name (str), got {preset!r:.80}")
    if not isinstance(source, str):
        raise TypeError(f"create_plan: source must be a string (where the model came from), got {source!r:.80}")
    if scores is not None and not isinstance(scores, Mapping):
        raise TypeError(
            f"create_plan: scores must be a mapping of unit name -> importance (read_importance(path) reads a "
            f"scores file), got {type(scores).__name__}"
        )
    spec = get_preset(preset)
    family = model_family(model)
    if family not in spec.families:
        raise ValueError(
            f"preset {preset!r} is for {'/'.join(spec.families)} models, this one is {family}; "
            f"presets for it: {', '.join(list_presets(family))}"
        )
    graph = backbone_for(model).walk(model)
    keep = spec.build(graph, scores)
    meta = {"preset": preset, "layer_choice": "scores" if scores else "first"}
    return make_plan(model, keep, source=source, meta=meta, graph=graph)


def read_importance(path, criterion: str | None = None) -> dict[str, float]:
    """`name -> importance` from a scores CSV (columns `name`, `importance`, as `prunelab score` writes).

    Args:
        path: the CSV.
        criterion: which criterion's rows to use when the file merges several (column `criterion`).
    """
    if criterion is not None and not isinstance(criterion, str):
        raise TypeError(f"criterion must be a criterion name (str) or None, got {type(criterion).__name__}")
    df = read_score_table(path)
    criteria = sorted(df["criterion"].dropna().astype(str).unique()) if "criterion" in df.columns else []
    if criterion is not None:
        if criterion not in criteria:
            raise ValueError(
                f"{path} has no scores of criterion {criterion!r} (--criterion); it holds: {', '.join(criteria)}"
            )
        df = df[df["criterion"] == criterion]
    elif len(criteria) > 1:
        raise ValueError(f"{path} holds several criteria ({', '.join(criteria)}); pick one with --criterion")
    return dict(zip(df["name"], df["importance"]))
