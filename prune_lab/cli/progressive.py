"""`prunelab progressive`: SSD-1B's progressive removal: score, remove, distil from the teacher, K rounds."""

from __future__ import annotations

import argparse

from ..runtime.tables import FORMATS, render
from ..scoring.options import AblationOptions
from ..scoring.registry import list_criteria
from . import types as T
from .common import MODEL_HELP, check_device, check_folder, model_inputs, out_path
from .distill import add_training_args, config_from_args

SCHEDULES = ("geometric", "linear")
#: Recipe settings progressive sets itself for each round.
PER_ROUND = ("teacher", "student", "data", "out", "max_steps", "resume", "progress")
SHOWN = ["round", "budget_fraction", "params_pct", "macs_pct", "units_removed", "importance_removed", "loss", "feat"]


def _calibration(args: argparse.Namespace):
    from ..scoring.inputs import CalibrationSource

    return CalibrationSource(
        cache=args.calib_cache,
        folder=args.calib_dir,
        synthetic=args.synthetic,
        prompts=args.prompts,
        samples=args.calib_samples,
        seed=args.seed or 0,
        batch_size=args.calib_batch_size,
    )


def config_of(args: argparse.Namespace):
    """The :class:`~prune_lab.distill.progressive.ProgressiveConfig` of the flags."""
    from ..distill.progressive import ProgressiveConfig

    recipe = config_from_args(argparse.Namespace(**{**vars(args), "teacher": args.model, "student": "", "out": ""}))
    training = {
        k: getattr(recipe, k)
        for k in vars(args)
        if k in recipe.__dataclass_fields__ and getattr(args, k) is not None and k not in PER_ROUND
    }
    training["flip"] = recipe.flip
    options = {"skip_mode": args.skip_mode, "prefix_cache": not args.no_prefix_cache}
    return ProgressiveConfig(
        model=args.model,
        data=args.data,
        out=str(args.out),
        target=args.target,
        rounds=args.rounds,
        criterion=args.criterion,
        steps_per_round=args.steps_per_round,
        schedule=args.schedule,
        **({"strategy": args.strategy} if args.strategy else {}),  # else the plan search's default
        expressible=args.expressible,
        units=args.units,
        calibration=_calibration(args),
        timesteps=args.timesteps,
        options=options,
        device=args.device,
        training=training,
        progress=not args.no_progress,
    )


def cmd_progressive(args: argparse.Namespace) -> int:
    from ..distill.progressive import Progressive

    check_folder("--out", args.out, inputs=[*model_inputs(args.model), args.data], resumable=True)
    check_device(args.device)
    cfg = config_of(args)
    result = Progressive(cfg).run()
    print(render(result.table[SHOWN], args.format))
    last = result.table.iloc[-1]
    print(
        f"wrote {args.out}: {cfg.rounds} rounds (rounds.csv, rounds.md); the student in {result.student} has "
        f"{last['params_pct']}% of the teacher's params and {last['macs_pct']}% of its MACs "
        f"(load with prune_lab.load_pruned('{result.student}'))"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "progressive",
        help="progressive removal (SSD-1B): score, remove and distil from the teacher over K rounds",
        description="Rerun the same command to resume a killed run. Run under `accelerate launch` for several "
        "processes or GPUs.",
    )
    p.add_argument("--model", required=True, type=T.non_empty, help=f"the teacher: {MODEL_HELP}")
    p.add_argument(
        "--data", required=True, type=T.non_empty, help="image-text folder (metadata.csv/.jsonl) or a latents cache"
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="RESOURCE=VALUE",
        help="final budget: params, macs or macs_with_attention, a fraction of the teacher (params=0.5) or absolute",
    )
    p.add_argument("--rounds", required=True, type=T.positive_int, help="K: rounds of removal and distillation")
    p.add_argument(
        "--criterion", required=True, choices=list_criteria(), help="how each round scores the current student"
    )
    p.add_argument("--steps-per-round", required=True, type=T.positive_int, help="distillation steps per round")
    p.add_argument("--out", required=True, type=out_path, help="output folder (rounds, table, student/)")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="geometric",
        help="round r's budget: geometric f^(r/K) (the same share of what is left each round, default) or linear",
    )
    p.add_argument(
        "--strategy", help="search strategy (as `plan --strategy`; default exact, the least importance lost)"
    )
    p.add_argument("--expressible", action="store_true", help="only plans that export as a plain diffusers U-Net")
    p.add_argument("--format", choices=FORMATS, default="table")
    g = p.add_argument_group("scoring (as `prunelab score`)")
    g.add_argument("--units", choices=("blocks", "transformer_layers", "pairs"), default="blocks")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--calib-dir", help="calibration image-text folder (taylor, ablation)")
    src.add_argument("--calib-cache", help="calibration cache written by `score --save-calib`")
    src.add_argument("--synthetic", action="store_true", help="Gaussian calibration latents and embeddings")
    src.add_argument("--prompts", help="prompts file: data-free calibration, and the clip criterion's prompts")
    g.add_argument("--calib-samples", type=T.positive_int, default=8, help="calibration samples (default 8)")
    g.add_argument("--calib-batch-size", type=T.positive_int, default=4, help="calibration batch (default 4)")
    g.add_argument("--timesteps", type=T.positive_int, default=2, help="sampled timesteps per sample (default 2)")
    g.add_argument("--skip-mode", choices=("zero", "drop"), default=AblationOptions.skip_mode)
    g.add_argument("--no-prefix-cache", action="store_true", help="ablation: run every unit's forward in full")
    g.add_argument("--device", type=T.device, help="scoring device (default: this process's accelerate device)")
    add_training_args(p.add_argument_group("distillation (as `prunelab distill`)"), feature_layers="units")
    p.set_defaults(func=cmd_progressive)
