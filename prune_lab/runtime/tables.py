"""Rendering DataFrames as text: table, markdown, csv, json (the CLI's `--format`, the Markdown reports).

Import-cheap: pandas is imported by the callers that hold a DataFrame.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "markdown", "csv", "json")


def _markdown(df: pd.DataFrame) -> str:
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def render(df: pd.DataFrame, fmt: str) -> str:
    """`df` as text in one of :data:`FORMATS`."""
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2)
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "table":
        return df.to_string(index=False)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
