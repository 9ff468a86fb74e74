"""Figures from score tables: Fig 5-style unit bars, the skip chart, and their errors."""

from __future__ import annotations

import pandas as pd
import pytest

from prune_lab.plots import _labels, plot_scores


def _table(kinds: list[str], criteria=("magnitude", "ablation")) -> pd.DataFrame:
    rows = [
        {
            "name": f"u{i}",
            "label": f"L{i}",
            "kind": kind,
            "substitute": i == 1,
            "criterion": c,
            "metric": "m",
            "raw": float(i + j),
            "importance": float(i * (j + 1)),
        }
        for j, c in enumerate(criteria)
        for i, kind in enumerate(kinds)
    ]
    return pd.DataFrame(rows)


def test_unit_bars_and_skip_chart_are_written(tmp_path):
    df = _table(["resnet", "attention", "skip", "skip"])
    written = plot_scores(df, tmp_path / "fig.png")
    assert written == [tmp_path / "fig.png", tmp_path / "fig_skips.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_skip_only_table_goes_to_the_given_path(tmp_path):
    assert plot_scores(_table(["skip", "skip"]), tmp_path / "s.svg", value="raw") == [tmp_path / "s.svg"]
    assert (tmp_path / "s.svg").read_text().startswith("<?xml")


def test_substitutes_are_starred_in_labels():
    assert _labels(_table(["resnet", "resnet"], ("a",))) == ["L0", "L1*"]


def test_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_scores(pd.DataFrame(columns=["name", "criterion", "importance"]), tmp_path / "f.png")
    with pytest.raises(ValueError, match="no column 'loss'"):
        plot_scores(_table(["resnet"]), tmp_path / "f.png", value="loss")
