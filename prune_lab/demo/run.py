"""The demo job behind `make demo` (`prunelab demo-run`): every prune_lab step end to end on a shipped demo model
(the `demo` U-Net pipeline, or the `demo-dit` transformer one).

Steps (:data:`STEPS`, in order): write demo-world data, list the units, score them with every registered criterion
that applies to the model, plot the scores, search a plan under a budget, apply it, distil the student briefly,
evaluate teacher / pruned / distilled, write the report (:mod:`prune_lab.demo.run_report`). What differs between the
models comes from their backbone (:func:`prune_lab.backbones.backbone_for`): the criteria that apply, the units they
score (blocks, plus skips where the backbone has them), the distillation's feature scope, the calibration batches;
and from the model's sampler (:func:`prune_lab.demo.job.default_config`).

Resumable: every step writes its outputs atomically (temp + rename, or a marker written last) into a work folder
keyed by the run's settings and the shipped weights (:func:`run_key`), and a step whose outputs all exist is reused,
not redone. The long steps resume inside themselves too: the score sweep unit by unit (`run_sweep(resume=True)`),
distillation from its last checkpoint, evaluation model by model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import distill_student
from .job import MODEL, MODELS, Job, RunConfig, feature_scope, open_job, write_text

#: The `--units` granularities the demo scores, where the model's backbone has them (the U-Net: both; a transformer:
#: its blocks).
GROUPINGS = ("blocks", "skips")


# ------------------------------------------------------------------------------------------------------ steps
def write_data(job: Job) -> Path:
    """Demo-world training scenes as an image-text folder (`prunelab demo-data`): calibration and distill data."""
    from .world import World, write_folder

    folder = job.path("data", "train")
    job.once(
        "data", [folder], lambda: write_folder(World(job.config.seed), "train", 0, job.config.train_scenes, folder)
    )
    return folder


def list_units(job: Job) -> pd.DataFrame:
    """The graph walker's units of the demo model (``units.csv``: one row per unit, forward order)."""
    from ..backbones import walk
    from ..models import load_unet

    path = job.path("units.csv")

    def compute() -> None:
        records = walk(load_unet(job.model.name, meta=True).unet).to_records()
        write_text(path, pd.DataFrame(records).drop(columns=["children"], errors="ignore").to_csv(index=False))

    job.once("units", [path], compute)
    return pd.read_csv(path)


def criteria(model) -> list[str]:
    """The registered criteria that apply to `model` (:func:`prune_lab.scoring.list_criteria` of its backbone)."""
    from ..backbones import backbone_for
    from ..scoring import list_criteria

    return list_criteria(backbone_for(model), model)


def _scoring_inputs(job: Job, data: Path):
    """Model, calibration batches (from the training scenes), pipeline and prompts for every criterion that applies."""
    from ..models import load_unet
    from ..scoring import CalibrationSource, build_scoring_inputs
    from .scorer import CLIP_CHECKPOINT, CLIP_NAME
    from .world import World

    c = job.config
    options = {
        "skip_mode": "zero",
        "clip_model": CLIP_NAME,
        "clip_checkpoint": str(CLIP_CHECKPOINT),
        "scheduler": c.scheduler,
        "steps": c.steps,
        "guidance": c.guidance,
        "batch_size": c.clip_prompts,
    }
    loaded = load_unet(job.model.name)
    return build_scoring_inputs(
        loaded,
        criteria(loaded.unet),
        calibration=CalibrationSource(folder=data, samples=c.calib_samples, seed=c.seed, batch_size=c.score_batch),
        timesteps=c.timesteps,
        prompts=[s.caption for s in World(c.seed).scenes("heldout", 0, c.clip_prompts)],
        options=options,
    )


def score(job: Job, data: Path) -> pd.DataFrame:
    """Score every block (and skip, where the backbone has them) with every criterion that applies (``scores.csv``;
    a sweep per criterion, each resumable unit by unit)."""
    from ..backbones import backbone_of
    from ..scoring import read_scores, run_sweep, score_units
    from ..scoring.results import unit_macs, write_scores

    path = job.path("scores.csv")

    def compute() -> None:
        inputs = _scoring_inputs(job, data)
        groupings = [g for g in GROUPINGS if g in backbone_of(inputs.graph).groupings]
        units = [u for g in groupings for u in score_units(inputs.graph, g)]
        macs = unit_macs(inputs.unet, inputs.graph)
        settings = {"model": job.model.name, **asdict(job.config)}
        names, tables = criteria(inputs.unet), []
        for criterion in names:
            part = job.path("scores", f"{criterion}.csv")
            if not part.exists():
                sweep = dict(settings=settings, resume=True, macs=macs, progress=job.progress)
                run_sweep(inputs, units, [criterion], part, **sweep)
            tables.append(read_scores(part))
        write_scores(pd.concat(tables, ignore_index=True), path, {"criteria": names, **settings})

    job.once("score", [path], compute, inputs=[data])
    return read_scores(path)


def plot(job: Job, scores: pd.DataFrame) -> list[Path]:
    """Fig 5-style bars of every criterion, and the skip chart when skips were scored, into the report folder."""
    from ..plots import plot_scores

    skips = ["scores_skips.png"] if scores["kind"].eq("skip").any() else []
    paths = [job.out / name for name in ("scores.png", *skips)]
    job.once("plot", paths, lambda: plot_scores(scores, paths[0]), inputs=[scores.to_csv(index=False)])
    return paths


def make_plan(job: Job, scores: pd.DataFrame) -> dict:
    """The greedy plan search for `budget` on `plan_criterion`'s scores (``plan.json``); returns the plan's meta."""
    from ..models import load_unet
    from ..plan import Plan
    from ..runtime.budget import parse_budget
    from ..search import build_problem, search

    path, c = job.path("plan.json"), job.config

    def compute() -> None:
        unet = load_unet(job.model.name, meta=True).unet
        problem = build_problem(unet, scores, criterion=c.plan_criterion, source=job.model.name)
        search(problem, parse_budget(c.budget), "greedy").plan.save(path)

    job.once("plan", [path], compute, inputs=[scores.to_csv(index=False)])
    return Plan.load(path).meta


def apply(job: Job) -> Path:
    """Export the plan's student of the demo pipeline (a pipeline folder with a compact U-Net or transformer)."""
    from ..formats.block import apply_plan
    from ..models import load_unet
    from ..plan import Plan

    folder = job.path("pruned")
    plan = job.path("plan.json")
    job.once("apply", [folder], lambda: apply_plan(load_unet(job.model.name), Plan.load(plan), folder), inputs=[plan])
    return folder


def distill(job: Job, student: Path, data: Path) -> Path:
    """A short BK-SDM distillation of the student (feature + output KD, the shared recipe, the training objective of
    the model's noise schedule: DDPM's or flow matching's); resumes from its last checkpoint. ``distilled/done.json``
    marks a finished run."""
    folder, c = job.path("distilled"), job.config
    done = folder / "done.json"

    def compute() -> None:
        result = distill_student(
            student,
            data,
            folder,
            steps=c.distill_steps,
            batch_size=c.distill_batch,
            lr=c.lr,
            seed=c.seed,
            teacher=job.model.name,
            checkpoint_every=max(1, c.distill_steps // 4),
            progress=job.progress,
            feature_layers=feature_scope(job.model),
        )
        write_text(done, json.dumps({"steps": result.step, "last": result.last}, indent=1) + "\n")

    job.once("distill", [done], compute, inputs=[student / "plan.json", data])
    return folder


# -------------------------------------------------------------------------------------------------------- run
#: Step names, in order (the report names each one).
STEPS = ("data", "units", "score", "plot", "plan", "apply", "distill", "evaluate", "report")


@dataclass
class DemoResult:
    """Everything a run produced (tables for the CLI and the report)."""

    job: Job
    units: pd.DataFrame
    scores: pd.DataFrame
    plan: dict
    evaluation: pd.DataFrame
    report: Path


def run_demo(
    config: RunConfig,
    work: str | os.PathLike,
    out: str | os.PathLike,
    *,
    command: str = "prunelab demo-run",
    progress: bool = True,
    model: str = MODEL,
) -> DemoResult:
    """Run (or resume) every step of :data:`STEPS` and write ``out/README.md``.

    Args:
        config: sizes (:class:`RunConfig`, or :data:`QUICK`; :func:`~prune_lab.demo.job.default_config` gives the
            model's own sampling).
        work: the work folder (this run uses ``work/<run_key>``).
        out: the report folder (README.md and PNG figures).
        command: the command line that regenerates the report (written into it).
        model: the demo model to start from (:data:`~prune_lab.demo.job.DEMO_MODELS`: `demo`, `demo-dit`).
    """
    from tqdm.auto import tqdm

    from .run_eval import evaluate
    from .run_report import write_report

    job = open_job(config, work, out, progress, model)
    job.bar = tqdm(total=len(STEPS), desc="demo-run", unit="step", disable=not progress)
    data = write_data(job)
    units = list_units(job)
    scores = score(job, data)
    plot(job, scores)
    plan_meta = make_plan(job, scores)
    student = apply(job)
    distilled = distill(job, student, data)
    evaluation = evaluate(job, dict(zip(MODELS, (job.model.name, student, distilled))))
    job.bar.set_postfix_str("report")
    report = write_report(job, units, scores, plan_meta, evaluation, command)
    job.bar.update(1)
    job.bar.close()
    return DemoResult(job, units, scores, plan_meta, evaluation, report)


__all__ = ["STEPS", "DemoResult", "run_demo"]
