"""BK-SDM's retraining story in miniature (Kim et al., 2023, arXiv:2305.15798, Tables 3 / 4): cut blocks out of the
demo teacher with a preset, measure the student before retraining, then retrain it for the same number of steps with
the task loss only and with the task + output-KD + feature-KD objective, and measure every model on the same held-out
captions and initial noises.

Every arm shares the data, seed, learning rate, batch and step count; only the loss weights differ (:data:`ARMS`).
Caption accuracy is per image (:mod:`prune_lab.demo.quality`), so two models are compared on paired samples: the
standard error of a difference is that of the per-image differences.

Each step writes its output under a work folder and is skipped when the output is there, so a killed study resumes
(the distillation runs resume from their own checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime.atomic import write_figure, write_json, write_text
from ..runtime.tables import render
from . import PIPELINE_DIR, SAMPLING, distill_student

#: Retraining objectives compared by the study: loss weights passed to `DistillConfig` (BK-SDM Table 3 in small).
ARMS: dict[str, dict[str, float]] = {
    "task": {"lambda_task": 1.0, "lambda_out": 0.0, "lambda_feat": 0.0},
    "task+out-kd": {"lambda_task": 1.0, "lambda_out": 1.0, "lambda_feat": 0.0},
    "task+out-kd+feat-kd": {"lambda_task": 1.0, "lambda_out": 1.0, "lambda_feat": 1.0},
}


@dataclass
class StudyConfig:
    """What the study runs (the defaults were fixed before the first result and never tuned on the outcome).

    Attributes:
        preset: the block-removal preset that makes the student (``bk-small``: BK-SDM-Small's cut).
        arms: retraining objectives (keys of :data:`ARMS`), each run for `steps` steps.
        steps, batch_size, lr: the shared retraining budget (AdamW, constant learning rate, no EMA).
        data_n: training scenes written for retraining (the teacher's training split).
        n: held-out captions each model is measured on.
        seed: retraining seed (data order, noise) and initial-noise seed of the measurement.
    """

    preset: str = "bk-small"
    arms: tuple[str, ...] = tuple(ARMS)
    steps: int = 400
    batch_size: int = 32
    lr: float = 5e-4
    data_n: int = 4096
    n: int = 500
    seed: int = 0
    sampling: dict = field(default_factory=lambda: dict(SAMPLING))

    def check(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        for name in ("steps", "batch_size", "data_n", "n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def _json_atomic(path: Path, record) -> None:
    write_json(path, record)


def _check_work(config: StudyConfig, work: Path) -> None:
    """Record `config` in ``work/config.json``, or check that the study there used the same settings (the arms may
    differ: separate processes can retrain different arms in one work folder)."""
    wanted = {k: v for k, v in asdict(config).items() if k != "arms"}
    path = work / "config.json"
    if path.is_file():
        if json.loads(path.read_text()) != wanted:
            raise ValueError(f"{work} holds a study with other settings ({path}); pass another --work folder")
        return
    work.mkdir(parents=True, exist_ok=True)
    _json_atomic(path, wanted)


def _claim(record: Path) -> bool:
    """Take the measurement of `record` for this process (a ``.lock`` file holding our pid); False while another
    live process holds it. A lock left by a dead process is taken over."""
    lock = record.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def prepare(config: StudyConfig, work: Path) -> tuple[Path, Path]:
    """The retraining data folder and the pruned student (the preset applied to the demo teacher) under `work`."""
    from ..backbones import create_plan
    from ..formats.block import apply_plan
    from ..models import load_unet
    from .world import World, write_folder

    data, student = work / "data", work / "student"
    if not data.is_dir():
        write_folder(World(config.seed), "train", 0, config.data_n, data)
    if not (student / "plan.json").is_file():
        loaded = load_unet(str(PIPELINE_DIR))
        apply_plan(loaded, create_plan(loaded.unet, config.preset, source=str(PIPELINE_DIR)), student)
    return data, student


def retrain(config: StudyConfig, arm: str, data: Path, student: Path, work: Path, progress: bool = True) -> Path:
    """Retrain the pruned `student` with objective `arm` (resumes a killed run); the retrained pipeline folder."""
    out = work / "arms" / arm
    if (out / "unet").is_dir() and (out / "done.json").is_file():
        return out
    result = distill_student(
        student,
        data,
        out,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        progress=progress,
        **ARMS[arm],
    )
    _json_atomic(out / "done.json", {"step": result.step, "last": result.last})
    return out


def measure(
    config: StudyConfig, model: Path, record: Path, classifier, progress: bool = True
) -> dict[str, np.ndarray]:
    """Per-image correctness (attribute -> bool ``[n]``) of `model` on the held-out captions, cached in `record`."""
    from ..evaluation.generate import load_pipeline
    from .quality import generation_accuracy
    from .world import World

    if record.is_file():
        return {a: np.array(v, dtype=bool) for a, v in json.loads(record.read_text())["correct"].items()}
    s = config.sampling
    pipe = load_pipeline(str(model), scheduler=s["scheduler"])
    acc = generation_accuracy(
        classifier, pipe, World(config.seed), config.n, steps=s["steps"], guidance=s["guidance"], progress=progress
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    _json_atomic(record, {"model": str(model), "correct": {a: v.tolist() for a, v in acc.correct.items()}})
    return acc.correct


def summarize(correct: dict[str, dict[str, np.ndarray]], params: dict[str, int]) -> pd.DataFrame:
    """One row per model: U-Net params and, per attribute + ``colour+shape``, accuracy and binomial standard error."""
    rows = []
    for model, hits in correct.items():
        row = {"model": model, "unet_params_M": params[model] / 1e6}
        for name, h in {**hits, "colour+shape": hits["colour"] & hits["shape"]}.items():
            row[name] = float(h.mean())
            row[f"{name}_se"] = math.sqrt(h.mean() * (1 - h.mean()) / len(h))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(correct: dict[str, dict[str, np.ndarray]], pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """``a - b`` joint (colour+shape) accuracy for each pair, with the paired standard error ``sd(d) / sqrt(n)``."""
    rows = []
    for a, b in pairs:
        ja = correct[a]["colour"] & correct[a]["shape"]
        jb = correct[b]["colour"] & correct[b]["shape"]
        d = ja.astype(float) - jb.astype(float)
        rows.append({"a": a, "b": b, "difference": d.mean(), "se": d.std(ddof=1) / math.sqrt(len(d)), "n": len(d)})
    return pd.DataFrame(rows)


def run_study(config: StudyConfig, work: str | os.PathLike, *, progress: bool = True) -> dict:
    """Prepare, retrain every arm, measure teacher / pruned / retrained; returns the tables and the settings."""
    from ..models import load_unet
    from .quality import Classifier
    from .scorer import load_scorer

    config.check()
    work = Path(work)
    _check_work(config, work)
    data, student = prepare(config, work)
    models = {"teacher": PIPELINE_DIR, f"{config.preset} (not retrained)": student}
    for arm in config.arms:
        models[f"{config.preset} + {arm}"] = retrain(config, arm, data, student, work, progress)
    scorer, _, tokenizer = load_scorer()
    classifier = Classifier(scorer, tokenizer)
    correct, pending = {}, dict(models)
    while pending:  # a model another live process is measuring is left for later, then read from its record
        for name, folder in list(pending.items()):
            record = work / "quality" / f"{name.replace(' ', '').replace('(', '-').replace(')', '')}.json"
            if record.is_file() or _claim(record):
                correct[name] = measure(config, folder, record, classifier, progress)
                record.with_suffix(".lock").unlink(missing_ok=True)
                del pending[name]
        if pending:
            time.sleep(5)
    correct = {name: correct[name] for name in models}
    params = {name: sum(p.numel() for p in load_unet(str(f)).unet.parameters()) for name, f in models.items()}
    names = list(models)
    retrained = names[2:]
    pairs = [(r, names[1]) for r in retrained] + [(names[0], r) for r in retrained]
    pairs += [(retrained[-1], r) for r in retrained[:-1]]
    losses = {arm: pd.read_csv(work / "arms" / arm / "losses.csv") for arm in config.arms}
    return {
        "config": asdict(config),
        "summary": summarize(correct, params),
        "differences": paired_differences(correct, pairs),
        "losses": losses,
    }


def plot_study(result: dict, path: str | os.PathLike) -> Path:
    """Joint accuracy per model with 1.96 standard-error bars, and every arm's task loss by step (smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    y = np.arange(len(summary))
    left.barh(y, summary["colour+shape"], xerr=1.96 * summary["colour+shape_se"], color="tab:blue", alpha=0.8)
    left.set_yticks(y, summary["model"])
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("colour+shape accuracy of generations (95% CI)")
    for arm, losses in result["losses"].items():
        right.plot(losses["step"], losses["task"].rolling(25, min_periods=1).mean(), label=arm)
    right.set_xlabel("retraining step")
    right.set_ylabel("task (denoising) loss, 25-step mean")
    right.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return Path(path)


def study_report(result: dict, command: str, machine: str, minutes: float) -> str:
    """The Markdown report of a :func:`run_study` result (`command` regenerates it; it took `minutes` on
    `machine`)."""
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


def write_study_report(result: dict, out: str | os.PathLike, command: str, minutes: float) -> list[Path]:
    """Write `out/README.md` (:func:`study_report`), `out/results.json` (everything but the loss curves) and
    `out/study.png` (:func:`plot_study`).

    Returns:
        the paths written.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_study(result, out / "study.png")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"
    readme = write_text(out / "README.md", study_report(result, command, machine, minutes))
    record = {**result, "summary": result["summary"].to_dict("records")}
    record["differences"] = result["differences"].to_dict("records")
    record.pop("losses")
    return [readme, write_json(out / "results.json", record), figure]
