"""Structure subcommands: `blocks`, `presets`, `apply` (`plan` lives in :mod:`prune_lab.cli.plan`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.tables import FORMATS, render

#: Help of every `--preset` flag (the preset names live with the presets; listing them here would import torch).
PRESET_HELP = "a published architecture: `prunelab presets --model M` lists the ones that fit M, with their sizes"

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


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="built-in (sd-v1, sd-v2-base, sd-v2, sdxl), pipeline or U-Net folder, or hub id"
    )


def cmd_blocks(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..backbones import walk
    from ..models import load_unet

    graph = walk(load_unet(args.model, meta=True).unet)
    df = pd.DataFrame(graph.to_records())
    if args.kind:
        df = df[df["kind"].isin(args.kind)]
    if args.format != "json":
        df = df[BLOCK_COLUMNS].fillna("")
    print(render(df, args.format))
    return 0


def _params_m(n: int) -> float:
    return round(n / 1e6, 2)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..report.preset_table import preset_table

    print(render(preset_table(args.model), args.format))
    return 0


def _plan_from_args(args: argparse.Namespace, unet):
    from ..backbones import create_plan, read_importance
    from ..plan import Plan

    scores = read_importance(args.scores, args.criterion) if args.scores else None
    if getattr(args, "keep", None):
        return Plan.load(args.keep)
    if not args.preset:
        raise ValueError("say what to keep: --keep plan.json or --preset NAME")
    return create_plan(unet, args.preset, source=args.model, scores=scores)


def cmd_apply(args: argparse.Namespace) -> int:
    from ..formats.block import apply_plan
    from ..models import load_unet

    loaded = load_unet(args.model)
    plan = _plan_from_args(args, loaded.unet)
    result = apply_plan(loaded, plan, args.out, overwrite=args.overwrite)
    what = "pipeline" if result.is_pipeline else "U-Net"
    print(
        f"wrote {what} to {result.out_dir}: U-Net params {_params_m(result.teacher_params)}M -> "
        f"{_params_m(result.student_params)}M ({100 * result.student_params / result.teacher_params:.1f}%)"
    )
    if result.expressible:
        print(f"format: plain diffusers; load with UNet2DConditionModel.from_pretrained('{result.out_dir / 'unet'}')")
    else:
        print(f"format: compact weights + plan; load with prune_lab.load_pruned('{result.out_dir}')")
    for consumer, (old, new) in result.rewired.items():
        print(f"skip rewired: {consumer} now receives {new} (was {old})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("blocks", help="list every prunable unit in forward order")
    _model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--kind", nargs="+", help="only these kinds (resnet attention transformer_layer skip mid stage)")
    p.set_defaults(func=cmd_blocks)

    p = subparsers.add_parser("presets", help="published architectures available for a model, with their sizes")
    _model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_presets)

    p = subparsers.add_parser("apply", help="export the compact U-Net of a plan, initialised from the teacher")
    _model_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--keep", help="plan.json to apply")
    src.add_argument("--preset", help=f"shortcut for a preset plan: {PRESET_HELP}")
    p.add_argument("--scores", help="scores.csv for the SDXL presets' layer choice")
    p.add_argument("--criterion", help="which criterion's scores to use when --scores merges several")
    p.add_argument("--out", required=True, type=Path, help="output folder (DIR/unet, or a whole pipeline)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_apply)
