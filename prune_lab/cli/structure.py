"""Structure subcommands: `blocks` (every unit of a model) and `presets` (the published architectures that fit it)."""

from __future__ import annotations

import argparse

from ..runtime.tables import FORMATS, render
from .common import add_model_arg

BLOCK_COLUMNS = [
    "name",
    "label",
    "kind",
    "stage",
    "level",
    "in_channels",
    "out_channels",
    "params",
    "removal",
    "producer",
    "consumer",
]


def cmd_blocks(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..backbones import walk
    from ..models import load_unet

    graph = walk(load_unet(args.model, meta=True).unet)
    df = pd.DataFrame(graph.to_records())
    if args.kind:
        kinds = list(dict.fromkeys(df["kind"]))
        unknown = [k for k in args.kind if k not in kinds]
        if unknown:
            raise ValueError(f"--kind {unknown[0]!r} is not a unit kind of this model; its kinds: {', '.join(kinds)}")
        df = df[df["kind"].isin(args.kind)]
    if args.format != "json":
        df = df[BLOCK_COLUMNS].fillna("")
    print(render(df, args.format))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..report.preset_table import preset_table

    print(render(preset_table(args.model), args.format))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("blocks", help="list every prunable unit in forward order")
    add_model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--kind", nargs="+", help="only these kinds (resnet attention transformer_layer skip mid stage)")
    p.set_defaults(func=cmd_blocks)

    p = subparsers.add_parser("presets", help="published architectures available for a model, with their sizes")
    add_model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_presets)
