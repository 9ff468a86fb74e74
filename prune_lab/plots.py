"""Figures from score tables (never from models): BK-SDM Fig 5-style bars and the skip analysis (appendix Fig 29).

:func:`plot_scores` draws one panel per criterion with one bar per unit in U-Net (forward) order, labelled with the
paper's short labels; a unit whose removal needs the channel-interpolation substitute is marked `*`. Skip rows get
their own chart (:func:`plot_skips`), written beside the main figure as `<stem>_skips<suffix>`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .runtime.atomic import write_figure

#: Bar colour per unit kind.
KIND_COLORS = {
    "resnet": "#4C72B0",
    "attention": "#DD8452",
    "transformer_layer": "#55A868",
    "pair": "#8172B3",
    "stage": "#937860",
    "mid": "#DA8BC3",
    "skip": "#64B5CD",
}
DEFAULT_COLOR = "#8C8C8C"


def _labels(part: pd.DataFrame) -> list[str]:
    labels = part["label"] if "label" in part else part["name"]
    stars = part["substitute"].astype(bool) if "substitute" in part else [False] * len(part)
    return [f"{label}*" if star else str(label) for label, star in zip(labels, stars)]


def _panel(ax, part: pd.DataFrame, value: str, criterion: str, horizontal: bool = False) -> None:
    colors = [KIND_COLORS.get(k, DEFAULT_COLOR) for k in part.get("kind", [""] * len(part))]
    positions = range(len(part))
    metric = part["metric"].iloc[0] if "metric" in part and value == "raw" else value
    if horizontal:
        ax.barh(positions, part[value], color=colors)
        ax.set_yticks(list(positions), _labels(part), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
    else:
        ax.bar(positions, part[value], color=colors)
        ax.set_xticks(list(positions), _labels(part), rotation=90, fontsize=7)
        ax.set_ylabel(metric)
        ax.set_xlim(-0.6, len(part) - 0.4)
    ax.set_title(criterion, fontsize=9, loc="left")
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)


def _legend(ax, df: pd.DataFrame) -> None:
    from matplotlib.patches import Patch

    kinds = list(dict.fromkeys(df["kind"])) if "kind" in df else []
    if kinds:
        ax.legend(
            handles=[Patch(color=KIND_COLORS.get(k, DEFAULT_COLOR), label=k) for k in kinds],
            fontsize=7,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncol=len(kinds),
            frameon=False,
        )


def _save(fig: Figure, path: Path) -> Path:
    """Write atomically: a half-drawn file never replaces a good one."""
    return write_figure(path, fig, dpi=150, bbox_inches="tight")


def _by_criterion(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(str(c), part) for c, part in df.groupby("criterion", sort=False)]


def plot_units(df: pd.DataFrame, path: str | os.PathLike, value: str = "importance") -> Path:
    """Fig 5-style bars: one panel per criterion, units in table (forward) order, `*` = substituted."""
    panels = _by_criterion(df)
    width = max(6.0, 0.22 * max(len(p) for _, p in panels))
    fig = Figure(figsize=(width, 2.4 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (criterion, part) in zip(axes, panels):
        _panel(ax, part, value, criterion)
    _legend(axes[0], df)
    fig.suptitle(f"unit {value} (higher = more important; * = channel-interpolation substitute)", fontsize=9)
    return _save(fig, Path(path))


def plot_skips(df: pd.DataFrame, path: str | os.PathLike, value: str = "importance") -> Path:
    """Skip analysis (BK-SDM appendix Fig 29): one horizontal bar per skip connection, one panel per criterion."""
    panels = _by_criterion(df)
    height = max(2.5, 0.25 * max(len(p) for _, p in panels))
    fig = Figure(figsize=(3.8 * len(panels) + 1.0, height), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (criterion, part) in zip(axes, panels):
        _panel(ax, part, value, criterion, horizontal=True)
    fig.suptitle(f"skip connections (producer>consumer), zeroed: {value}", fontsize=9)
    return _save(fig, Path(path))


def plot_scores(df: pd.DataFrame, path: str | os.PathLike, value: str = "importance") -> list[Path]:
    """All figures of a score table: the unit bars at `path` and, when it has skip rows, the skip chart.

    The skip chart goes to `path` itself when the table holds skips only, else to `<stem>_skips<suffix>`.

    Raises:
        ValueError: an empty table or an unknown `value` column.
    """
    if df.empty:
        raise ValueError("the scores table is empty; nothing to plot")
    if value not in df.columns:
        raise ValueError(f"the scores table has no column {value!r}; plot importance or raw")
    path = Path(path)
    is_skip = df["kind"].eq("skip") if "kind" in df else pd.Series(False, index=df.index)
    written = []
    if (~is_skip).any():
        written.append(plot_units(df[~is_skip], path, value))
    if is_skip.any():
        skip_path = path if not written else path.with_name(f"{path.stem}_skips{path.suffix}")
        written.append(plot_skips(df[is_skip], skip_path, value))
    return written
