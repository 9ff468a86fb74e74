"""The compatibility checks: a registry of what users do with a student next, each run on tiny inputs on the CPU.

A check is a name, a one-line description, `applies(export) -> reason or None` (None: it applies; a reason: not
applicable, and why) and `run(export, tmp)`, which returns on success and raises when the student does not work
there (the exception's message is the reason). :func:`run_checks` runs them and returns one row per check: `ok`,
`fails: reason` or `not applicable: reason`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from .export import Export

#: Modules whose import registers the built-in checks, in table order.
BUILTIN_CHECKS = (
    "prune_lab.compat.pipeline_checks",
    "prune_lab.compat.controlnet_check",
    "prune_lab.compat.lora",
    "prune_lab.compat.ip_adapter",
    "prune_lab.compat.runtime_checks",
)
OK, FAILS, NOT_APPLICABLE = "ok", "fails", "not applicable"


@dataclass(frozen=True)
class Check:
    """One downstream use: `applies(export)` is None or why not; `run(export, tmp)` raises when it breaks."""

    name: str
    description: str
    applies: Callable[[Export], str | None]
    run: Callable[[Export, Path], None]


def _load_builtin() -> None:
    for module in BUILTIN_CHECKS:
        importlib.import_module(module)


#: Registered checks, by name (the rows of `prunelab check`).
CHECKS: Registry[Check] = Registry("compatibility check", loader=_load_builtin, hint="`prunelab check --help`")


def register_check(name: str, description: str, applies: Callable[[Export], str | None]):
    """Decorator: register `run(export, tmp)` as the check `name`."""

    def wrap(run: Callable[[Export, Path], None]):
        CHECKS.register(name, Check(name, description, applies, run))
        return run

    return wrap


def always(export: Export) -> str | None:
    """`applies` of a check every export can take."""
    return None


def needs_pipeline(export: Export) -> str | None:
    """`applies` of a check that needs the whole pipeline (text encoder, VAE ...)."""
    if export.pipeline_class is None:
        return (
            "a bare U-Net export (no model_index.json): pipelines need the teacher's other parts; apply to a pipeline"
        )
    return None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


@dataclass(frozen=True)
class Outcome:
    """One row: `status` is :data:`OK`, :data:`FAILS` or :data:`NOT_APPLICABLE`; `reason` says why (not for ok)."""

    check: str
    status: str
    reason: str
    seconds: float

    @property
    def result(self) -> str:
        """The table cell: `ok`, `fails: reason` or `not applicable: reason`."""
        return self.status if self.status == OK else f"{self.status}: {self.reason}"


def run_check(check: Check, export: Export, tmp: Path) -> Outcome:
    """Run one check (a failure is an outcome, never an exception)."""
    start = time.perf_counter()
    why = check.applies(export)
    if why is not None:
        return Outcome(check.name, NOT_APPLICABLE, why, 0.0)
    folder = tmp / check.name
    folder.mkdir(parents=True)
    try:
        check.run(export, folder)
    except Exception as e:  # noqa: BLE001 - any error is what the user would hit: the row fails with it
        if isinstance(e, NotApplicable):
            return Outcome(check.name, NOT_APPLICABLE, str(e), time.perf_counter() - start)
        return Outcome(check.name, FAILS, _reason(e), time.perf_counter() - start)
    return Outcome(check.name, OK, "", time.perf_counter() - start)


class NotApplicable(Exception):
    """Raised by a check that finds out while running that it cannot apply here (a missing toolchain)."""


def table_order() -> list[str]:
    """Every check's name, in table order (by :data:`BUILTIN_CHECKS` module, then registration; others last)."""
    rank = {module: i for i, module in enumerate(BUILTIN_CHECKS)}
    names = CHECKS.names()
    return sorted(names, key=lambda n: rank.get(CHECKS.get(n).run.__module__, len(rank)))


def selected(names: Iterable[str] | None) -> list[Check]:
    """The checks named (all, in table order, for None). Raises ValueError naming an unknown one."""
    return [CHECKS.get(n) for n in (table_order() if names is None else names)]


def run_checks(
    export: Export, tmp: Path, names: Iterable[str] | None = None, *, progress: bool = False
) -> pd.DataFrame:
    """Run the checks `names` (all by default) on `export`; one row each: check, result, status, reason, seconds.

    Args:
        tmp: an empty scratch folder (each check gets its own subfolder).
        progress: show a tqdm bar.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for check in tqdm(selected(names), desc="checks", disable=not progress):
        out = run_check(check, export, tmp)
        rows.append(
            {
                "check": out.check,
                "result": out.result,
                "status": out.status,
                "reason": out.reason,
                "seconds": round(out.seconds, 2),
            }
        )
    return pd.DataFrame(rows)
