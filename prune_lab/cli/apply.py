"""`prunelab apply`: export the compact student of a plan (or a preset), initialised from the teacher."""

from __future__ import annotations

import argparse

from .check import add_check_args, run_and_print
from .common import PRESET_HELP, add_model_arg, check_folder, model_inputs, out_path


def params_m(n: int) -> float:
    return round(n / 1e6, 2)


def plan_from_args(args: argparse.Namespace, load):
    """The plan of `--keep` or `--preset`, its files read before `load()` loads the model (bad files fail first)."""
    from ..backbones import create_plan, read_importance
    from ..plan import Plan

    if args.criterion and not args.scores:
        raise ValueError("--criterion picks among the criteria of --scores; pass --scores scores.csv too")
    scores = read_importance(args.scores, args.criterion) if args.scores else None
    plan = Plan.load(args.keep) if getattr(args, "keep", None) else None
    if plan is None and not args.preset:
        raise ValueError("say what to keep: --keep plan.json or --preset NAME")
    loaded = load()
    return loaded, plan or create_plan(loaded.unet, args.preset, source=args.model, scores=scores)


def cmd_apply(args: argparse.Namespace) -> int:
    from ..formats.block import apply_plan
    from ..models import load_unet

    if args.only and not args.check:
        raise ValueError("--only picks the checks of --check; add --check")
    if args.check:
        from ..compat.checks import selected

        selected(args.only)  # an unknown check name is refused before the export
    inputs = [*model_inputs(args.model), args.keep, args.scores]
    check_folder("--out", args.out, overwrite=args.overwrite, inputs=inputs)
    if args.single_file:
        from ..formats.single_file import check_single_file_path

        check_single_file_path(args.single_file, overwrite=args.overwrite, flag="--single-file")
    loaded, plan = plan_from_args(args, lambda: load_unet(args.model))
    if args.single_file:
        from ..formats.single_file import check_plan_writable

        check_plan_writable(loaded.unet, plan)
    result = apply_plan(loaded, plan, args.out, overwrite=args.overwrite)
    what = "pipeline" if result.is_pipeline else "U-Net"
    print(
        f"wrote {what} to {result.out_dir}: U-Net params {params_m(result.teacher_params)}M -> "
        f"{params_m(result.student_params)}M ({100 * result.student_params / result.teacher_params:.1f}%)"
    )
    if result.expressible:
        print(f"format: plain diffusers; load with UNet2DConditionModel.from_pretrained('{result.out_dir / 'unet'}')")
    else:
        print(f"format: compact weights + plan; load with prune_lab.load_pruned('{result.out_dir}')")
    for consumer, (old, new) in result.rewired.items():
        print(f"skip rewired: {consumer} now receives {new} (was {old})")
    if args.single_file:
        from ..formats.single_file import write_single_file

        path = write_single_file(result.out_dir, args.single_file, overwrite=args.overwrite)
        print(f"single file: {path} (original LDM layout; from_single_file(..., config='{result.out_dir}'))")
    return run_and_print(result.out_dir, args.only, "table") if args.check else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("apply", help="export the compact U-Net of a plan, initialised from the teacher")
    add_model_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--keep", help="plan.json to apply")
    src.add_argument("--preset", help=f"shortcut for a preset plan: {PRESET_HELP}")
    p.add_argument("--scores", help="scores.csv for the SDXL presets' layer choice")
    p.add_argument("--criterion", help="which criterion's scores to use when --scores merges several")
    p.add_argument("--out", required=True, type=out_path, help="output folder (DIR/unet, or a whole pipeline)")
    p.add_argument(
        "--single-file",
        type=out_path,
        help="also write the student pipeline as one original-layout (A1111 / ComfyUI) PATH.safetensors",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder (and --single-file)")
    p.add_argument(
        "--check",
        action="store_true",
        help="then run `prunelab check` on the export (exit code 1 when a check fails; the export is kept)",
    )
    add_check_args(p)
    p.set_defaults(func=cmd_apply)
