"""Where a file or argument enters: check its shape, and name the file (or argument) and the key when it is wrong.

Every JSON file prune_lab reads (plans, score JSON, configs, export markers) goes through :func:`read_json`, and its
keys through :func:`need`; library entry points check their path arguments with :func:`as_path`. User errors are
`FileNotFoundError` (nothing there), `ValueError` (a file of the wrong shape) or `TypeError` (a wrong Python type
handed to a library function), each naming what is wrong and how to fix it. Import-cheap: no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: JSON type names, as messages show them.
_JSON_NAMES = {
    type(None): "null",
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
}


def json_type(value: Any) -> str:
    """The JSON name of `value`'s type (`an object`, `a list`, `null` ...)."""
    if value is None:
        return "null"
    for kind in (bool, dict, list, str, int, float):
        if isinstance(value, kind):
            return _JSON_NAMES[kind]
    return type(value).__name__


def as_path(value: Any, name: str = "path") -> Path:
    """`value` as a Path; TypeError naming the argument `name` unless it is a str or os.PathLike."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        if not str(value).strip():
            raise ValueError(f"{name} must not be empty")
        return Path(value)
    raise TypeError(f"{name} must be a str or os.PathLike path, got {type(value).__name__}")


def check_input_file(path: str | os.PathLike, what: str = "file", fix: str = "") -> Path:
    """`path` as a Path if it is an existing file; FileNotFoundError if nothing is there, ValueError for a folder."""
    path, hint = Path(path), f"; {fix}" if fix else ""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; pass the file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{hint}")
    return path


def read_text(path: str | os.PathLike, what: str = "file", fix: str = "") -> str:
    """The UTF-8 text of the file at `path` (ValueError naming it when it is not UTF-8)."""
    path = check_input_file(path, what, fix)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} line {line} is not UTF-8 text; save it as UTF-8") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", *, expect: type | None = dict, fix: str = "") -> Any:
    """Parse the JSON file at `path`, refusing anything but a well-formed document whose top level is `expect`.

    Args:
        path: the file.
        what: what the file is, for messages (`plan file`, `export marker` ...).
        expect: the type of the top level (`dict`: a JSON object; None: anything).
        fix: how to get a good file, appended to every message.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a folder, not UTF-8, not JSON, nested too deeply, or a top level of the wrong type.
    """
    text = read_text(path, what, fix)
    hint = f"; {fix}" if fix else ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}){hint}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be a prune_lab file{hint}") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{what} {path} holds {json_type(data)}, not {_JSON_NAMES.get(expect, expect)}{hint}")
    return data


_MISSING = object()


def need(data: Mapping, key: str, kinds: type | tuple[type, ...], where: str, *, default: Any = _MISSING) -> Any:
    """`data[key]`, checked to be one of `kinds` (ValueError naming `where` and `key` otherwise).

    A missing key returns `default` when one is given, else is an error; `bool` never passes for `int`.
    """
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} is {json_type(data)}, not {_JSON_NAMES[dict]} with {key!r}")
    if key not in data:
        if default is not _MISSING:
            return default
        raise ValueError(f'{where}: the key "{key}" is missing')
    value = data[key]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise ValueError(f'{where}: "{key}" must be {wanted}, got {json_type(value)}')
    return value


def read_score_table(path: str | os.PathLike, required: tuple[str, ...] = ("name", "importance")):
    """A score table written by `prunelab score` (its CSV, or the JSON beside it), every row checked.

    Returns:
        A DataFrame with at least the `required` columns, at least one row, string `name`s and finite float
        `importance`s.

    Raises:
        TypeError: `path` is not a path.
        FileNotFoundError / ValueError: no such file; not UTF-8, CSV or JSON of the right shape; a required column
            missing; no rows; a name or an importance that is not a string / a finite number (the row named).
    """
    import io

    import pandas as pd

    path, what, fix = as_path(path, "path (the scores file)"), "scores file", "write it with `prunelab score`"
    if path.suffix == ".json":
        rows = need(read_json(path, what, fix=fix), "scores", list, f"{what} {path}")
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f'{what} {path}: "scores" must be a list of objects (one per unit and criterion); {fix}')
        df = pd.DataFrame(rows)
    else:
        try:
            df = pd.read_csv(io.StringIO(read_text(path, what, fix)))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{what} {path} is not a CSV table ({str(e).strip()}); {fix}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} {path} is not a score table (no column {missing[0]!r}); {fix}")
    if df.empty:
        raise ValueError(f"{what} {path} has no rows; {fix}")
    df = df.reset_index(drop=True)
    importance = pd.to_numeric(df["importance"], errors="coerce").astype(float)
    for column, bad in (
        ("name", ~df["name"].map(lambda v: isinstance(v, str) and bool(v))),
        ("importance", ~importance.between(-float("inf"), float("inf"), inclusive="neither")),
    ):
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise ValueError(
                f"{what} {path}: row {i + 1} has {column} {df[column].iloc[i]!r}, not a "
                f"{'unit name' if column == 'name' else 'finite number'}; {fix}"
            )
    df["importance"] = importance
    return df
