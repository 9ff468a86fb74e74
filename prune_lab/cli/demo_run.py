"""`prunelab demo-run`: the whole workflow on the built-in `demo` model, as `make demo` runs it."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from pathlib import Path

from ..runtime.tables import render
from . import types as T
from .common import check_folder


def _at_least_two(text: str) -> int:
    """An integer >= 2 (FID needs two samples)."""
    value = T.positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (FID needs two samples), got {value}")
    return value


def _path(text: str) -> Path:
    """A non-empty path flag."""
    return Path(T.non_empty(text))


def _command(args: argparse.Namespace) -> str:
    parts = ["prunelab demo-run", f"--out {shlex.quote(str(args.out))}"]
    if args.quick:
        parts.append("--quick")
    for flag in ("budget", "criterion", "distill_steps", "eval_samples"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    return " ".join(parts)


def _config(args: argparse.Namespace):
    from ..demo.job import QUICK, RunConfig
    from ..runtime.budget import parse_budget
    from ..scoring import list_criteria

    config = QUICK if args.quick else RunConfig()
    overrides = {
        "budget": args.budget,
        "plan_criterion": args.criterion,
        "distill_steps": args.distill_steps,
        "eval_samples": args.eval_samples,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    try:
        parse_budget(config.budget)  # a bad budget fails before any work
    except ValueError as e:
        raise ValueError(f"--budget {config.budget!r} is not a budget ({e})") from None
    if config.plan_criterion not in list_criteria("unet"):
        raise ValueError(
            f"unknown --criterion {config.plan_criterion!r}; choose from: {', '.join(list_criteria('unet'))}"
        )
    for name in ("distill_steps", "eval_samples"):
        if getattr(config, name) < (2 if name == "eval_samples" else 1):
            raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(config, name)}")
    return config


def cmd_demo_run(args: argparse.Namespace) -> int:
    import torch

    from ..demo.run import run_demo

    check_folder("--out", args.out, keep=True)
    check_folder("--work", args.work, keep=True)
    config = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quiet:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    result = run_demo(config, args.work, args.out, command=_command(args), progress=not args.quiet)
    steps = result.job.record_frame().drop(columns="outputs").round(1)
    shown = ["model", "colour", "shape", "colour+shape", "fid", "unet_params_M", "unet_macs_G"]
    print(render(steps, "table"))
    print(render(result.evaluation[[c for c in shown if c in result.evaluation]].round(3), "table"))
    print(f"wrote {result.report} (run folder {result.job.work})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo-run",
        help="the whole workflow on the demo model: units, scores, plots, plan, apply, distill, evaluate, report",
        description="Score every unit of the built-in demo model with every criterion, plan under a budget, apply, "
        "distil briefly, evaluate teacher / pruned / distilled and write a Markdown report with figures. "
        "Resumable: a rerun reuses every finished step of a run with the same settings and weights.",
    )
    p.add_argument("--out", type=_path, default=Path("reports/demo"), help="report folder (default reports/demo)")
    p.add_argument("--work", type=_path, default=Path(".cache/demo-run"), help="work folder (default .cache/demo-run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes that still run every step (smoke test)")
    p.add_argument("--budget", help="plan target, as `prunelab plan --target` (default params=0.6)")
    p.add_argument("--criterion", help="whose scores the plan search reads (default ablation)")
    p.add_argument("--distill-steps", type=T.positive_int, help="distillation steps (default 200; --quick 2)")
    p.add_argument(
        "--eval-samples", type=_at_least_two, help="held-out captions per evaluated model (default 128; --quick 4)"
    )
    p.add_argument("--threads", type=T.positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo_run)
