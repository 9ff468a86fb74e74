"""The Pareto figure, drawn from the table :func:`prune_lab.search.pareto_front` returns (never from models)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..plots import _save
from ..runtime.budget import RESOURCES


def plot_front(df: pd.DataFrame, resource: str, path: str | os.PathLike) -> Path:
    """Importance lost against the resource kept (% of the unpruned model): every plan, the front, the presets.

    Raises:
        ValueError: the table has no column for `resource`.
    """
    column = f"{resource}_pct"
    if column not in df.columns:
        raise ValueError(f"the front table has no {column!r} column; compute the front for {resource}")
    presets = df[df["source"].str.startswith("preset:")]
    plans = df.drop(presets.index)
    front = plans[plans["on_front"]].sort_values(column)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(plans[column], plans["importance_lost"], s=10, color="#BBBBBB", label="plans searched")
    ax.scatter([], [], marker="*", s=120, color="#DD8452", label="presets")
    ax.plot(front[column], front["importance_lost"], "-o", ms=3, color="#4C72B0", label="Pareto front")
    for _, row in presets.iterrows():
        name = row["source"].split(":", 1)[1]
        ax.scatter(row[column], row["importance_lost"], marker="*", s=120, color="#DD8452", zorder=3)
        suffix = f" ({row['unscored']} unscored)" if row.get("unscored", 0) else ""
        ax.annotate(
            name + suffix, (row[column], row["importance_lost"]), xytext=(4, 4), textcoords="offset points", fontsize=8
        )
    ax.set_xlabel(f"{RESOURCES.get(resource).description} kept (% of the unpruned model)")
    ax.set_ylabel("importance lost (sum over removed units)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, Path(path))
