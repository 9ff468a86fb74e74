"""A finished study's results from its work folder: per-model values, paired differences, costs, importance lost
per arm under every scored criterion, and its rank correlation with post-retraining quality."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .stats import paired_difference, permutation_test

#: Every function here takes the :class:`prune_lab.study.run.Study` of a finished run (``study``; not imported,
#: since the run imports this module).


def per_prompt(study) -> dict[str, dict[str, list[float]]]:
    """Model key -> metric value (``metric:value``) -> per-prompt values (a one-element list for set metrics)."""
    records = {key: json.loads(study.measured(key).read_text())["values"] for key in study.models()}
    return {key: {k: np.atleast_1d(v).tolist() for k, v in values.items()} for key, values in records.items()}


def model_table(values: dict[str, dict[str, list[float]]], costs: list[dict]) -> pd.DataFrame:
    """One row per model: its costs, then each value's mean and (per-prompt values) standard error."""
    by_key = {row["key"]: row for row in costs}
    rows = []
    for key, model in values.items():
        row = {"model": key, **{k: v for k, v in by_key.get(key, {}).items() if k != "key"}}
        for name, v in model.items():
            row[name] = float(np.mean(v))
            if len(v) > 1:
                row[f"{name}_se"] = float(np.std(v, ddof=1) / math.sqrt(len(v)))
        rows.append(row)
    return pd.DataFrame(rows)


def pairs(study) -> list[tuple[str, str]]:
    """The compared pairs ``(a, b)``: each arm against the teacher, against its student before retraining, and
    against the first arm."""
    keys = list(study.models())
    arms = [k for k in keys if k.startswith("arm:")]
    out = [(a, "teacher") for a in arms]
    out += [(a, f"before:{arm.plan.text}") for a, arm in zip(arms, study.arms) if f"before:{arm.plan.text}" in keys]
    return out + [(a, arms[0]) for a in arms[1:]]


def differences(values: dict[str, dict[str, list[float]]], compared: list[tuple[str, str]]) -> pd.DataFrame:
    """``a - b`` for every per-prompt value and pair, with the paired standard error."""
    rows = []
    for a, b in compared:
        for name, va in values[a].items():
            if len(va) > 1:
                rows.append({"value": name, "a": a, "b": b, **paired_difference(va, values[b][name])})
    return pd.DataFrame(rows, columns=["value", "a", "b", "difference", "se", "n"])


def importance_lost(study) -> pd.DataFrame:
    """One row per arm and scored criterion: the importance its plan removes (sum over removed scored units) and
    its share of the criterion's total."""
    from ..backbones import walk
    from ..models import load_unet
    from ..plan import Plan, expand_keep
    from ..scoring import read_scores
    from ..search import importance_from_scores

    graph = walk(load_unet(study.config.model, meta=True).unet)
    atoms = {u.name for u in graph.atoms()}
    rows = []
    for criterion in study.config.scored():
        where = str(study.scores(criterion))
        importance = importance_from_scores(read_scores(where), graph, criterion, where)
        for arm in study.arms:
            plan = Plan.load(study.trained(arm) / "plan.json")
            lost = importance.lost(frozenset(atoms - expand_keep(graph, plan.keep)))
            total = importance.total
            rows.append(
                {
                    "arm": arm.name,
                    "criterion": criterion,
                    "lost": lost,
                    "lost_pct": 100 * lost / total if total else None,
                }
            )
    return pd.DataFrame(rows, columns=["arm", "criterion", "lost", "lost_pct"])


def correlations(study, table: pd.DataFrame, lost: pd.DataFrame, value: str) -> pd.DataFrame:
    """Spearman's rho between importance lost and `value` after retraining, per criterion, with its permutation
    p-value, over the arms retrained like the first one (same init and objective: only the plan differs)."""
    first = study.arms[0]
    group = [a.name for a in study.arms if (a.init, a.losses) == (first.init, first.losses)]
    quality = table.set_index("model")[value]
    rows = []
    for criterion, part in lost.groupby("criterion", sort=False):
        part = part.set_index("arm").loc[group]
        test = permutation_test(part["lost"].to_numpy(), quality.loc[[f"arm:{a}" for a in group]].to_numpy())
        rows.append({"criterion": criterion, "value": value, "arms": len(group), **test})
    return pd.DataFrame(rows, columns=["criterion", "value", "arms", "rho", "p", "n", "exact"])


def losses(study) -> dict[str, pd.DataFrame]:
    """Each arm's retraining loss log (``losses.csv`` of the distill run; arms without one are left out)."""
    out = {}
    for arm in study.arms:
        path = study.work / "arms" / arm.slug / "losses.csv"
        if path.is_file():
            out[arm.name] = pd.read_csv(path)
    return out


def collect(study) -> dict:
    """Everything the report shows, from the work folder of a finished study."""
    from dataclasses import asdict

    from .metrics import get_metric

    values = per_prompt(study)
    costs = json.loads(study.costs_path().read_text())["rows"]
    table = model_table(values, costs)
    primary_metric = study.config.metrics[0]
    primary = f"{primary_metric}:{get_metric(primary_metric).values[0]}"
    lost = importance_lost(study) if study.config.scored() else pd.DataFrame(columns=["arm", "criterion", "lost"])
    return {
        "config": {**asdict(study.config), "arms": [a.name for a in study.arms]},
        "primary": primary,
        "higher_is_better": get_metric(primary_metric).higher_is_better[primary.split(":", 1)[1]],
        "models": table,
        "differences": differences(values, pairs(study)),
        "importance": lost,
        "correlation": correlations(study, table, lost, primary) if len(lost) else pd.DataFrame(),
        "per_prompt": values,
        "losses": losses(study),
    }
