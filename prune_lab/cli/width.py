"""`prunelab width`: the channel-pruning baseline (torch-pruning), written in the format `apply` writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..models import load_unet
from ..scoring.calibration import (
    calibration_from_folder,
    calibration_from_prompts,
    load_calibration,
    load_pipeline,
    noise_scheduler,
    read_prompts,
    save_calibration,
    synthetic_calibration,
)
from ..width import WIDTH_CRITERIA, Target, TaylorSettings, get_width_criterion, save_width, width_prune
from .formatting import FORMATS, render


def _calibration(args: argparse.Namespace, loaded):
    """The calibration set the flags ask for (cache > image folder > synthetic > prompts) and its noise schedule."""
    unet = loaded.unet
    if args.calib_cache:
        return load_calibration(args.calib_cache, unet), noise_scheduler(loaded.root)
    if args.synthetic:
        return synthetic_calibration(unet, samples=args.samples, seed=args.seed), noise_scheduler(loaded.root)
    if not (args.calib_dir or args.prompts):
        raise ValueError(
            f"--criterion {args.criterion} needs calibration data: pass --calib-dir DIR, --prompts FILE, "
            "--calib-cache FILE or --synthetic"
        )
    pipe = load_pipeline(loaded)
    if args.calib_dir:
        calib = calibration_from_folder(
            pipe, args.calib_dir, samples=args.samples, seed=args.seed, batch_size=args.batch_size
        )
    else:
        calib = calibration_from_prompts(
            pipe, read_prompts(args.prompts)[: args.samples], seed=args.seed, batch_size=args.batch_size
        )
    return calib, noise_scheduler(pipe)


def _summary(result, out: str) -> pd.DataFrame:
    row = {
        "criterion": result.criterion,
        "target": str(result.target),
        "round_to": result.round_to,
        "ratio": round(result.ratio, 4),
        "base_params_M": round(result.base_params / 1e6, 3),
        "params_M": round(result.params / 1e6, 3),
        "params_pct": round(100 * result.params_fraction, 2),
        "layers_resized": len(result.widths),
    }
    if result.gradients is not None:
        row["taylor_timesteps"] = len(result.gradients.timesteps)
    row["out"] = out
    return pd.DataFrame([row])


def cmd_width(args: argparse.Namespace) -> int:
    target = Target.parse(args.target)  # bad flags fail before anything is loaded
    criterion = get_width_criterion(args.criterion)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite or another --out")
    taylor = TaylorSettings(args.calib_timesteps, args.timestep_threshold, args.batch_size, args.seed)
    loaded = load_unet(args.model)
    calib, scheduler = _calibration(args, loaded) if criterion.needs_gradients else (None, None)
    if calib is not None and args.save_calib:
        save_calibration(calib, args.save_calib)
    result = width_prune(
        loaded.unet,
        criterion=args.criterion,
        target=target,
        round_to=args.round_to or None,
        calibration=calib,
        scheduler=scheduler,
        taylor=taylor,
        seed=args.seed,
        progress=not args.quiet,
    )
    provenance = {"model": str(args.model), **result.summary()}
    if calib is not None:
        provenance["calibration"] = calib.source
    save_width(result.unet, loaded, args.out, provenance=provenance, overwrite=args.overwrite)
    print(render(_summary(result, args.out), args.format))
    note = sys.stderr if args.format in ("csv", "json") else sys.stdout
    print(
        f"wrote {args.out}: load it with prune_lab.load_pruned, compare it with `prunelab report --model "
        f"{args.model} --compare PRESET {args.out}`",
        file=note,
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("width", help="channel-prune a U-Net to a parameter budget (torch-pruning baseline)")
    p.add_argument("--model", required=True, help="built-in (random weights), pipeline or U-Net folder, or hub id")
    p.add_argument(
        "--criterion",
        choices=list(WIDTH_CRITERIA),
        default="magnitude",
        help="; ".join(f"{c.name}: {c.description}" for c in WIDTH_CRITERIA.values()),
    )
    p.add_argument("--target", default="params=0.5", help="budget, METRIC=FRACTION of the model (default params=0.5)")
    p.add_argument(
        "--round-to",
        type=int,
        default=8,
        help="every pruned width stays a multiple of this (default 8; 1 = only GroupNorm groups and heads)",
    )
    p.add_argument("--out", required=True, help="output folder (the format `prunelab apply` writes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("calibration (taylor: Diff-Pruning's gradient pass)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--calib-dir", help="image-text folder (images + metadata.csv/.jsonl: file_name,text)")
    src.add_argument("--calib-cache", help="latents + embeddings cache written by --save-calib (here or in score)")
    src.add_argument("--synthetic", action="store_true", help="Gaussian latents and embeddings (random-weight models)")
    src.add_argument("--prompts", help="prompts file: data-free calibration generated by the model itself")
    g.add_argument("--save-calib", help="write the calibration set to this cache file for later runs")
    g.add_argument("--samples", type=int, default=8, help="calibration samples (default 8)")
    g.add_argument(
        "--calib-timesteps",
        type=int,
        default=100,
        help="timesteps, evenly spaced and increasing (default 100; Diff-Pruning visits all 1000)",
    )
    g.add_argument(
        "--timestep-threshold",
        type=float,
        help="Diff-Pruning's timestep selection: stop once the loss drops below THR x its maximum (0.05 "
        "in the paper); default: every timestep",
    )
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_width)
