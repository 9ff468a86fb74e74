"""Per-unit sensitivity (BK-SDM Fig 5) and skip-connection analysis (BK-SDM appendix Fig 29) on a pipeline:
scoring inputs, score tables and their summaries (spread, groups, rank agreement as a matrix). The data (calibration
batches, prompts, how images are drawn) comes in as arguments, e.g. from :mod:`prune_lab.demo.inputs`.

Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion" (2023).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..backbones import taken_out, walk
from ..scoring import DenoisingBatch, ScoreUnit, ScoringInputs, build_scoring_inputs, run_sweep, score_units
from ..units import Graph

#: Kinds of composite units (groups of atoms); :func:`grouped` aggregates atoms only.
COMPOSITE_KINDS = ("mid", "stage", "pair", "skip_level")

# ------------------------------------------------------------------------------------------------------ set-up


def scoring_inputs(
    pipe, batches: list[DenoisingBatch], prompts: list[str], *, clip_scorer=None, sampling: Mapping, seed: int = 0
) -> ScoringInputs:
    """Inputs for every criterion (:func:`prune_lab.scoring.build_scoring_inputs`): `batches` for the data-driven
    ones, `pipe` + `prompts` for `clip`.

    Args:
        clip_scorer: a :class:`prune_lab.runtime.clip.ClipScorer` (e.g. ``load_clip("demo-clip")``).
        sampling: ``scheduler``, ``steps``, ``guidance`` of the generations (e.g. the demo's ``SAMPLING``).
    """
    options = {k: sampling[k] for k in ("scheduler", "steps", "guidance")}
    if clip_scorer is not None:
        options["scorer"] = clip_scorer
    return build_scoring_inputs(pipeline=pipe, batches=batches, prompts=list(prompts), options=options, seed=seed)


# ------------------------------------------------------------------------------------------------- sensitivity


def fig5_units(graph: Graph) -> list[ScoreUnit]:
    """BK-SDM Fig 5's units, in forward order: every residual and attention block, and the whole mid stage."""
    units = score_units(graph, "blocks") + [u for u in score_units(graph, "stages") if u.kind == "mid"]
    return sorted(units, key=lambda u: (u.order, len(u.members)))


def score_table(
    inputs: ScoringInputs, units: list[ScoreUnit], criteria: Sequence[str], *, progress: bool = False
) -> pd.DataFrame:
    """:func:`prune_lab.scoring.run_sweep` in a scratch folder: the score table (one row per criterion and unit)."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_sweep(inputs, units, list(criteria), Path(tmp) / "scores.csv", progress=progress)


def with_places(table: pd.DataFrame, graph: Graph) -> pd.DataFrame:
    """`table` plus `stage` (the stage's paper label: D1 .. M .. U4) and `level` (0 = full latent resolution) of
    each row's unit (a group: its first member)."""
    first = [graph[name.split("+")[0]] for name in table["name"]]
    return table.assign(stage=[graph[u.stage].label for u in first], level=[u.level for u in first])


def wide(table: pd.DataFrame, value: str = "importance", columns: str | Sequence[str] = "criterion") -> pd.DataFrame:
    """One row per unit (forward order, indexed by `name` and `label`), one column per criterion (and mode)."""
    out = table.pivot_table(index=["name", "label"], columns=columns, values=value, sort=False, aggfunc="first")
    out.columns.name = None
    return out


def importance_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per criterion: the most and least important unit and how far apart they are.

    `ratio` = largest / smallest importance over units with importance > 0 (NaN when fewer than two are positive).
    """
    rows = []
    for criterion, part in table.groupby("criterion", sort=False):
        most, least = part.loc[part["importance"].idxmax()], part.loc[part["importance"].idxmin()]
        positive = part.loc[part["importance"] > 0, "importance"]
        rows.append(
            {
                "criterion": criterion,
                "most": most["label"],
                "most_importance": most["importance"],
                "least": least["label"],
                "least_importance": least["importance"],
                "ratio": positive.max() / positive.min() if len(positive) > 1 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def grouped(table: pd.DataFrame, graph: Graph, by: str, within: Sequence[str] = ()) -> pd.DataFrame:
    """Importance of atoms aggregated by `stage`, `kind` or `level`, per criterion (and `within` columns).

    Composite rows (the mid stage, pairs, stages) are left out so no atom counts twice. `relative_mean` is the
    mean of importance / (the criterion's largest |importance|), which puts every criterion on one axis.

    Returns:
        columns: criterion, *within, `by`, `units`, `importance_sum`, `importance_mean`, `relative_mean`.
    """
    atoms = with_places(table[~table["kind"].isin(COMPOSITE_KINDS)], graph)
    keys = ["criterion", *within]
    scale = atoms.groupby(keys, sort=False)["importance"].transform(lambda s: s.abs().max() or 1.0)
    atoms = atoms.assign(relative=atoms["importance"] / scale)
    out = atoms.groupby([*keys, by], sort=False).agg(
        units=("name", "size"),
        importance_sum=("importance", "sum"),
        importance_mean=("importance", "mean"),
        relative_mean=("relative", "mean"),
    )
    return out.reset_index()


def agreement_matrix(agreement: pd.DataFrame, stat: str = "spearman") -> pd.DataFrame:
    """The pairs of :func:`prune_lab.scoring.rank_agreement` as a symmetric criterion x criterion matrix
    (diagonal 1)."""
    names = list(dict.fromkeys([*agreement["a"], *agreement["b"]]))
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b, value in zip(agreement["a"], agreement["b"], agreement[stat]):
        out.loc[a, b] = out.loc[b, a] = value
    return out


# ------------------------------------------------------------------------------------------------------- skips


def skip_units(graph: Graph, levels: bool = True, latent: int | None = None) -> list[ScoreUnit]:
    """Every skip concatenation, then (with `levels`) one group per resolution level holding all its skips.

    Args:
        latent: the latent side at level 0, to name a level's resolution in its label (``L0 16x16``).
    """
    singles = score_units(graph, "skips")
    if not levels:
        return singles
    groups = []
    for level in sorted({graph[u.name].level for u in singles}):
        members = [u for u in singles if graph[u.name].level == level]
        size = f" {latent // 2**level}x{latent // 2**level}" if latent else ""
        groups.append(
            ScoreUnit(
                "+".join(u.name for u in members),
                f"L{level}{size}: all {len(members)}",
                "skip_level",
                tuple(u.name for u in members),
                0,
                False,
                members[0].order,
            )
        )
    return singles + groups


def skip_sensitivity(
    inputs: ScoringInputs,
    criteria: Sequence[str] = ("ablation", "clip"),
    modes: Sequence[str] = ("zero", "drop"),
    *,
    levels: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Each skip (and each level's skips together) taken out, zeroed and dropped (BK-SDM appendix Fig 29).

    Returns:
        the score tables of every mode stacked, with `skip_mode`, `stage` and `level` columns.
    """
    units = skip_units(inputs.graph, levels, inputs.unet.config.get("sample_size"))
    tables = []
    for mode in modes:
        moded = inputs.with_options(skip_mode=mode)
        tables.append(score_table(moded, units, criteria, progress=progress).assign(skip_mode=mode))
    return with_places(pd.concat(tables, ignore_index=True), inputs.graph)


def example_removals(
    table: pd.DataFrame, criterion: str, k: int = 2, kind: str = "skip", **where
) -> dict[str, list[str]]:
    """Row label -> units to take out, for an example grid: nothing, the `k` most and the `k` least important.

    Args:
        table: a score table (e.g. :func:`skip_sensitivity`'s).
        criterion / kind / where: which rows rank (``skip_mode="zero"`` picks one mode of a skip table).
    """
    part = table[(table["criterion"] == criterion) & (table["kind"] == kind)]
    for column, value in where.items():
        part = part[part[column] == value]
    ranked = part.sort_values("importance", ascending=False, kind="stable")
    picks = [("most", row) for _, row in ranked.head(k).iterrows()]
    picks += [("least", row) for _, row in ranked.tail(k).iloc[::-1].iterrows()]
    out = {"teacher": []}
    out.update({f"{tag}: {row['label']}": row["name"].split("+") for tag, row in picks})
    return out


@torch.no_grad()
def removal_images(
    pipe, removals: Mapping[str, Iterable[str]], draw: Callable[[Any], torch.Tensor], *, skip_mode: str = "zero"
) -> torch.Tensor:
    """Images ``[R, N, 3, H, W]``: row r is `draw(pipe)` with ``removals``' r-th units taken out.

    Args:
        removals: row label -> units to take out (:func:`example_removals`).
        draw: images ``[N, 3, H, W]`` of a pipeline; it should start every call from the same initial noise, so the
            rows differ by the removals only (e.g. :func:`prune_lab.demo.inputs.caption_images`).
        skip_mode: how a skip is taken out: ``zero`` or ``drop``.
    """
    graph, rows = walk(pipe.unet), []
    for names in removals.values():
        with taken_out(pipe.unet, names, skip_mode=skip_mode, graph=graph):
            rows.append(draw(pipe))
    return torch.stack(rows)
