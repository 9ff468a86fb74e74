"""`prunelab`: the command line. Subcommands parse, call the library, write and format; they never compute.

Each module in :data:`COMMANDS` exposes `register(subparsers)`, which adds its subcommands and sets
`func` on them. Library errors (`ValueError`, `FileNotFoundError`, `FileExistsError`) become one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "prune_lab.cli.structure",
    "prune_lab.cli.plan",
    "prune_lab.cli.score",
    "prune_lab.cli.report",
    "prune_lab.cli.evaluate",
    "prune_lab.cli.distill",
    "prune_lab.cli.width",
    "prune_lab.cli.demo",
    "prune_lab.cli.demo_run",
)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunelab", description="Find, cut and retrain diffusion U-Net blocks.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"prunelab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
