"""`prunelab demo-train` (train the demo world's models) and `prunelab demo-quality` (measure and report them)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from .formatting import render


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..demo.train import STAGES, StageConfig, TrainConfig, assemble, train

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = TrainConfig()
    stages = {}
    for name in STAGES:
        base = getattr(defaults, name)
        steps = getattr(args, f"{name}_steps")
        stages[name] = StageConfig(**dict(asdict(base), steps=steps or base.steps))
    config = TrainConfig(seed=args.seed, **stages)
    results = train(config, args.work, args.stages.split(",") if args.stages else None, progress=not args.quiet)
    for r in results:
        print(
            f"{r.stage}: {r.steps} steps, {r.wall_s / 60:.1f} min wall, {r.cpu_s / 60:.1f} min CPU, "
            f"loss {r.loss:.4f} {json.dumps(r.extra)}"
        )
    if args.stages is None or set(args.stages.split(",")) >= set(STAGES):
        out = assemble(args.work, args.out, results)
        print(f"wrote {out / 'pipeline'}, {out / 'clip'}, {out / 'training.json'}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    import platform
    import time

    import torch

    from ..demo.quality import Classifier, generation_accuracy, scorer_accuracy, shipped_sizes, training_summary
    from ..demo.scorer import CLIP_CHECKPOINT, load_scorer
    from ..demo.world import World
    from ..evaluation.generate import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    world = World(args.world_seed)
    model, _, tokenizer = load_scorer(args.clip_checkpoint or CLIP_CHECKPOINT)
    classifier = Classifier(model, tokenizer)
    t0 = time.perf_counter()
    real = scorer_accuracy(classifier, world, args.n, progress=not args.quiet).to_frame()
    t1 = time.perf_counter()
    pipe = load_pipeline(args.model, scheduler=args.scheduler)
    generated = generation_accuracy(
        classifier,
        pipe,
        world,
        args.n,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    ).to_frame()
    t2 = time.perf_counter()
    settings = dict(
        model=args.model,
        n=args.n,
        world_seed=args.world_seed,
        scheduler=args.scheduler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        scorer_s=t1 - t0,
        generation_s=t2 - t1,
    )
    record = {"settings": settings, "scorer": real.to_dict("records"), "generation": generated.to_dict("records")}
    print(render(real, "table"), render(generated, "table"), sep="\n\n")
    if args.out:
        sizes = shipped_sizes()
        try:
            training = training_summary()
        except FileNotFoundError:
            training = None
        _write_atomic(args.out, _report(settings, real, generated, training, sizes, _command(args)))
        _write_atomic(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from ..demo.world import World, write_folder

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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(frame):
    out = frame.copy()
    out["accuracy"] = [f"{100 * a:.1f}%" for a in frame.accuracy]
    out["stderr"] = [f"{100 * s:.1f}%" for s in frame.stderr]
    return out


def _report(settings: dict, real, generated, training, sizes, command: str) -> str:
    s = settings
    lines = [
        "# Demo world: quality of the shipped models",
        "",
        f"Regenerate with `{command}` (took {s['scorer_s'] / 60:.1f} + {s['generation_s'] / 60:.1f} min on "
        f"{s['machine']}, {s['threads']} torch thread(s)).",
        "",
        "Classification is zero-shot CLIP with the shipped scorer `demo-clip`: an image's predicted attributes are "
        "those of the world's caption most similar to it (each attribute read separately, so a right shape in "
        "the wrong colour counts as right on shape). Standard errors are binomial.",
        "",
        f"## Scorer on {s['n']} held-out real images (world seed {s['world_seed']})",
        "",
        render(_pct(real), "markdown"),
        "",
        f"## Teacher `{s['model']}` on the captions of {s['n']} held-out scenes",
        "",
        f"Sampler `{s['scheduler']}`, {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']} (image i: "
        "initial noise from `SeedSequence((seed, i))`); an image counts as right when the scorer reads the "
        "caption's value.",
        "",
        render(_pct(generated), "markdown"),
        "",
        "Quality bar (issue 8): scorer >= 95% on colour and shape of real images; teacher >= 80% on colour and on "
        "shape separately.",
    ]
    if training is not None:
        lines += [
            "",
            "## Training (`prunelab demo-train`, from `prune_lab/demo/training.json`)",
            "",
            render(training.round(3), "markdown"),
        ]
    lines += ["", f"## Shipped weights: {sizes.size_MB.sum():.1f} MB", "", render(sizes.round(2), "markdown"), ""]
    return "\n".join(lines)


def _study(args: argparse.Namespace) -> int:
    import platform
    import time

    import torch

    from ..demo.study import ARMS, StudyConfig, plot_study, run_study

    if args.threads:
        torch.set_num_threads(args.threads)
    config = StudyConfig(
        preset=args.preset,
        arms=tuple(args.arms or ARMS),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        data_n=args.data_n,
        n=args.n,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    result = run_study(config, args.work, progress=not args.quiet)
    minutes = (time.perf_counter() - t0) / 60
    summary, differences = result["summary"], result["differences"]
    print(render(summary.round(4), "table"), render(differences.round(4), "table"), sep="\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    plot_study(result, args.out / "study.png")
    command = " ".join(
        [
            f"prunelab demo-study --out {args.out} --work {args.work} --preset {config.preset}",
            f"--steps {config.steps} --batch-size {config.batch_size} --lr {config.lr:g} --data-n {config.data_n}",
            f"-n {config.n} --seed {config.seed} --arms {' '.join(config.arms)}",
            f"--threads {args.threads}" if args.threads else "",
        ]
    )
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"
    _write_atomic(args.out / "README.md", _study_report(result, command, machine, minutes))
    record = {**result, "summary": summary.to_dict("records"), "differences": differences.to_dict("records")}
    record.pop("losses")
    _write_atomic(args.out / "results.json", json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'README.md'}, {args.out / 'results.json'}, {args.out / 'study.png'}")
    return 0


def _study_report(result: dict, command: str, machine: str, minutes: float) -> str:
    c = result["config"]
    summary = result["summary"].copy()
    shown = ["model", "unet_params_M"]
    for name in ("colour", "shape", "colour+shape"):
        summary[name] = [f"{100 * a:.1f}% ± {100 * se:.1f}" for a, se in zip(summary[name], summary[f"{name}_se"])]
        shown.append(name)
    diffs = result["differences"].copy()
    diffs["difference"] = [f"{100 * d:+.1f} pts ± {100 * se:.1f}" for d, se in zip(diffs["difference"], diffs["se"])]
    last = {arm: losses.tail(50)["task"].mean() for arm, losses in result["losses"].items()}
    return "\n".join(
        [
            "# BK-SDM in miniature: block removal, then retraining with and without distillation",
            "",
            f"Regenerate with `{command.strip()}` ({machine}; this invocation took {minutes:.1f} min: retrained "
            "arms and measurements already in the work folder are reused, so only the missing ones cost time).",
            "",
            f"The student is the `{c['preset']}` preset applied to the shipped demo teacher (`prunelab apply`). Every "
            f"retraining arm runs `prunelab distill` for the same {c['steps']} steps (batch {c['batch_size']}, "
            f"AdamW at a constant {c['lr']:g}, no EMA, seed {c['seed']}) on the same {c['data_n']} training scenes; "
            "only the loss weights differ (task = denoising loss, out-kd = output-level KD, feat-kd = BK-SDM's "
            "feature-level KD at every stage). Learning rate, batch, data and loss weights are the study's defaults, "
            "fixed before its first result and never tuned on the outcome.",
            "",
            f"Every model draws the captions of the same {c['n']} held-out scenes from the same initial noises "
            f"(sampler `{c['sampling']['scheduler']}`, {c['sampling']['steps']} steps, guidance "
            f"{c['sampling']['guidance']}); the shipped `demo-clip` scorer reads colour and shape off each image. "
            "± values are binomial standard errors.",
            "",
            render(summary[shown].round(2), "markdown"),
            "",
            "Paired differences in colour+shape accuracy (same captions and noises; ± is the standard error of the "
            "per-image differences):",
            "",
            render(diffs[["a", "b", "difference", "n"]], "markdown"),
            "",
            "Mean task loss over the last 50 retraining steps: "
            + ", ".join(f"{arm} {value:.4f}" for arm, value in last.items())
            + ".",
            "",
            "![accuracy and loss curves](study.png)",
            "",
        ]
    )


def register(subparsers) -> None:
    from ..demo import DEMO_DIR, SAMPLING
    from ..demo.study import StudyConfig

    p = subparsers.add_parser(
        "demo-train",
        help="train the demo world's autoencoder, CLIP scorer and U-Net",
        description="Train the demo models (resumable; finished stages are skipped) and write "
        "the pipeline/ and clip/ folders that prune_lab ships.",
    )
    p.add_argument("--out", type=Path, default=DEMO_DIR, help="where pipeline/ and clip/ are written (the package)")
    p.add_argument("--work", type=Path, default=Path(".cache/demo-train"), help="checkpoints and stage exports")
    p.add_argument("--stages", help="comma-separated subset of vae,clip,unet (default: all, then assemble)")
    p.add_argument("--seed", type=int, default=0)
    for name in ("vae", "clip", "unet"):
        p.add_argument(f"--{name}-steps", type=int, help=f"{name} training steps (default: the recipe's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    d = subparsers.add_parser(
        "demo-data",
        help="write demo-world scenes as an image-text folder (for distill, score, generate, eval)",
        description="Render scenes of the demo world to NNNNNN.png + metadata.csv (file_name,text and the "
        "attributes): training data for `distill --data`, calibration for `score --calib-dir`, prompts for "
        "`generate`, reference images for `eval --real`.",
    )
    d.add_argument("--out", type=Path, required=True, help="folder to write")
    d.add_argument("-n", "--n", type=int, default=1000, help="number of scenes")
    d.add_argument("--split", choices=("train", "heldout"), default="train")
    d.add_argument("--start", type=int, default=0, help="index of the first scene")
    d.add_argument("--world-seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=_data)

    s = subparsers.add_parser(
        "demo-study",
        help="BK-SDM in miniature: a preset student before and after retraining, KD vs task loss only",
        description="Apply a block-removal preset to the demo teacher, retrain the student for the same number "
        "of steps under each objective, and measure every model on the same held-out captions (resumable).",
    )
    s.add_argument("--out", type=Path, default=Path("reports/demo-study"), help="report folder")
    s.add_argument("--work", type=Path, default=Path(".cache/demo-study"), help="data, students, measurements")
    s.add_argument("--preset", default=StudyConfig.preset, help="block-removal preset making the student")
    s.add_argument("--arms", nargs="+", help="retraining objectives (default: all of task, task+out-kd, ...)")
    s.add_argument("--steps", type=int, default=StudyConfig.steps, help="retraining steps of every arm")
    s.add_argument("--batch-size", type=int, default=StudyConfig.batch_size)
    s.add_argument("--lr", type=float, default=StudyConfig.lr)
    s.add_argument("--data-n", type=int, default=StudyConfig.data_n, help="training scenes written for retraining")
    s.add_argument("-n", "--n", type=int, default=StudyConfig.n, help="held-out captions each model is measured on")
    s.add_argument("--seed", type=int, default=StudyConfig.seed)
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_study)

    q = subparsers.add_parser(
        "demo-quality",
        help="measure the demo scorer and a pipeline on held-out scenes",
        description="Scorer accuracy on held-out real images and a pipeline's caption accuracy "
        "on held-out captions (colour, shape, joint).",
    )
    q.add_argument("--model", default="demo", help="pipeline to generate with: demo or a pipeline folder")
    q.add_argument("--clip-checkpoint", type=Path, help="demo-clip weights (default: the shipped ones)")
    q.add_argument("-n", "--n", type=int, default=500, help="held-out scenes (real images and captions)")
    q.add_argument("--world-seed", type=int, default=0)
    q.add_argument("--scheduler", default=SAMPLING["scheduler"], help="sampler (prunelab generate's names)")
    q.add_argument("--steps", type=int, default=SAMPLING["steps"])
    q.add_argument("--guidance", type=float, default=SAMPLING["guidance"])
    q.add_argument("--seed", type=int, default=0, help="initial-noise seed")
    q.add_argument("--batch-size", type=int, default=50)
    q.add_argument("--threads", type=int, help="torch CPU threads")
    q.add_argument("--out", type=Path, help="write this Markdown report (and a .json next to it)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_quality)
