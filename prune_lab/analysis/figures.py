"""Figures of the analysis tables (they take DataFrames and tensors of results, never models, and return
``matplotlib.figure.Figure`` objects that a notebook shows and a script can save)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..plots import DEFAULT_COLOR
from .tradeoffs import pareto_mask


def plot_grouped(df: pd.DataFrame, by: str, value: str = "relative_mean", title: str = "") -> Figure:
    """Grouped bars of a :func:`grouped` table: one group per `by` value (table order), one bar per criterion."""
    pivot = df.pivot_table(index=by, columns="criterion", values=value, sort=False)
    fig = Figure(figsize=(max(5.0, 0.7 * len(pivot) + 2), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(pivot.columns)
    x = np.arange(len(pivot))
    for i, criterion in enumerate(pivot.columns):
        ax.bar(x + (i - (len(pivot.columns) - 1) / 2) * width, pivot[criterion], width, label=str(criterion))
    ax.set_xticks(x, [str(g) for g in pivot.index])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel(by)
    ax.set_ylabel(value)
    ax.set_title(title or f"{value} by {by}", fontsize=9, loc="left")
    ax.legend(fontsize=7, frameon=False, ncol=len(pivot.columns))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_matrix(matrix: pd.DataFrame, title: str = "") -> Figure:
    """A square agreement matrix (:func:`agreement_matrix`) as an annotated heatmap on [-1, 1]."""
    fig = Figure(figsize=(1.1 * len(matrix) + 1.8, 1.0 * len(matrix) + 0.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix.to_numpy(dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix)), matrix.index)
    for (i, j), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if abs(value) > 0.6 else "k")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9, loc="left")
    return fig


def plot_skip_modes(table: pd.DataFrame, value: str = "importance", kind: str = "skip") -> Figure:
    """Skip analysis (appendix Fig 29): one panel per criterion, one row per skip (or level group) of `kind`,
    one bar per skip mode (zeroed / dropped); level in the row label."""
    part = table[table["kind"] == kind]
    criteria, modes = list(dict.fromkeys(part["criterion"])), list(dict.fromkeys(part["skip_mode"]))
    rows = part.drop_duplicates("name")
    fig = Figure(figsize=(3.6 * len(criteria) + 1.2, max(2.2, 0.28 * len(rows) * len(modes) ** 0.5 + 1.0)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(criteria), squeeze=False, sharey=True)[0]
    y, height = np.arange(len(rows)), 0.8 / len(modes)
    for ax, criterion in zip(axes, criteria):
        for i, mode in enumerate(modes):
            values = part[(part["criterion"] == criterion) & (part["skip_mode"] == mode)].set_index("name")[value]
            ax.barh(y + (i - (len(modes) - 1) / 2) * height, values.reindex(rows["name"]), height, label=mode)
        metric = part.loc[part["criterion"] == criterion, "metric"].iloc[0] if value == "raw" else value
        ax.set_title(criterion, fontsize=9, loc="left")
        ax.set_xlabel(metric)
        ax.axvline(0, color="black", lw=0.6)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"L{lv} {lab}" for lv, lab in zip(rows["level"], rows["label"])], fontsize=7)
    axes[0].invert_yaxis()
    axes[-1].legend(title="skip", fontsize=7, frameon=False)
    return fig


def plot_image_grid(images: torch.Tensor, rows: Sequence[str], columns: Sequence[str] = (), title: str = "") -> Figure:
    """Images ``[R, N, 3, H, W]`` in [0, 1] as an R x N grid, rows labelled on the left, columns on top."""
    n_rows, n_cols = images.shape[:2]
    fig = Figure(figsize=(0.9 * n_cols + 1.8, 0.9 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, c in np.ndindex(n_rows, n_cols):
        ax = axes[r, c]
        ax.imshow(images[r, c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0 and c < len(columns):
            ax.set_title(columns[c], fontsize=6)
    for r, label in enumerate(rows):
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


KIND_MARKERS = {"teacher": ("*", "#C44E52"), "preset": ("s", "#DD8452"), "search": ("o", "#4C72B0")}


def plot_tradeoffs(
    df: pd.DataFrame,
    quality: str,
    costs: Sequence[str] = ("params_M", "macs_G"),
    *,
    error: str | None = None,
    higher_is_better: bool = True,
    log: bool = False,
) -> Figure:
    """Quality against each cost of a :func:`plan_tradeoffs` table: one point per model (marker by kind), the
    Pareto front (no model cheaper and better) joined by a line, optional error bars from column `error`."""
    fig = Figure(figsize=(5.0 * len(costs), 3.8), layout="constrained")
    for ax, cost in zip(fig.subplots(1, len(costs), squeeze=False)[0], costs):
        for kind, part in df.groupby("kind", sort=False):
            marker, color = KIND_MARKERS.get(kind, ("o", DEFAULT_COLOR))
            yerr = part[error] if error else None
            ax.errorbar(part[cost], part[quality], yerr=yerr, fmt=marker, color=color, ms=7, capsize=2, label=kind)
        stagger = df[cost].rank(method="first").astype(int) % 3  # neighbours' labels on different lines
        for (_, row), k in zip(df.iterrows(), stagger):
            offset = (4, 3 - 9 * k)
            ax.annotate(row["plan"], (row[cost], row[quality]), xytext=offset, textcoords="offset points", fontsize=7)
        front = df[pareto_mask(df, cost, quality, higher_is_better)].sort_values(cost)
        ax.plot(front[cost], front[quality], "-", color="#55A868", lw=1, zorder=0, label="Pareto front")
        ax.set_xlabel(cost)
        ax.set_ylabel(quality)
        ax.set_yscale("symlog" if log else "linear", **({"linthresh": 1e-4} if log else {}))
        ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig
