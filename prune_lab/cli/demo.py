"""Demo-world subcommands: `demo-train` (train its models), `demo-data` (write scenes), `demo-quality` (measure and
report the models), `demo-study` (BK-SDM's retraining study in miniature).

`demo-train --backbone sd3` trains the transformer pipeline `demo-dit` (:mod:`prune_lab.demo.dit`) instead of the
U-Net recipe."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..runtime import samplers
from ..runtime.tables import render
from . import types as T
from .common import check_file, check_folder


def _path(text: str) -> Path:
    """A non-empty path flag."""
    return Path(T.non_empty(text))


#: `demo-train --backbone` choices -> their default `--work` folder.
BACKBONES = {"unet": Path(".cache/demo-train"), "sd3": Path(".cache/demo-train-dit")}

#: `demo-train` flags that belong to one backbone's recipe.
RECIPE_FLAGS = {"unet": ("stages", "vae_steps", "clip_steps", "unet_steps"), "sd3": ("dit_steps",)}


def _check_recipe_flags(args: argparse.Namespace) -> None:
    """Refuse a flag of the other backbone's recipe."""
    for backbone, names in RECIPE_FLAGS.items():
        given = [n for n in names if getattr(args, n) is not None]
        if backbone != args.backbone and given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} belongs to `--backbone {backbone}`; drop it, or pass --backbone {backbone}")


def _train(args: argparse.Namespace) -> int:
    _check_recipe_flags(args)
    args.work = args.work or BACKBONES[args.backbone]
    check_folder("--work", args.work, keep=True)
    check_folder("--out", args.out, keep=True)
    _threads(args.threads)
    return _train_dit(args) if args.backbone == "sd3" else _train_unet(args)


def _train_dit(args: argparse.Namespace) -> int:
    from ..demo.dit import DitTrainConfig, assemble_dit, train_dit

    defaults = DitTrainConfig()
    config = DitTrainConfig(seed=args.seed, dit=_with_steps(defaults.dit, steps=args.dit_steps))
    r = train_dit(config, args.work, progress=not args.quiet)
    _print_result(r)
    out = assemble_dit(args.work, args.out, r)
    print(f"wrote {out} and {args.out / 'training-dit.json'}")
    return 0


def _with_steps(stage, steps: int | None):
    """`stage` (a `StageConfig`) with `steps` when given."""
    return type(stage)(**dict(asdict(stage), steps=steps or stage.steps))


def _print_result(r) -> None:
    print(
        f"{r.stage}: {r.steps} steps, {r.wall_s / 60:.1f} min wall, {r.cpu_s / 60:.1f} min CPU, "
        f"loss {r.loss:.4f} {json.dumps(r.extra)}"
    )


def _train_unet(args: argparse.Namespace) -> int:
    from ..demo.train import STAGES, TrainConfig, assemble, train

    defaults = TrainConfig()
    stages = {name: _with_steps(getattr(defaults, name), getattr(args, f"{name}_steps")) for name in STAGES}
    config = TrainConfig(seed=args.seed, **stages)
    results = train(config, args.work, args.stages.split(",") if args.stages else None, progress=not args.quiet)
    for r in results:
        _print_result(r)
    if args.stages is None or set(args.stages.split(",")) >= set(STAGES):
        out = assemble(args.work, args.out, results)
        print(f"wrote {out / 'pipeline'}, {out / 'clip'}, {out / 'training.json'}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from ..demo import sampling
    from ..demo.quality import measure_quality, write_quality_report

    if args.out:
        check_file("--out", args.out)
    for key, value in sampling(args.model).items():  # the model's own sampling unless a flag says otherwise
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    _threads(args.threads)
    run = measure_quality(
        args.model,
        n=args.n,
        world_seed=args.world_seed,
        scheduler=args.scheduler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        clip_checkpoint=args.clip_checkpoint,
        progress=not args.quiet,
    )
    print(render(run.scorer, "table"), render(run.generation, "table"), sep="\n\n")
    if args.out:
        report, record = write_quality_report(run, args.out, _command(args))
        print(f"wrote {report} and {record}")
    return 0


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _data(args: argparse.Namespace) -> int:
    from ..demo.world import World, write_folder

    check_folder("--out", args.out, overwrite=args.overwrite)
    out = write_folder(World(args.world_seed), args.split, args.start, args.n, args.out, overwrite=args.overwrite)
    print(f"wrote {args.n} {args.split} scenes to {out} (metadata.csv: file_name,text and the attributes)")
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = [
        "prunelab demo-quality",
        f"--model {args.model}",
        f"-n {args.n}",
        f"--scheduler {args.scheduler}",
        f"--steps {args.steps}",
        f"--guidance {args.guidance:g}",
        f"--seed {args.seed}",
    ]
    if args.world_seed:
        parts.append(f"--world-seed {args.world_seed}")
    if args.clip_checkpoint:
        parts.append(f"--clip-checkpoint {args.clip_checkpoint}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    return " ".join([*parts, f"--out {args.out}"])


#: `demo-study` flags that set a :class:`~prune_lab.demo.study.StudyConfig` field (unset: the config's default).
STUDY_FIELDS = ("preset", "arms", "steps", "batch_size", "lr", "data_n", "n", "seed")


def _study_command(args: argparse.Namespace, config) -> str:
    return " ".join(
        [
            f"prunelab demo-study --out {args.out} --work {args.work} --preset {config.preset}",
            f"--steps {config.steps} --batch-size {config.batch_size} --lr {config.lr:g} --data-n {config.data_n}",
            f"-n {config.n} --seed {config.seed} --arms {' '.join(config.arms)}",
            f"--threads {args.threads}" if args.threads else "",
        ]
    )


def _study(args: argparse.Namespace) -> int:
    import time

    from ..demo.study import StudyConfig, run_study, write_study_report

    check_folder("--out", args.out, keep=True)
    check_folder("--work", args.work, keep=True)
    _threads(args.threads)
    values = {k: getattr(args, k) for k in STUDY_FIELDS if getattr(args, k) is not None}
    config = StudyConfig(**{**values, **({"arms": tuple(values["arms"])} if "arms" in values else {})})
    t0 = time.perf_counter()
    result = run_study(config, args.work, progress=not args.quiet)
    minutes = (time.perf_counter() - t0) / 60
    print(render(result["summary"].round(4), "table"), render(result["differences"].round(4), "table"), sep="\n\n")
    written = write_study_report(result, args.out, _study_command(args, config), minutes)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def register(subparsers) -> None:
    from ..demo import DEMO_DIR, DIT_SAMPLING, SAMPLING

    p = subparsers.add_parser(
        "demo-train",
        help="train the demo world's autoencoder, CLIP scorer and U-Net (or, --backbone sd3, its MMDiT demo-dit)",
        description="Train the demo models (resumable; finished stages are skipped) and write "
        "the pipeline/ and clip/ folders that prune_lab ships; with --backbone sd3, the flow-matching "
        "transformer pipeline pipeline-dit/ (built-in model demo-dit) on the shipped autoencoder.",
    )
    p.add_argument(
        "--backbone",
        choices=tuple(BACKBONES),
        default="unet",
        help="unet: the U-Net recipe (demo); sd3: the SD3 transformer recipe (demo-dit)",
    )
    p.add_argument(
        "--out", type=_path, default=DEMO_DIR, help="where pipeline/ and clip/ (or pipeline-dit/) are written"
    )
    p.add_argument("--work", type=_path, help="checkpoints and stage exports (default: .cache/demo-train[-dit])")
    p.add_argument("--stages", help="comma-separated subset of vae,clip,unet (default: all, then assemble)")
    p.add_argument("--seed", type=T.seed, default=0)
    for name in ("vae", "clip", "unet", "dit"):
        p.add_argument(f"--{name}-steps", type=T.positive_int, help=f"{name} training steps (default: the recipe's)")
    p.add_argument("--threads", type=T.positive_int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    d = subparsers.add_parser(
        "demo-data",
        help="write demo-world scenes as an image-text folder (for distill, score, generate, eval)",
        description="Render scenes of the demo world to NNNNNN.png + metadata.csv (file_name,text and the "
        "attributes): training data for `distill --data`, calibration for `score --calib-dir`, prompts for "
        "`generate`, reference images for `eval --real`.",
    )
    d.add_argument("--out", type=_path, required=True, help="folder to write")
    d.add_argument("-n", "--n", type=T.positive_int, default=1000, help="number of scenes")
    d.add_argument("--split", choices=("train", "heldout"), default="train")
    d.add_argument("--start", type=T.non_negative_int, default=0, help="index of the first scene")
    d.add_argument("--world-seed", type=T.seed, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=_data)

    s = subparsers.add_parser(
        "demo-study",
        help="BK-SDM in miniature: a preset student before and after retraining, KD vs task loss only",
        description="Apply a block-removal preset to the demo teacher, retrain the student for the same number "
        "of steps under each objective, and measure every model on the same held-out captions (resumable).",
    )
    s.add_argument("--out", type=_path, default=Path("reports/demo-study"), help="report folder")
    s.add_argument("--work", type=_path, default=Path(".cache/demo-study"), help="data, students, measurements")
    # an unset flag keeps StudyConfig's default (fixed before the study's first result)
    s.add_argument("--preset", help="block-removal preset making the student")
    s.add_argument("--arms", nargs="+", help="retraining objectives (default: all of task, task+out-kd, ...)")
    s.add_argument("--steps", type=T.positive_int, help="retraining steps of every arm")
    s.add_argument("--batch-size", type=T.positive_int)
    s.add_argument("--lr", type=T.positive_float)
    s.add_argument("--data-n", type=T.positive_int, help="training scenes written for retraining")
    s.add_argument("-n", "--n", type=T.positive_int, help="held-out captions each model is measured on")
    s.add_argument("--seed", type=T.seed)
    s.add_argument("--threads", type=T.positive_int, help="torch CPU threads")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_study)

    q = subparsers.add_parser(
        "demo-quality",
        help="measure the demo scorer and a pipeline on held-out scenes",
        description="Scorer accuracy on held-out real images and a pipeline's caption accuracy "
        "on held-out captions (colour, shape, joint).",
    )
    q.add_argument("--model", default="demo", help="pipeline to generate with: demo, demo-dit or a pipeline folder")
    q.add_argument("--clip-checkpoint", type=_path, help="demo-clip weights (default: the shipped ones)")
    q.add_argument("-n", "--n", type=T.positive_int, default=500, help="held-out scenes (real images and captions)")
    q.add_argument("--world-seed", type=T.seed, default=0)
    unet, dit = SAMPLING, DIT_SAMPLING
    q.add_argument(
        "--scheduler",
        choices=samplers.names(),
        help=f"sampler (default: {unet['scheduler']} for demo, {dit['scheduler']} for demo-dit)",
    )
    q.add_argument("--steps", type=T.positive_int, help=f"default: {unet['steps']} (demo), {dit['steps']} (demo-dit)")
    q.add_argument(
        "--guidance", type=T.finite_float, help=f"default: {unet['guidance']} (demo), {dit['guidance']} (demo-dit)"
    )
    q.add_argument("--seed", type=T.seed, default=0, help="initial-noise seed")
    q.add_argument("--batch-size", type=T.positive_int, default=50)
    q.add_argument("--threads", type=T.positive_int, help="torch CPU threads")
    q.add_argument("--out", type=_path, help="write this Markdown report (and a .json next to it)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_quality)
