"""Score tables: building, writing (CSV + JSON, atomically), reading, and rank agreement between criteria.

One row per (criterion, unit), units in forward order within each criterion. Columns: `name` (graph-walker
name, or members joined with `+`), `label`, `kind`, `params`, `macs` (multiply-accumulates of one forward at the
model's sample size, when :mod:`prune_lab.report` provides per-unit counts; empty otherwise), `substitute`
(taking it out needs a channel-interpolation substitute), `criterion`, `metric` (name of the raw metric), `raw`,
`importance` (higher = more important), `rank` (1 = most important within the criterion), then criterion extras
(`loss_increase`, `clip_baseline`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import pandas as pd

from ..runtime.atomic import write_text
from ..runtime.validate import read_score_table
from .groups import ScoreUnit

COLUMNS = ["name", "label", "kind", "params", "macs", "substitute", "criterion", "metric", "raw", "importance", "rank"]
REQUIRED = ("name", "criterion", "importance")


def build_table(
    units: list[ScoreUnit],
    records: Mapping[tuple[str, str], dict],
    criteria: list[tuple[str, str]],
    macs: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The score table.

    Args:
        units: scored units, in forward order.
        records: `(criterion, unit name) -> {"raw", "importance", "extras"}` for every pair.
        criteria: `(criterion, metric)` in output order.
        macs: per walker unit MACs (groups sum their members), or None.
    """
    rows = []
    for criterion, metric in criteria:
        for u in units:
            rec = records[(criterion, u.name)]
            unit_macs = sum(macs.get(m, 0) for m in u.members) if macs else None
            rows.append(
                {
                    "name": u.name,
                    "label": u.label,
                    "kind": u.kind,
                    "params": u.params,
                    "macs": unit_macs,
                    "substitute": u.substitute,
                    "criterion": criterion,
                    "metric": metric,
                    "raw": rec["raw"],
                    "importance": rec["importance"],
                    **rec.get("extras", {}),
                }
            )
    df = pd.DataFrame(rows)
    df["macs"] = df["macs"].astype("Int64")
    df.insert(
        COLUMNS.index("rank"),
        "rank",
        df.groupby("criterion", sort=False)["importance"].rank(ascending=False, method="first").astype(int),
    )
    return df


def write_scores(df: pd.DataFrame, path: str | os.PathLike, meta: dict | None = None) -> tuple[Path, Path]:
    """Write `path` (CSV) and the same rows as JSON beside it (`{"meta": ..., "scores": [...]}`), atomically."""
    path = Path(path)
    json_path = path.with_suffix(".json")
    write_text(path, df.to_csv(index=False))
    records = json.loads(df.to_json(orient="records"))
    write_text(json_path, json.dumps({"meta": meta or {}, "scores": records}, indent=1) + "\n")
    return path, json_path


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """A score table written by :func:`write_scores` (CSV or its JSON).

    Raises:
        FileNotFoundError / ValueError: missing file, or not a score table.
    """
    return read_score_table(path, REQUIRED)


def _series(tables: list[tuple[str, pd.DataFrame]]) -> dict[str, pd.Series]:
    out = {}
    for source, df in tables:
        for criterion, part in df.groupby("criterion", sort=False):
            key = f"{source}:{criterion}" if len(tables) > 1 else str(criterion)
            key = next(k for k in (key, *(f"{key}#{n}" for n in range(2, len(tables) + 2))) if k not in out)
            out[key] = part.set_index("name")["importance"].astype(float)
    return out


def rank_agreement(tables: list[tuple[str, pd.DataFrame]], *, p_values: bool = False) -> pd.DataFrame:
    """Kendall tau and Spearman rho between every two criteria across the given `(source, table)` pairs.

    Units are matched by name; only units present in both are compared. With `p_values`, each statistic's two-sided
    p-value too (`kendall_p`, `spearman_p`, scipy's).

    Raises:
        ValueError: fewer than two criteria, or two criteria without two common units.
    """
    from scipy.stats import kendalltau, spearmanr

    series = _series(tables)
    if len(series) < 2:
        raise ValueError("--compare needs two criteria: pass two score files, or one holding several criteria")
    rows = []
    for (a, sa), (b, sb) in combinations(series.items(), 2):
        common = sa.index.intersection(sb.index)
        if len(common) < 2:
            raise ValueError(f"{a} and {b} share {len(common)} unit(s); score them with the same --units")
        tau, rho = kendalltau(sa[common], sb[common]), spearmanr(sa[common], sb[common])
        row = {"a": a, "b": b, "units": len(common)}
        row.update(kendall_tau=float(tau.statistic), spearman=float(rho.statistic))
        if p_values:
            row.update(kendall_p=float(tau.pvalue), spearman_p=float(rho.pvalue))
        rows.append(row)
    return pd.DataFrame(rows)


def compare_score_files(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """:func:`rank_agreement` between the criteria of score files (each named by its file stem).

    Raises:
        FileNotFoundError / ValueError: a missing file or not a score table; fewer than two criteria in all.
    """
    return rank_agreement([(Path(p).stem, read_scores(p)) for p in paths])


def unit_macs(unet, graph=None) -> dict[str, int] | None:
    """Per-unit MACs (thop convention, batch 1 at the model's sample size) from :mod:`prune_lab.report`'s
    profiled meta forward; None, leaving the `macs` column empty, where that module is not available."""
    try:
        from ..report import profile_unet, unit_table
    except ImportError:
        return None
    from ..backbones import backbone_for, walk

    table = unit_table(graph or walk(unet), profile_unet(unet, backbone_for(unet).latent_size(unet)))
    return {name: int(macs) for name, macs in zip(table["name"], table["macs"])}
