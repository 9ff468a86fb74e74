"""`prunelab`: the command line. Subcommands parse, call the library, write and format; they never compute.

Each module in :data:`COMMANDS` exposes `register(subparsers)`, which adds its subcommands and sets
`func` on them. Building the parser (and so every `--help`) is import-cheap: the modules import torch, diffusers
and the library inside their `func`, and take flag choices and defaults from import-cheap registries and
vocabularies only (a test checks it).

The validated user errors the library raises (:data:`USER_ERRORS`: `ValueError`, `FileNotFoundError`,
`FileExistsError`) become one line on stderr and exit code 2; anything else (a `KeyError`, a `TypeError` ...) is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "prune_lab.cli.structure",
    "prune_lab.cli.apply",
    "prune_lab.cli.check",
    "prune_lab.cli.plan",
    "prune_lab.cli.score",
    "prune_lab.cli.report",
    "prune_lab.cli.evaluate",
    "prune_lab.cli.distill",
    "prune_lab.cli.progressive",
    "prune_lab.cli.width",
    "prune_lab.cli.demo",
    "prune_lab.cli.demo_run",
    "prune_lab.cli.study",
)
#: Exceptions that are validated user errors: one line on stderr, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def build_parser() -> argparse.ArgumentParser:
    """The `prunelab` parser with every subcommand (imports neither torch nor diffusers)."""
    parser = argparse.ArgumentParser(prog="prunelab", description="Find, cut and retrain diffusion backbone blocks.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit code (2 and one line on stderr for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        print(f"prunelab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
