"""The demo job behind `make demo` (`prunelab demo-run`): every prune_lab step end to end on the shipped `demo` model.

Steps (:data:`STEPS`, in order): write demo-world data, list the units, score them with every registered criterion,
plot the scores, search a plan under a budget, apply it, distil the student briefly, evaluate teacher / pruned /
distilled, write the report (:mod:`prune_lab.demo.run_report`).

Resumable: every step writes its outputs atomically (temp + rename, or a marker written last) into a work folder
keyed by the run's settings and the shipped weights (:func:`run_key`), and a step whose outputs all exist is reused,
not redone. The long steps resume inside themselves too: the score sweep unit by unit (`run_sweep(resume=True)`),
distillation from its last checkpoint, evaluation model by model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import CLIP_DIR, PIPELINE_DIR, SAMPLING, distill_student

MODEL = "demo"
#: The models the job evaluates, in report order.
MODELS = ("teacher", "pruned", "distilled")


@dataclass(frozen=True)
class RunConfig:
    """Sizes and settings of one demo run (the defaults fit ~15 minutes on a 2-core CPU).

    Attributes:
        train_scenes: demo-world training scenes written for calibration and distillation.
        calib_samples / timesteps / score_batch: calibration images, sampled timesteps per image, batch size of the
            denoising criteria (taylor, ablation).
        clip_prompts: held-out captions the clip criterion generates for each unit.
        steps / guidance / scheduler: sampling for every generation (:data:`prune_lab.demo.SAMPLING`).
        budget: the plan search target (`prunelab plan --target`); plan_criterion: whose scores it reads.
        distill_steps / distill_batch / lr: the short distillation (BK-SDM feature KD, constant lr).
        eval_samples: held-out captions each model draws for caption accuracy (and FID, when `fid`).
        seed: every random draw derives from it.
    """

    train_scenes: int = 1024
    calib_samples: int = 32
    timesteps: int = 2
    score_batch: int = 16
    clip_prompts: int = 8
    steps: int = SAMPLING["steps"]
    guidance: float = SAMPLING["guidance"]
    scheduler: str = SAMPLING["scheduler"]
    budget: str = "params=0.6"
    plan_criterion: str = "ablation"
    distill_steps: int = 200
    distill_batch: int = 16
    lr: float = 3e-4
    eval_samples: int = 128
    fid: bool = True
    seed: int = 0


#: `--quick`: tiny sizes that still run every step (tests, smoke runs); its numbers mean nothing.
QUICK = RunConfig(
    train_scenes=16,
    calib_samples=4,
    timesteps=1,
    score_batch=4,
    clip_prompts=1,
    steps=1,
    distill_steps=2,
    distill_batch=4,
    eval_samples=4,
    fid=False,
)


def weights_digest(folders: tuple[Path, ...] = (PIPELINE_DIR, CLIP_DIR)) -> str:
    """SHA-256 over the shipped weights and configs (retrained weights give a new digest, hence a new work folder).

    Raises:
        FileNotFoundError: the demo weights are not installed.
    """
    h = hashlib.sha256()
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
        if not files:
            raise FileNotFoundError(f"no demo weights in {folder}; train them with `prunelab demo-train`")
        for path in files:
            h.update(str(path.relative_to(folder.parent)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def run_key(config: RunConfig, digest: str) -> str:
    """Short hash of the settings and the weights: the name of a run's folder under the work folder."""
    text = json.dumps({"config": asdict(config), "weights": digest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@dataclass
class StepRecord:
    """What a step did in this run: `ran` or `reused` (its outputs were there), and the seconds its outputs took."""

    step: str
    status: str
    seconds: float
    outputs: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One demo run: its settings, folders and step records.

    Attributes:
        config: the sizes; work: this run's folder (``<--work>/<run_key>``); out: where the report goes.
        progress: show tqdm bars; records: one per step done so far (see :meth:`once`); bar: the run's step bar;
            started: when this invocation began (`time.perf_counter`).
    """

    config: RunConfig
    work: Path
    out: Path
    progress: bool = True
    records: list[StepRecord] = field(default_factory=list)
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def _timings(self) -> dict:
        file = self.path("timings.json")
        return json.loads(file.read_text()) if file.is_file() else {}

    def once(self, step: str, outputs: list[Path], compute: Callable[[], object]) -> StepRecord:
        """Run `compute` unless every output exists; record the step (and the time it took when it ran)."""
        timings = self._timings()
        if self.bar is not None:
            self.bar.set_postfix_str(step)
        if all(p.exists() for p in outputs):
            record = StepRecord(step, "reused", timings.get(step, float("nan")), [str(p) for p in outputs])
        else:
            start = time.perf_counter()
            compute()
            missing = [p for p in outputs if not p.exists()]
            if missing:
                raise RuntimeError(f"step {step} did not write {missing[0]}")
            record = StepRecord(step, "ran", time.perf_counter() - start, [str(p) for p in outputs])
            write_text(self.path("timings.json"), json.dumps({**timings, step: record.seconds}, indent=1))
        self.records.append(record)
        if self.bar is not None:
            self.bar.update(1)
        return record

    def record_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self.records], columns=["step", "status", "seconds", "outputs"])


def open_job(config: RunConfig, work: str | os.PathLike, out: str | os.PathLike, progress: bool = True) -> Job:
    """The job for `config` in ``work/<run_key>`` (created; a folder from a killed run with the same key is reused)."""
    folder = Path(work) / run_key(config, weights_digest())
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.json", json.dumps(asdict(config), indent=1) + "\n")
    return Job(config, folder, Path(out), progress)


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
    """The graph walker's units of the demo U-Net (``units.csv``: one row per unit, forward order)."""
    from ..graph import walk
    from ..models import load_unet

    path = job.path("units.csv")

    def compute() -> None:
        records = walk(load_unet(MODEL, meta=True).unet).to_records()
        write_text(path, pd.DataFrame(records).drop(columns=["children"], errors="ignore").to_csv(index=False))

    job.once("units", [path], compute)
    return pd.read_csv(path)


def _scoring_inputs(job: Job, data: Path):
    """Model, calibration batches (from the training scenes), pipeline and prompts for every registered criterion."""
    from ..models import load_unet
    from ..scoring import CalibrationSource, build_scoring_inputs, list_criteria
    from .clip import CLIP_CHECKPOINT, CLIP_NAME
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
    return build_scoring_inputs(
        load_unet(MODEL),
        list_criteria(),
        calibration=CalibrationSource(folder=data, samples=c.calib_samples, seed=c.seed, batch_size=c.score_batch),
        timesteps=c.timesteps,
        prompts=[s.caption for s in World(c.seed).scenes("heldout", 0, c.clip_prompts)],
        options=options,
    )


def score(job: Job, data: Path) -> pd.DataFrame:
    """Score every block and skip with every registered criterion (``scores.csv``; a sweep per criterion, each
    resumable unit by unit)."""
    from ..scoring import list_criteria, read_scores, run_sweep, score_units
    from ..scoring.results import unit_macs, write_scores

    path = job.path("scores.csv")

    def compute() -> None:
        inputs = _scoring_inputs(job, data)
        units = score_units(inputs.graph, "blocks") + score_units(inputs.graph, "skips")
        macs = unit_macs(inputs.unet, inputs.graph)
        settings = {"model": MODEL, **asdict(job.config)}
        tables = []
        for criterion in list_criteria():
            part = job.path("scores", f"{criterion}.csv")
            if not part.exists():
                sweep = dict(settings=settings, resume=True, macs=macs, progress=job.progress)
                run_sweep(inputs, units, [criterion], part, **sweep)
            tables.append(read_scores(part))
        write_scores(pd.concat(tables, ignore_index=True), path, {"criteria": list_criteria(), **settings})

    job.once("score", [path], compute)
    return read_scores(path)


def importance_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per criterion: the most and least important unit and the ratio of their importances (NaN when the least
    is not positive: removing it helped)."""
    rows = []
    for criterion, part in scores.groupby("criterion", sort=False):
        top, bottom = part.loc[part["importance"].idxmax()], part.loc[part["importance"].idxmin()]
        ratio = top["importance"] / bottom["importance"] if bottom["importance"] > 0 else float("nan")
        rows.append(
            {
                "criterion": criterion,
                "units": len(part),
                "most": top["name"],
                "most_importance": top["importance"],
                "least": bottom["name"],
                "least_importance": bottom["importance"],
                "max_min_ratio": ratio,
                "non_positive": int((part["importance"] <= 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Kendall tau and Spearman rho between every two criteria (:func:`prune_lab.scoring.rank_agreement`)."""
    from ..scoring import rank_agreement

    return rank_agreement([("scores", scores)])


def plot(job: Job, scores: pd.DataFrame) -> list[Path]:
    """Fig 5-style bars of every criterion, and the skip chart, into the report folder."""
    from ..plots import plot_scores

    paths = [job.out / "scores.png", job.out / "scores_skips.png"]
    job.once("plot", paths, lambda: plot_scores(scores, paths[0]))
    return paths


def make_plan(job: Job, scores: pd.DataFrame) -> dict:
    """The greedy plan search for `budget` on `plan_criterion`'s scores (``plan.json``); returns the plan's meta."""
    from ..models import load_unet
    from ..plan import Plan
    from ..runtime.budget import parse_budget
    from ..search import build_problem, search

    path, c = job.path("plan.json"), job.config

    def compute() -> None:
        unet = load_unet(MODEL, meta=True).unet
        problem = build_problem(unet, scores, criterion=c.plan_criterion, source=MODEL)
        search(problem, parse_budget(c.budget), "greedy").plan.save(path)

    job.once("plan", [path], compute)
    return Plan.load(path).meta


def apply(job: Job) -> Path:
    """Export the plan's student of the demo pipeline (a pipeline folder with a compact U-Net)."""
    from ..export import apply_plan
    from ..models import load_unet
    from ..plan import Plan

    folder = job.path("pruned")
    job.once("apply", [folder], lambda: apply_plan(load_unet(MODEL), Plan.load(job.path("plan.json")), folder))
    return folder


def distill(job: Job, student: Path, data: Path) -> Path:
    """A short BK-SDM distillation of the student (feature + output KD, the shared recipe); resumes from its last
    checkpoint. ``distilled/done.json`` marks a finished run."""
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
            teacher=MODEL,
            checkpoint_every=max(1, c.distill_steps // 4),
            progress=job.progress,
        )
        write_text(done, json.dumps({"steps": result.step, "last": result.last}, indent=1) + "\n")

    job.once("distill", [done], compute)
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
) -> DemoResult:
    """Run (or resume) every step of :data:`STEPS` and write ``out/README.md``.

    Args:
        config: sizes (:class:`RunConfig`, or :data:`QUICK`).
        work: the work folder (this run uses ``work/<run_key>``).
        out: the report folder (README.md and PNG figures).
        command: the command line that regenerates the report (written into it).
    """
    from tqdm.auto import tqdm

    from .run_eval import evaluate
    from .run_report import write_report

    job = open_job(config, work, out, progress)
    job.bar = tqdm(total=len(STEPS), desc="demo-run", unit="step", disable=not progress)
    data = write_data(job)
    units = list_units(job)
    scores = score(job, data)
    plot(job, scores)
    plan_meta = make_plan(job, scores)
    student = apply(job)
    distilled = distill(job, student, data)
    evaluation = evaluate(job, dict(zip(MODELS, (MODEL, student, distilled))))
    job.bar.set_postfix_str("report")
    report = write_report(job, units, scores, plan_meta, evaluation, command)
    job.bar.update(1)
    job.bar.close()
    return DemoResult(job, units, scores, plan_meta, evaluation, report)


__all__ = [
    "MODELS",
    "QUICK",
    "STEPS",
    "DemoResult",
    "Job",
    "RunConfig",
    "StepRecord",
    "agreement",
    "importance_summary",
    "open_job",
    "run_demo",
    "run_key",
    "weights_digest",
]
