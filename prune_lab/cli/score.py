"""Scoring subcommands: `score` (criteria sweeps, `--compare`) and `plot`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..backbones import granularities, walk
from ..models import load_unet
from ..plan import fingerprint
from ..scoring import (
    ScoringInputs,
    calibration_from_folder,
    calibration_from_prompts,
    denoising_batches,
    get_criterion,
    list_criteria,
    load_calibration,
    noise_scheduler,
    rank_agreement,
    read_prompts,
    read_scores,
    run_sweep,
    save_calibration,
    score_units,
    synthetic_calibration,
)
from ..scoring.calibration import load_pipeline
from ..scoring.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, SCHEDULERS
from ..scoring.results import unit_macs
from .formatting import FORMATS, render

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHOWN = ["name", "label", "kind", "criterion", "raw", "importance", "rank"]


def _calibration(args: argparse.Namespace, unet, pipe):
    """The calibration set the flags ask for (cache > image folder > synthetic > prompts, data-free)."""
    if args.calib_cache:
        return load_calibration(args.calib_cache, unet)
    if args.calib_dir:
        return calibration_from_folder(
            pipe, args.calib_dir, samples=args.samples, seed=args.seed, batch_size=args.batch_size
        )
    if args.synthetic:
        return synthetic_calibration(unet, samples=args.samples, seed=args.seed)
    if args.prompts:
        return calibration_from_prompts(
            pipe,
            read_prompts(args.prompts)[: args.samples],
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    raise ValueError(
        "taylor and ablation need calibration data: pass --calib-dir DIR, --prompts FILE, "
        "--calib-cache FILE or --synthetic"
    )


def _options(args: argparse.Namespace) -> dict:
    return {
        "skip_mode": args.skip_mode,
        "prefix_cache": not args.no_prefix_cache,
        "gradient_checkpointing": args.gradient_checkpointing,
        "clip_model": args.clip_model,
        "clip_pretrained": args.clip_pretrained,
        "clip_checkpoint": args.clip_checkpoint,
        "scheduler": args.scheduler,
        "steps": args.steps,
        "guidance": args.guidance,
        "batch_size": args.batch_size,
        "image_dir": args.save_images,
    }


def _settings(args: argparse.Namespace, unet, calib_source: str | None) -> dict:
    """What a `--resume` must match: everything that changes a score."""
    keys = (
        "units",
        "only",
        "samples",
        "timesteps",
        "batch_size",
        "seed",
        "skip_mode",
        "dtype",
        "clip_model",
        "clip_pretrained",
        "clip_checkpoint",
        "scheduler",
        "steps",
        "guidance",
        "prompts",
    )
    return {
        "model": str(args.model),
        "fingerprint": fingerprint(unet),
        "calibration": calib_source,
        **{k: getattr(args, k) for k in keys},
    }


def _inputs(args: argparse.Namespace, loaded, graph, needs: set[str]) -> tuple[ScoringInputs, str | None]:
    unet = loaded.unet
    wants_pipe = "pipeline" in needs or (
        "batches" in needs and (args.calib_dir or args.prompts) and not (args.calib_cache or args.synthetic)
    )
    pipe = load_pipeline(loaded, unet.device) if wants_pipe else None
    batches, source = None, None
    if "batches" in needs:
        calib = _calibration(args, unet, pipe)
        if args.save_calib:
            save_calibration(calib, args.save_calib)
        batches = denoising_batches(
            calib,
            noise_scheduler(pipe if pipe is not None else loaded.root),
            timesteps=args.timesteps,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        source = calib.source
    prompts = read_prompts(args.prompts)[: args.samples] if "pipeline" in needs and args.prompts else None
    inputs = ScoringInputs(unet, graph, batches, pipe, prompts, _options(args), args.seed)
    return inputs, source


def cmd_score(args: argparse.Namespace) -> int:
    if args.compare:
        tables = [(Path(p).stem, read_scores(p)) for p in args.compare]
        print(render(rank_agreement(tables).round(4), args.format))
        return 0
    for flag in ("model", "criterion", "out"):
        if not getattr(args, flag):
            raise ValueError(f"score needs --{flag} (or --compare a.csv b.csv)")
    criteria = [get_criterion(c) for c in args.criterion]
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_unet(args.model, dtype=DTYPES[args.dtype])
    loaded.unet.to(args.device or _default_device())
    graph = walk(loaded.unet)
    units = score_units(graph, args.units, args.only)
    inputs, source = _inputs(args, loaded, graph, {n for c in criteria for n in c.needs})
    table = run_sweep(
        inputs,
        units,
        args.criterion,
        args.out,
        settings=_settings(args, loaded.unet, source),
        resume=args.resume,
        macs=unit_macs(loaded.unet),
        progress=not args.quiet,
    )
    if table is not None:
        print(render(table[SHOWN], args.format))
        note = sys.stderr if args.format in ("csv", "json") else sys.stdout  # keep machine output parseable
        print(
            f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: {len(units)} units x {len(criteria)} "
            "criteria",
            file=note,
        )
    return 0


def _default_device() -> torch.device:
    from ..scoring.sweep import process_state

    return process_state().device


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plots import plot_scores

    written = plot_scores(read_scores(args.scores), args.out, value=args.value)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (taylor, ablation)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--calib-dir", help="image-text folder (images + metadata.csv/.jsonl: file_name,text)")
    src.add_argument("--calib-cache", help="latents + embeddings cache written by --save-calib")
    src.add_argument("--synthetic", action="store_true", help="Gaussian latents and embeddings (smoke tests)")
    g.add_argument("--prompts", help="prompts file, one per line: data-free calibration, and the clip prompts")
    g.add_argument("--save-calib", help="write the calibration set to this cache file for later runs")
    g.add_argument("--samples", type=int, default=8, help="calibration samples / prompts used (default 8)")
    g.add_argument("--timesteps", type=int, default=2, help="sampled timesteps per sample (default 2)")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)


def _criterion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("criteria")
    g.add_argument("--skip-mode", choices=("zero", "drop"), default="zero", help="what taking a skip out means")
    g.add_argument("--no-prefix-cache", action="store_true", help="ablation: run every unit's forward in full")
    g.add_argument("--gradient-checkpointing", action="store_true", help="taylor: less memory, more compute")
    g.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="open_clip model name or config .json")
    g.add_argument("--clip-pretrained", default=DEFAULT_CLIP_PRETRAINED, help="open_clip pretrained tag")
    g.add_argument("--clip-checkpoint", help="local open_clip checkpoint (needed offline)")
    g.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="pndm", help="sampler for generation")
    g.add_argument("--steps", type=int, default=25, help="denoising steps for generation (default 25)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--save-images", help="clip: keep every unit's generated images under this folder")


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score every unit's importance with one or more criteria")
    p.add_argument("--model", help="pipeline or U-Net folder, built-in name, or hub id")
    p.add_argument(
        "--criterion",
        nargs="+",
        metavar="NAME",
        help=f"one or more registered criteria: {', '.join(list_criteria())}",
    )
    p.add_argument("--units", choices=granularities(), default="blocks", help="granularity (default blocks)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="score only these units")
    p.add_argument("-o", "--out", type=Path, help="scores CSV to write (a JSON copy goes beside it)")
    p.add_argument("--resume", action="store_true", help="skip the units a killed run with the same settings scored")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="CSV",
        help="rank agreement (Kendall tau, Spearman) between the criteria of these score files",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this process's accelerate device)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _calibration_args(p)
    _criterion_args(p)
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("plot", help="bar charts of a scores file (one panel per criterion) + skip chart")
    p.add_argument("scores", help="scores CSV or JSON written by `prunelab score`")
    p.add_argument("-o", "--out", required=True, type=Path, help="image to write (.png, .pdf, .svg)")
    p.add_argument("--value", choices=("importance", "raw"), default="importance", help="what the bars show")
    p.set_defaults(func=cmd_plot)
