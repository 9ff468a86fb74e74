"""`prunelab check`: run the compatibility matrix on an export and print it (`ok` / `fails: reason` / `not
applicable: reason` per downstream use).

Exit code: 0 when no row fails (rows that do not apply are not failures), 1 when a row fails, 2 for bad input (a
folder that is not an export, an unknown check name).
"""

from __future__ import annotations

import argparse

from ..runtime.tables import FORMATS
from .common import library_bars
from .types import non_empty

#: Exit code when at least one check fails.
FAILED = 1


def run_and_print(folder, only: list[str] | None, fmt: str) -> int:
    """Open the export `folder`, run the checks `only` (all for None), print the table; the exit code."""
    import tempfile
    from pathlib import Path

    from ..compat import open_export, run_checks
    from ..compat.checks import FAILS, selected
    from ..runtime.tables import render

    selected(only)  # unknown names refused before anything loads
    with library_bars(False):
        export = open_export(folder)
        with tempfile.TemporaryDirectory(prefix="prunelab-check-") as tmp:
            table = run_checks(export, Path(tmp), only, progress=True)
    print(render(table if fmt == "json" else table[["check", "result"]], fmt))
    return FAILED if (table["status"] == FAILS).any() else 0


def cmd_check(args: argparse.Namespace) -> int:
    return run_and_print(args.dir, args.only, args.format)


def add_check_args(p) -> None:
    """`--only` (shared by `check` and `apply --check`)."""
    p.add_argument(
        "--only",
        nargs="+",
        type=non_empty,
        metavar="CHECK",
        help="run only these checks (the rows of `prunelab check`; default: all)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="does an export work with img2img, inpainting, ControlNet, LoRA, IP-Adapter, compile, casting ...?",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir", type=non_empty, help="an export folder of `prunelab apply` (or a diffusers pipeline / U-Net folder)"
    )
    add_check_args(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), markdown, csv or json")
    p.set_defaults(func=cmd_check)
