"""`prunelab demo-run`: the whole workflow on a built-in demo model (`demo`, as `make demo` runs it, or `demo-dit`)."""

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


#: `--model` choices -> the default `--out` (import-cheap: :data:`prune_lab.demo.job.DEMO_MODELS` holds the same).
DEFAULT_OUT = {"demo": Path("reports/demo"), "demo-dit": Path("reports/demo-dit")}


def _command(args: argparse.Namespace) -> str:
    parts = ["prunelab demo-run", *([f"--model {args.model}"] if args.model != "demo" else [])]
    parts.append(f"--out {shlex.quote(str(args.out))}")
    if args.quick:
        parts.append("--quick")
    for flag in ("budget", "criterion", "distill_steps", "eval_samples"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    return " ".join(parts)


def _config(args: argparse.Namespace):
    from ..demo.job import default_config
    from ..demo.run import criteria
    from ..models import load_unet
    from ..runtime.budget import parse_budget

    config = default_config(args.model, quick=args.quick)
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
    names = criteria(load_unet(args.model, meta=True).unet)
    if config.plan_criterion not in names:
        raise ValueError(f"unknown --criterion {config.plan_criterion!r}; choose from: {', '.join(names)}")
    for name in ("distill_steps", "eval_samples"):
        if getattr(config, name) < (2 if name == "eval_samples" else 1):
            raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(config, name)}")
    return config


def cmd_demo_run(args: argparse.Namespace) -> int:
    import torch

    from ..demo.run import run_demo
    from ..demo.run_eval import cost_columns

    args.out = args.out if args.out is not None else DEFAULT_OUT[args.model]
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
    result = run_demo(config, args.work, args.out, command=_command(args), progress=not args.quiet, model=args.model)
    steps = result.job.record_frame().drop(columns="outputs").round(1)
    shown = ["model", "colour", "shape", "colour+shape", "fid", *cost_columns(result.evaluation, whole=False)]
    print(render(steps, "table"))
    print(render(result.evaluation[[c for c in shown if c in result.evaluation]].round(3), "table"))
    print(f"wrote {result.report} (run folder {result.job.work})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo-run",
        help="the whole workflow on a demo model: units, scores, plots, plan, apply, distill, evaluate, report",
        description="Score every unit of a built-in demo model (the demo U-Net pipeline, or the demo-dit transformer "
        "one) with every criterion that applies, plan under a budget, apply, distil briefly, evaluate teacher / "
        "pruned / distilled and write a Markdown report with figures. Resumable: a rerun reuses every finished step "
        "of a run with the same settings and weights.",
    )
    p.add_argument(
        "--model",
        choices=tuple(DEFAULT_OUT),
        default="demo",
        help="the demo model to start from: demo (U-Net, default) or demo-dit (SD3 transformer, flow matching)",
    )
    p.add_argument(
        "--out", type=_path, help="report folder (default reports/demo; reports/demo-dit with --model demo-dit)"
    )
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
