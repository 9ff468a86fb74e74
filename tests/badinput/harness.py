"""The bad-input harness (issue 14): a case is a row; running it checks the contract every bad input must meet.

The contract, for a CLI case: exit code 2, no traceback, ONE line on stderr that names the file or flag (argparse's
own usage errors print a usage block and one `error:` line; then the LAST line must name the flag), and every hashed
folder byte-for-byte as before. For a library case: the stated exception type, whose message names the argument,
and the disk unchanged. Failure messages start with a pattern tag (`TRACEBACK`, `ACCEPTED`, ...) that
`tests/badinput/tally.py` counts.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter

CLASSES = (
    "data-loss",
    "json-shape",
    "output-paths",
    "weights",
    "images",
    "numeric-flags",
    "library-types",
    "misleading-messages",
    "half-written",
    "untrusted-files",
    "bookkeeping",
)


class CaseTimeout(BaseException):  # noqa: N818  (a BaseException, so library `except Exception` cannot swallow it)
    """Raised by SIGALRM when a case runs past its limit (a bad input that was not refused early)."""


class Ctx:
    """Where a case runs: `tmp` (its own folder, always hashed), `cwd` (inside `tmp`), and named paths: the
    case's own (`add`) over the session's shared fixtures (built on first use)."""

    def __init__(self, tmp: Path, fixtures) -> None:
        self.tmp, self.cwd, self.fixtures = tmp, tmp / "cwd", fixtures
        self.local: dict[str, Path] = {"tmp": tmp, "cwd": self.cwd}

    def __getitem__(self, key: str) -> Path:
        return self.local[key] if key in self.local else self.fixtures[key]

    def add(self, key: str, path: Path) -> Path:
        self.local[key] = Path(path)
        return Path(path)

    def fmt(self, text: str) -> str:
        return text.format_map(_Lookup(self))


class _Lookup(dict):
    def __init__(self, ctx: Ctx) -> None:
        super().__init__()
        self.ctx = ctx

    def __missing__(self, key: str) -> str:
        return str(self.ctx[key])


@dataclass
class Outcome:
    """What running a case produced."""

    rc: int | None = None
    out: str = ""
    err: str = ""
    exc: BaseException | None = None
    timed_out: bool = False
    value: object = None

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.replace("\r", "\n").split("\n") if line.strip()]


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        cls: the issue-14 class (:data:`CLASSES`).
        name: short id, unique within the class.
        argv: CLI arguments (`{key}` placeholders from `Ctx.paths`); or None for a library case.
        call: library case: `call(ctx)` must raise one of `exc`.
        setup: builds the bad input under `ctx.tmp` (adds paths to `ctx.paths`).
        expect: the error line (or exception message) must contain one of these (case-insensitive; placeholders
            allowed, e.g. `{bad}` for the bad file's path; a fragment `name:KEY` means the basename of path KEY).
        also: fragments that must ALL appear too (e.g. the JSON key besides the file name).
        exc: accepted exception types of a library case.
        hashed: path keys hashed before and after, besides `tmp` and every fixture named in `argv`.
        check: extra problems after the standard verdict (e.g. "a corrected rerun succeeds"): list of messages.
        verdict: replaces the standard verdict entirely: `verdict(ctx, outcome, changes) -> list of problems`.
        timeout: seconds before the case counts as not refused early.
    """

    cls: str
    name: str
    argv: tuple[str, ...] | None = None
    call: Callable | None = None
    setup: Callable[[Ctx], None] | None = None
    expect: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    exc: tuple[type, ...] = ()
    hashed: tuple[str, ...] = ()
    check: Callable | None = None
    verdict: Callable | None = None
    timeout: int = 20
    note: str = field(default="", compare=False)

    @property
    def id(self) -> str:
        return f"{self.cls}:{self.name}"


# ---------------------------------------------------------------------------------------------------- hashing
def tree_hash(root: Path) -> dict[str, tuple]:
    """`relative path -> (kind, size, sha256)` of everything under `root` (hidden files too); {} if absent."""
    root = Path(root)
    if root.is_symlink():
        return {".": ("link", os.readlink(root))}
    if not root.exists():
        return {}
    if root.is_file():
        return {".": _file_entry(root)}
    found = {".": ("dir",)}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                found[rel] = _file_entry(path)
    return found


def _file_entry(path: Path) -> tuple:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return ("file", path.stat().st_size, h.hexdigest())


def tree_diff(before: dict, after: dict) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    out = [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k}" for k in changed]
    return out


# ---------------------------------------------------------------------------------------------------- running
def placeholders(argv: tuple[str, ...]) -> set[str]:
    keys = set()
    for arg in argv:
        keys |= {name for _, name, _, _ in Formatter().parse(arg) if name}
    return keys


def _alarm(_signum, _frame):
    raise CaseTimeout()


def route_logging() -> None:
    """Point every logging stream handler at the current stderr (as in a fresh CLI process), so library warnings
    count as stderr lines, and no handler writes to a stream an earlier capture closed."""
    import logging
    import sys

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the old, maybe closed, stream
                if "flush" in vars(handler):  # transformers / diffusers bind `flush` to the stderr of their import
                    handler.flush = sys.stderr.flush


def run_cli(argv: list[str], capfd, timeout: int) -> Outcome:
    """`prune_lab.cli.main(argv)` in this process, stdout/stderr captured at the file-descriptor level."""
    from prune_lab.cli import main

    capfd.readouterr()
    route_logging()
    outcome = Outcome()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        outcome.rc = main(argv) or 0
    except SystemExit as e:
        outcome.rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CaseTimeout:
        outcome.timed_out = True
    except BaseException as e:  # noqa: BLE001  (a traceback is what we measure)
        outcome.exc = e
        outcome.rc = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    captured = capfd.readouterr()
    outcome.out, outcome.err = captured.out, captured.err
    if outcome.exc is not None:  # what the real CLI would have printed
        outcome.err += "".join(traceback.format_exception(outcome.exc, limit=3))
    return outcome


def run_call(call: Callable, ctx: Ctx, capfd, timeout: int) -> Outcome:
    capfd.readouterr()
    route_logging()
    outcome = Outcome()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        outcome.value = call(ctx)
    except CaseTimeout:
        outcome.timed_out = True
    except BaseException as e:  # noqa: BLE001
        outcome.exc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    captured = capfd.readouterr()
    outcome.out, outcome.err = captured.out, captured.err
    return outcome


# ---------------------------------------------------------------------------------------------------- verdicts
def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def fragments(case: Case, ctx: Ctx) -> list[str]:
    out = []
    for f in case.expect:
        if f.startswith("name:"):
            out.append(Path(ctx[f[5:]]).name)
        else:
            out.append(ctx.fmt(f))
    return out


def _names(text: str, fragment: str) -> bool:
    """`fragment` occurs in `text` (case-insensitive); an identifier (`keep`, `path`) only as a whole word, so that
    Python's own `os.PathLike` does not count as naming the argument `path`."""
    if re.fullmatch(r"[A-Za-z_]\w*", fragment):
        return re.search(rf"(?<!\w){re.escape(fragment)}(?!\w)", text, re.I) is not None
    return fragment.lower() in text.lower()


def names_one(text: str, frags: list[str], also: list[str] = ()) -> bool:
    return (not frags or any(_names(text, f) for f in frags)) and all(_names(text, a) for a in also)


def _also(case: Case, ctx: Ctx) -> list[str]:
    return [ctx.fmt(a) for a in case.also]


def cli_problems(case: Case, ctx: Ctx, o: Outcome) -> list[str]:
    """The standard CLI contract; each problem starts with its pattern tag."""
    if o.timed_out:
        return [f"TIMEOUT ran over {case.timeout}s (not refused early)"]
    problems = []
    if o.exc is not None:
        problems.append(f"TRACEBACK {type(o.exc).__name__}: {_short(o.exc)}")
    elif "Traceback (most recent call last)" in o.err:
        problems.append("TRACEBACK printed on stderr")
    if o.exc is None and o.rc != 2:
        tag = "ACCEPTED" if o.rc == 0 else "EXIT-CODE"
        problems.append(f"{tag} rc={o.rc}; stderr: {_short(o.err_lines[-1] if o.err_lines else '')}")
    if o.exc is not None:
        return problems
    lines = o.err_lines
    frags = fragments(case, ctx)
    if lines and lines[0].startswith("usage:"):
        last = lines[-1]
        if not names_one(last, frags, _also(case, ctx)):
            problems.append(f"MESSAGE does not name {frags + _also(case, ctx)}: {_short(last)}")
    elif o.rc == 2:
        if len(lines) != 1:
            problems.append(f"STDERR-LINES {len(lines)} lines: {_short(' | '.join(lines[-3:]))}")
        if lines and not names_one(lines[-1], frags, _also(case, ctx)):
            problems.append(f"MESSAGE does not name {frags + _also(case, ctx)}: {_short(lines[-1])}")
    return problems


def lib_problems(case: Case, ctx: Ctx, o: Outcome) -> list[str]:
    if o.timed_out:
        return [f"TIMEOUT ran over {case.timeout}s"]
    if o.exc is None:
        return [f"ACCEPTED returned {_short(repr(o.value), 80)}"]
    if not isinstance(o.exc, case.exc):
        wanted = "/".join(t.__name__ for t in case.exc)
        return [f"WRONG-EXCEPTION {type(o.exc).__name__} (wanted {wanted}): {_short(o.exc)}"]
    frags = fragments(case, ctx)
    if not names_one(str(o.exc), frags, _also(case, ctx)):
        return [f"MESSAGE does not name {frags + _also(case, ctx)}: {_short(o.exc)}"]
    return []


def disk_problems(changes: dict[str, list[str]]) -> list[str]:
    out = []
    for key, diff in changes.items():
        if diff:
            out.append(f"DISK {key} changed: {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}")
    return out
