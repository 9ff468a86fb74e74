"""One demo run's settings, work folder and step bookkeeping, and the summaries its report shows.

Shared by the steps (:mod:`.run`), the evaluation (:mod:`.run_eval`) and the report (:mod:`.run_report`); imports none
of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..runtime.atomic import write_text as atomic_write_text
from . import CLIP_DIR, DIT_DIR, PIPELINE_DIR, SAMPLING, sampling

MODEL = "demo"
#: The models the job evaluates, in report order.
MODELS = ("teacher", "pruned", "distilled")


@dataclass(frozen=True)
class DemoModel:
    """A trained demo model a run can start from, and the words its report uses for it (the mechanics come from its
    backbone).

    Attributes:
        name: the built-in model name (`--model`); weights: its shipped pipeline folder.
        out: the default report folder; network: what the report calls the denoiser (`U-Net`, `transformer`).
        units: which units every criterion scores, in words; scored: the same, short (the steps table).
        encoders: its text encoder(s), in words; note: said after the regenerating command.
    """

    name: str
    weights: Path
    out: str
    network: str
    units: str
    scored: str
    encoders: str
    note: str = ""


#: The demo models `prunelab demo-run --model` takes.
DEMO_MODELS = {
    "demo": DemoModel(
        "demo",
        PIPELINE_DIR,
        "reports/demo",
        "U-Net",
        "every resnet / attention block and every skip",
        "every block and skip",
        "text encoder",
        " (`make demo` runs it)",
    ),
    "demo-dit": DemoModel(
        "demo-dit",
        DIT_DIR,
        "reports/demo-dit",
        "transformer",
        "every block of the 12-block MMDiT stack; the branches inside blocks are not scored, as `similarity` scores "
        "blocks only",
        "every block",
        "two text encoders",
    ),
}


def demo_model(name: str) -> DemoModel:
    """The demo model called `name`.

    Raises:
        ValueError: not one of :data:`DEMO_MODELS`.
    """
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown --model {name!r}; the demo run takes: {', '.join(DEMO_MODELS)}")
    return DEMO_MODELS[name]


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


def feature_scope(model: DemoModel) -> str:
    """The feature-KD scope the run distils at: the first of the model's backbone (`stages` of a U-Net, `blocks` of
    a transformer)."""
    from ..backbones import backbone_for
    from ..models import load_unet

    return backbone_for(load_unet(model.name, meta=True).unet).feature_scopes[0]


def default_config(model: str = MODEL, *, quick: bool = False) -> RunConfig:
    """:class:`RunConfig` (or :data:`QUICK`) with `model`'s own sampler and guidance (:func:`prune_lab.demo.sampling`:
    the `demo` pipeline's DPM-Solver++, `demo-dit`'s flow-matching Euler), and its steps unless `quick`."""
    own = sampling(demo_model(model).name)
    if quick:
        own.pop("steps")
    return replace(QUICK if quick else RunConfig(), **own)


#: The step records of a job (see :meth:`Job.once`).
STEPS_FILE = "steps.json"


def digest(items) -> str:
    """SHA-256 over `items`: a path by its name and contents (a folder: every file in it, sorted), anything else by
    its JSON (`str` as a fallback)."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            files = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
            for path in files:
                h.update(str(path.relative_to(item) if item.is_dir() else path.name).encode())
                h.update(path.read_bytes() if path.is_file() else b"<missing>")
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


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
    """Write `text` to `path` atomically (:func:`prune_lab.runtime.atomic.write_text`)."""
    return atomic_write_text(path, text)


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
            started: when this invocation began (`time.perf_counter`); model: the demo model it starts from.
    """

    config: RunConfig
    work: Path
    out: Path
    progress: bool = True
    records: list[StepRecord] = field(default_factory=list)
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)
    model: DemoModel = DEMO_MODELS[MODEL]

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def _steps(self) -> dict:
        """``steps.json``: per step, the digest of its inputs and of its outputs when it ran, and its seconds. A torn
        or foreign file is no record at all (every step then runs again)."""
        file = self.path(STEPS_FILE)
        try:
            steps = json.loads(file.read_text()) if file.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            return {}
        return steps if isinstance(steps, dict) else {}

    def once(
        self, step: str, outputs: list[Path], compute: Callable[[], object], inputs: tuple | list = ()
    ) -> StepRecord:
        """Run `compute` unless this job ran `step` before with the same `inputs` (paths are hashed by content,
        other values by their JSON) and its outputs are still what it wrote; record the step and its seconds.

        Outputs that exist without this job's record (a committed report's figures, a killed run's leftovers) are
        never reused: the step runs and overwrites them.
        """
        steps = self._steps()
        if self.bar is not None:
            self.bar.set_postfix_str(step)
        key, seen = digest(inputs), steps.get(step)
        if (
            isinstance(seen, dict)
            and seen.get("inputs") == key
            and all(p.exists() for p in outputs)
            and seen.get("outputs") == digest(outputs)
            and isinstance(seen.get("seconds"), (int, float))
            and math.isfinite(seen["seconds"])
        ):
            record = StepRecord(step, "reused", float(seen["seconds"]), [str(p) for p in outputs])
        else:
            start = time.perf_counter()
            compute()
            missing = [p for p in outputs if not p.exists()]
            if missing:
                raise RuntimeError(f"step {step} did not write {missing[0]}")
            record = StepRecord(step, "ran", time.perf_counter() - start, [str(p) for p in outputs])
            steps[step] = {"inputs": key, "outputs": digest(outputs), "seconds": record.seconds}
            write_text(self.path(STEPS_FILE), json.dumps(steps, indent=1))
        self.records.append(record)
        if self.bar is not None:
            self.bar.update(1)
        return record

    def record_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self.records], columns=["step", "status", "seconds", "outputs"])


def open_job(
    config: RunConfig, work: str | os.PathLike, out: str | os.PathLike, progress: bool = True, model: str = MODEL
) -> Job:
    """The job for `config` on the demo model `model` in ``work/<run_key>`` (created; a folder from a killed run with
    the same key is reused). The key covers the model's shipped weights, so each model has its own folders."""
    demo = demo_model(model)
    folder = Path(work) / run_key(config, weights_digest((demo.weights, CLIP_DIR)))
    folder.mkdir(parents=True, exist_ok=True)
    settings = asdict(config) if demo.name == MODEL else {"model": demo.name, **asdict(config)}
    write_text(folder / "config.json", json.dumps(settings, indent=1) + "\n")
    return Job(config, folder, Path(out), progress, model=demo)


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
