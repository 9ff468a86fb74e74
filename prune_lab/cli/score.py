"""Scoring subcommands: `score` (criteria sweeps, `--compare`) and `plot`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..backbones import granularities
from ..runtime import samplers
from ..runtime.dtypes import DTYPE_NAMES
from ..runtime.tables import FORMATS, render
from ..scoring.options import AblationOptions, ClipOptions
from ..scoring.registry import list_criteria
from .calibration import add_calibration_args, calibration_source
from .common import MODEL_HELP, check_device, check_figure_path, check_file, library_bars, out_path
from .types import device, finite_float, positive_int

SHOWN = ["name", "label", "kind", "criterion", "raw", "importance", "rank"]


def _options(args: argparse.Namespace) -> dict:
    """The criterion settings of the flags (each criterion takes the ones its options class declares)."""
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


def cmd_score(args: argparse.Namespace) -> int:
    if args.compare:
        from ..scoring import compare_score_files

        print(render(compare_score_files(args.compare).round(4), args.format))
        return 0
    from ..scoring import score_model

    for flag in ("model", "criterion", "out"):
        if not getattr(args, flag):
            raise ValueError(f"score needs --{flag} (or --compare a.csv b.csv)")
    check_file("-o", args.out)
    if args.out.suffix == ".json":
        raise ValueError(f"-o {args.out}: give the CSV to write (score writes its JSON copy beside it as .json)")
    if args.save_calib:
        check_file("--save-calib", args.save_calib)
    check_device(args.device)
    if args.scheduler is not None:  # else checked once the pipeline names its default
        samplers.check_steps(args.scheduler, args.steps)
    if args.clip_checkpoint:
        from ..runtime.clip import check_clip_checkpoint

        check_clip_checkpoint(Path(args.clip_checkpoint))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with library_bars(not args.quiet):  # --quiet: no loading bars either, so an error is the only line
        run = score_model(
            args.model,
            args.criterion,
            args.out,
            units=args.units,
            only=args.only,
            calibration=calibration_source(args),
            timesteps=args.timesteps,
            options=_options(args),
            dtype=args.dtype,
            device=args.device,
            resume=args.resume,
            progress=not args.quiet,
        )
    if run.table is not None:
        print(render(run.table[SHOWN], args.format))
        note = sys.stderr if args.format in ("csv", "json") else sys.stdout  # keep machine output parseable
        print(
            f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: {run.units} units x {len(run.criteria)} "
            "criteria",
            file=note,
        )
        if run.calibration:
            print(f"calibration: {run.calibration}", file=note)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plots import plot_scores
    from ..scoring import read_scores

    check_figure_path(args.out, "-o")

    written = plot_scores(read_scores(args.scores), args.out, value=args.value)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = add_calibration_args(
        p,
        "calibration (taylor, ablation)",
        prompts_help="prompts file, one per line: data-free calibration, and the clip prompts",
        exclusive_prompts=False,
    )
    g.add_argument("--timesteps", type=positive_int, default=2, help="sampled timesteps per sample (default 2)")


def _criterion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("criteria")
    g.add_argument(
        "--skip-mode", choices=("zero", "drop"), default=AblationOptions.skip_mode, help="what taking a skip out means"
    )
    g.add_argument("--no-prefix-cache", action="store_true", help="ablation: run every unit's forward in full")
    g.add_argument("--gradient-checkpointing", action="store_true", help="taylor: less memory, more compute")
    g.add_argument("--clip-model", help="open_clip model name or config .json (default: the CLIP loader's)")
    g.add_argument("--clip-pretrained", help="open_clip pretrained tag (default: the CLIP loader's)")
    g.add_argument("--clip-checkpoint", help="local open_clip checkpoint (needed offline)")
    g.add_argument(
        "--scheduler",
        choices=samplers.names(),
        default=ClipOptions.scheduler,
        help="sampler for generation (default: pndm for DDPM-style pipelines as BK-SDM, flow-euler for SD3 / Flux, "
        "dpm for Sana)",
    )
    g.add_argument(
        "--steps",
        type=positive_int,
        default=ClipOptions.steps,
        help=f"denoising steps for generation (default {ClipOptions.steps})",
    )
    g.add_argument(
        "--guidance",
        type=finite_float,
        default=ClipOptions.guidance,
        help=f"classifier-free guidance scale (default {ClipOptions.guidance})",
    )
    g.add_argument("--save-images", help="clip: keep every unit's generated images under this folder")


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score every unit's importance with one or more criteria")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--criterion",
        nargs="+",
        metavar="NAME",
        help=f"one or more registered criteria: {', '.join(list_criteria())}",
    )
    p.add_argument("--units", choices=granularities(), default="blocks", help="granularity (default blocks)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="score only these units")
    p.add_argument("-o", "--out", type=out_path, help="scores CSV to write (a JSON copy goes beside it)")
    p.add_argument("--resume", action="store_true", help="skip the units a killed run with the same settings scored")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="CSV",
        help="rank agreement (Kendall tau, Spearman) between the criteria of these score files",
    )
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1 ... (default: this process's accelerate device)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _calibration_args(p)
    _criterion_args(p)
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("plot", help="bar charts of a scores file (one panel per criterion) + skip chart")
    p.add_argument("scores", help="scores CSV or JSON written by `prunelab score`")
    p.add_argument("-o", "--out", required=True, type=out_path, help="image to write (.png, .pdf, .svg)")
    p.add_argument("--value", choices=("importance", "raw"), default="importance", help="what the bars show")
    p.set_defaults(func=cmd_plot)
