"""`prunelab study`: compare pruning plans after equal retraining (arms as specs, one recipe, shared prompts and
noises, paired differences, importance lost against quality)."""

from __future__ import annotations

import argparse
import shlex

from ..backbones import feature_scopes
from ..runtime import samplers
from ..study.specs import GRAMMAR, parse_base, parse_terms
from . import types as T
from .common import MODEL_HELP, check_folder, out_path

EPILOG = f"""arm specs: {GRAMMAR}.
  preset:NAME                       a published architecture (`prunelab presets`)
  criterion:C@params=X[,strategy=S] the plan search of `prunelab plan --target params=X` on C's scores
  progressive:C@params=X,rounds=K[,strategy=S]
                                    `prunelab progressive`, its K rounds sharing --steps
  init:random                       do not start the student from the teacher's weights
  kd:task | kd:task+out | kd:task+out+feat | kd:norm-feat (= task+out+norm-feat)
                                    the objective (listed losses weighted 1); default: --lambda-* flags
An arm without a plan term modifies --base:
  --base preset:bk-small --arms preset:bk-small kd:task init:random/kd:task
"""


def _arm(text: str) -> str:
    try:
        parse_terms(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _base(text: str) -> str:
    try:
        parse_base(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def config_from_args(args: argparse.Namespace):
    """The :class:`~prune_lab.study.run.StudyConfig` of the flags."""
    from ..study.run import Recipe, Sampling, StudyConfig

    recipe = Recipe(
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, seed=args.seed,
        resolution=args.resolution, flip=not args.no_flip, lambda_task=args.lambda_task, lambda_out=args.lambda_out,
        lambda_feat=args.lambda_feat, feature_layers=args.feature_layers, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    sampling = Sampling(args.scheduler, args.sample_steps, args.guidance, args.seed, args.sample_batch_size)
    options = {
        "clip_model": args.clip_model, "clip_pretrained": args.clip_pretrained,
        "clip_checkpoint": args.clip_checkpoint, "reference": args.reference, "fid_mode": args.fid_mode,
    }  # fmt: skip
    return StudyConfig(
        model=args.model, data=args.data, prompts=args.prompts, arms=tuple(args.arms), base=args.base,
        recipe=recipe, sampling=sampling, metrics=tuple(args.metric), metric_options=options,
        criteria=tuple(args.criteria or ()), calib_samples=args.calib_samples, calib_prompts=args.calib_prompts,
        before=not args.no_before, latency_runs=args.latency_runs,
    )  # fmt: skip


def command(args: argparse.Namespace, parser_defaults: dict) -> str:
    """The `prunelab study` command line of `args` (every flag that differs from its default)."""
    parts = ["prunelab", "study"]
    for key, value in vars(args).items():
        if (
            key in ("func", "command", "defaults", "quiet", "jobs")
            or value == parser_defaults.get(key)
            or value is None
        ):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def cmd_study(args: argparse.Namespace) -> int:
    import time

    check_folder("--out", args.out, keep=True)
    check_folder("--work", args.work, keep=True)
    config = config_from_args(args)
    config.check()  # every spec, name and input before any work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..runtime.tables import render
    from ..study.report import write_study_report
    from ..study.run import run_study

    t0 = time.perf_counter()
    result = run_study(config, args.work, jobs=args.jobs, threads=args.threads, progress=not args.quiet)
    minutes = (time.perf_counter() - t0) / 60
    print(render(result["models"].round(4), "table"))
    print(render(result["differences"].round(4), "table"))
    if len(result["correlation"]):
        print(render(result["correlation"].round(4), "table"))
    written = write_study_report(result, args.out, command(args, args.defaults), minutes)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="compare pruning plans after equal retraining (arms as specs; resumable, parallel)",
        description="Prune the teacher once per arm, retrain every arm with one recipe, draw the same prompts from "
        "the same noises with every model, and report paired differences, costs and importance lost against "
        "quality. Resumable per task; several processes (--jobs, or invocations sharing --work) split the arms.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=T.non_empty, help=f"the teacher: {MODEL_HELP}")
    p.add_argument("--data", required=True, type=T.non_empty, help="retraining + calibration image-text folder")
    p.add_argument("--prompts", required=True, type=T.non_empty, help="prompt file every model draws (CSV / txt)")
    p.add_argument("--arms", required=True, nargs="+", type=_arm, metavar="SPEC", help="the arms (see below)")
    p.add_argument("--base", type=_base, help="the plan of arms without a plan term (e.g. preset:bk-small)")
    p.add_argument("--out", required=True, type=out_path, help="report folder: README.md, study.png, results.json")
    p.add_argument("--work", required=True, type=out_path, help="work folder (resumable; shareable by processes)")
    r = p.add_argument_group("the retraining recipe (every arm)")
    r.add_argument("--steps", type=T.positive_int, default=400, help="optimizer steps of every arm")
    r.add_argument("--batch-size", type=T.positive_int, default=32)
    r.add_argument("--grad-accum", type=T.positive_int, default=1)
    r.add_argument("--lr", type=T.positive_float, default=5e-4)
    r.add_argument("--seed", type=T.seed, default=0, help="retraining, calibration and initial-noise seed")
    r.add_argument("--resolution", type=T.positive_int, default=512, help="training image side (demo: 32)")
    r.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    for loss in ("task", "out", "feat"):
        r.add_argument(f"--lambda-{loss}", type=T.non_negative_float, default=1.0, help="objective without kd:")
    r.add_argument(
        "--feature-layers",
        choices=[*feature_scopes(), "none"],
        default="stages",
        help="feature KD pairs (U-Nets: stages, units; transformers: blocks, uniform; default stages)",
    )
    r.add_argument("--checkpoint-every", type=T.positive_int, default=100, help="steps between resumable saves")
    m = p.add_argument_group("measurement")
    m.add_argument("--metric", nargs="+", default=["clip-score"], help="study metrics, the first ranks arms "
                   "(clip-score, fid; the demo's demo-accuracy, demo-fid)")  # fmt: skip
    m.add_argument("--scheduler", choices=samplers.names(), help="sampler (default: the model family's own)")
    m.add_argument("--sample-steps", type=T.positive_int, default=20, help="denoising steps per image")
    m.add_argument("--guidance", type=T.finite_float, default=7.5)
    m.add_argument("--sample-batch-size", type=T.positive_int, default=8)
    m.add_argument("--clip-model", help="clip-score's (and the clip criterion's) CLIP model, e.g. demo-clip")
    m.add_argument("--clip-pretrained", help="its published weights tag")
    m.add_argument("--clip-checkpoint", help="its local weights file")
    m.add_argument("--reference", help="fid: folder of real images")
    m.add_argument("--fid-mode", help="fid: clean-fid mode (default legacy_pytorch)")
    m.add_argument("--no-before", action="store_true", help="do not measure students before retraining")
    m.add_argument("--latency-runs", type=T.non_negative_int, default=3, help="timed runs per model (0: none)")
    s = p.add_argument_group("scores")
    s.add_argument("--criteria", nargs="+", help="more criteria to score for the importance-lost analysis")
    s.add_argument("--calib-samples", type=T.positive_int, default=8, help="calibration samples of the scores")
    s.add_argument("--calib-prompts", help="prompts file for the clip criterion")
    p.add_argument("--jobs", type=T.positive_int, default=1, help="processes sharing the tasks")
    p.add_argument("--threads", type=T.positive_int, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study, defaults=None)
    p.set_defaults(defaults={a.dest: a.default for a in p._actions})
