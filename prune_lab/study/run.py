"""`run_study`: every arm pruned, retrained with one recipe, and measured on the same prompts and noises (what
`prunelab study` runs).

The work folder holds one sub-folder per task output: ``scores/`` (one table per criterion), ``students/`` (one
export per plan, shared by the arms that use it), ``arms/`` (one retraining run per arm), ``images/`` and
``measure/`` (per model), ``costs/`` (per set of models). Each task runs once (:mod:`prune_lab.study.work`), so a
killed study resumes where it stopped, and ``jobs`` processes (or separate invocations) share the tasks.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .metrics import MetricInputs, check_metric, get_metric
from .specs import Arm, PlanSpec, loss_weights, parse_arms, parse_base, plan_slug
from .work import check_settings, once


@dataclass
class Recipe:
    """The one retraining recipe of every arm (`prunelab distill`'s flags; arms change only init and losses)."""

    steps: int = 400
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    seed: int = 0
    resolution: int = 512
    flip: bool = True
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0
    feature_layers: str = "stages"
    checkpoint_every: int = 100


@dataclass
class Sampling:
    """How every model draws the study's prompts (image i from the initial noise of seed ``(seed, i)``)."""

    scheduler: str | None = None  # None: the model family's sampler
    steps: int = 20
    guidance: float = 7.5
    seed: int = 0
    batch_size: int = 8


@dataclass
class StudyConfig:
    """A study: the teacher, the arms, the shared recipe, data, prompts and metrics.

    Attributes:
        model: the teacher (`--model` of any subcommand; a pipeline).
        data: the retraining (and calibration) image-text folder.
        prompts: the prompt file every model draws.
        arms: arm specs (:mod:`prune_lab.study.specs`); base: the plan of plan-less arms.
        metrics: registered study metrics, the first one ranks arms; metric_options: their settings.
        criteria: more criteria to score, for the importance-lost analysis only.
        calib_samples / calib_prompts: calibration of the scores.
        before: also measure each plan's student before retraining.
        latency_runs: timed runs of the reporter's latency per model (0: none).
    """

    model: str
    data: str
    prompts: str
    arms: tuple[str, ...]
    base: str | None = None
    recipe: Recipe = field(default_factory=Recipe)
    sampling: Sampling = field(default_factory=Sampling)
    metrics: tuple[str, ...] = ("clip-score",)
    metric_options: dict = field(default_factory=dict)
    criteria: tuple[str, ...] = ()
    calib_samples: int = 8
    calib_prompts: str | None = None
    before: bool = True
    latency_runs: int = 3

    def parsed_arms(self) -> list[Arm]:
        return parse_arms(list(self.arms), self.base)

    def settings(self) -> dict:
        """What a work folder's results depend on (everything but the arms: invocations may split them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("arms",)}

    def scored(self) -> list[str]:
        """Every criterion the study scores: the arms' plans' first, then `criteria`."""
        names = [a.plan.criterion for a in self.parsed_arms() if a.plan.criterion]
        base = [parse_base(self.base).criterion] if self.base else []
        return list(dict.fromkeys([*names, *[b for b in base if b], *self.criteria]))

    def check(self) -> list[Arm]:
        """Refuse bad settings before any work; the parsed arms.

        Raises:
            ValueError / FileNotFoundError: a bad arm, criterion, strategy, preset, metric, or a missing input.
        """
        from ..scoring import get_criterion
        from ..search import get_strategy

        try:
            arms = self.parsed_arms()
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("--") else f"--arms: {e}") from None
        for name in self.scored():
            get_criterion(name)
        for arm in arms:
            if arm.plan.strategy:
                get_strategy(arm.plan.strategy)
            if arm.plan.kind == "progressive" and self.recipe.steps % arm.plan.rounds:
                raise ValueError(
                    f"arm {arm.name!r}: --steps {self.recipe.steps} is not divisible by rounds={arm.plan.rounds} "
                    "(progressive rounds share the study's steps equally); choose --steps divisible by it"
                )
            if "norm-feat" in arm.losses and "feature_loss" not in _distill_fields():
                raise ValueError(
                    f"arm {arm.name!r}: this prune_lab's distill has no normalised feature loss (feature_loss)"
                )
        for name in self.metrics:
            check_metric(name, self.metric_options)
        for flag, path in (("--data", self.data), ("--prompts", self.prompts)):
            if not Path(path).exists():
                raise FileNotFoundError(f"{flag} {path} does not exist")
        return arms


def _distill_fields() -> set[str]:
    from ..distill.recipe import DistillConfig

    return {f.name for f in dataclasses.fields(DistillConfig)}


# ----------------------------------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """One unit of work: `make` writes its outputs and returns the record written to `marker`."""

    name: str
    marker: Path
    make: Callable[[], dict]
    after: tuple[str, ...] = ()


class Study:
    """A study's tasks in its work folder (see the module docstring)."""

    def __init__(self, config: StudyConfig, work: str | os.PathLike, progress: bool = True):
        self.config, self.work, self.progress = config, Path(work), progress
        self.arms = config.parsed_arms()
        self._cache: dict = {}

    # paths
    def scores(self, criterion: str) -> Path:
        return self.work / "scores" / f"{criterion}.csv"

    def student(self, plan: PlanSpec) -> Path:
        return self.work / "students" / plan_slug(plan)

    def trained(self, arm: Arm) -> Path:
        """The retrained arm's pipeline folder (a progressive arm's final export)."""
        out = self.work / "arms" / arm.slug
        return out if arm.retrained_by_study else _progressive_export(out)

    def models(self) -> dict[str, Path | str]:
        """Model key -> folder, in report order: teacher, each plan's student before retraining, each arm."""
        out: dict[str, Path | str] = {"teacher": self.config.model}
        if self.config.before:
            for arm in self.arms:
                if arm.retrained_by_study:
                    out[f"before:{arm.plan.text}"] = self.student(arm.plan)
        for arm in self.arms:
            out[f"arm:{arm.name}"] = self.trained(arm)
        return out

    # makers
    def _score(self, criterion: str) -> dict:
        from ..scoring import CalibrationSource, score_model

        c = self.config
        source = CalibrationSource(
            folder=c.data, prompts=c.calib_prompts, samples=c.calib_samples, seed=c.recipe.seed, batch_size=4
        )
        clip = {k: v for k, v in c.metric_options.items() if k.startswith("clip_") and v}
        options = clip if criterion == "clip" else {}
        run = score_model(
            c.model,
            [criterion],
            self.scores(criterion),
            calibration=source,
            options=options,
            resume=True,
            progress=self.progress,
        )
        return {"criterion": criterion, "units": run.units}

    def _plan(self, plan: PlanSpec):
        from ..backbones import create_plan
        from ..models import load_unet
        from ..runtime.budget import parse_budget
        from ..scoring import read_scores
        from ..search import build_problem, search

        loaded = load_unet(self.config.model)
        if plan.kind == "preset":
            return loaded, create_plan(loaded.unet, plan.name, source=self.config.model)
        where = str(self.scores(plan.name))
        problem = build_problem(
            loaded.unet, read_scores(where), criterion=plan.name, source=self.config.model, where=where
        )
        strategy = {"strategy": plan.strategy} if plan.strategy else {}
        return loaded, search(problem, parse_budget(plan.budget), **strategy).plan

    def _build(self, plan: PlanSpec) -> dict:
        from ..formats.block import apply_plan

        loaded, made = self._plan(plan)
        result = apply_plan(loaded, made, self.student(plan))
        return {"plan": plan.text, "student_params": result.student_params}

    def _retrain(self, arm: Arm) -> dict:
        from ..distill.recipe import DistillConfig, DistillRecipe

        r, out = self.config.recipe, self.work / "arms" / arm.slug
        weights = loss_weights(arm.losses) if arm.losses else {k: getattr(r, k) for k in loss_weights(())}
        extra = {"feature_loss": "normalized"} if "norm-feat" in arm.losses else {}
        if not arm.retrained_by_study:
            return self._progressive(arm, out, weights, extra)
        cfg = DistillConfig(
            teacher=str(self.config.model), student=str(self.student(arm.plan)), data=str(self.config.data),
            out=str(out), max_steps=r.steps, batch_size=r.batch_size, grad_accum=r.grad_accum, lr=r.lr, seed=r.seed,
            resolution=r.resolution, flip=r.flip, feature_layers=r.feature_layers, random_init=arm.init == "random",
            checkpoint_every=r.checkpoint_every, checkpoints_limit=1, resume="latest", num_workers=0,
            progress=self.progress, **weights, **extra,
        )  # fmt: skip
        result = DistillRecipe(cfg).run()
        return {"arm": arm.name, "step": result.step, "last": result.last}

    def _progressive(self, arm: Arm, out: Path, weights: dict, extra: dict) -> dict:
        """`prunelab progressive` for a progressive arm, its rounds sharing the study's steps."""
        r, p = self.config.recipe, arm.plan
        command = [
            sys.executable, "-m", "prune_lab.cli", "progressive", "--model", str(self.config.model),
            "--data", str(self.config.data), "--target", p.budget, "--rounds", str(p.rounds), "--criterion", p.name,
            "--steps-per-round", str(r.steps // p.rounds), "--out", str(out), "--batch-size", str(r.batch_size),
            "--lr", str(r.lr), "--lambda-task", str(weights["lambda_task"]), "--lambda-out",
            str(weights["lambda_out"]), "--lambda-feat", str(weights["lambda_feat"]), "--feature-layers",
            r.feature_layers, "--seed", str(r.seed), "--resolution", str(r.resolution), "--grad-accum",
            str(r.grad_accum), "--checkpoint-every", str(max(r.checkpoint_every, 1)), "--num-workers", "0",
            "--calib-dir", str(self.config.data), "--calib-samples", str(self.config.calib_samples),
            "--calib-batch-size", "4",
            # prefix caching is an exact speed-up of ablation, but the staged U-Net forward does not yet handle a
            # student stage left with no slot, which a round's plan can produce: the naive sweep, same scores
            "--no-prefix-cache",
        ]  # fmt: skip
        command += ["--no-flip"] if not r.flip else []
        command += ["--feature-loss", "normalized"] if extra else []
        command += ["--strategy", p.strategy] if p.strategy else []
        env = {**os.environ, **({"OMP_NUM_THREADS": str(torch_threads())} if torch_threads() else {})}
        done = subprocess.run(command, capture_output=not self.progress, text=True, env=env)
        if done.returncode != 0:
            raise ValueError(
                f"arm {arm.name!r}: `{' '.join(command[2:])}` failed (exit {done.returncode}): "
                + ((done.stderr or "").strip().splitlines() or ["see its output above"])[-1]
            )
        return {"arm": arm.name, "command": command[2:], "export": str(_progressive_export(out))}

    def _measure(self, key: str, folder: Path | str) -> dict:
        from ..evaluation.generate import GenerationConfig, generate_images, load_pipeline
        from ..evaluation.images import paired_images
        from ..evaluation.prompts import read_prompts

        s, prompts = self.config.sampling, read_prompts(self.config.prompts)
        images = self.work / "images" / _file_key(key)
        pipe = load_pipeline(str(folder), scheduler=s.scheduler)
        config = GenerationConfig(
            steps=s.steps, guidance=s.guidance, scheduler=s.scheduler, seed=s.seed, batch_size=s.batch_size
        )
        generate_images(pipe, prompts, images, config, progress=self.progress)
        files = paired_images(images, prompts)
        values = {}
        for name in self.config.metrics:
            inputs = MetricInputs(
                files, prompts, {**self.config.metric_options, "progress": self.progress}, self._cache
            )
            for value, result in get_metric(name).measure(inputs).items():
                values[f"{name}:{value}"] = np.atleast_1d(np.asarray(result, dtype=float)).tolist()
        return {"model": key, "folder": str(folder), "values": values}

    def _costs(self) -> dict:
        from ..models import load_unet
        from ..report import LatencySettings, compare, comparison_frame

        models = self.models()
        variants = [str(f) for k, f in models.items() if k != "teacher"]
        runs = self.config.latency_runs
        latency = LatencySettings(runs=runs, warmup=1) if runs else None
        reports = compare(load_unet(self.config.model), variants, latency=latency)
        frame = comparison_frame(reports)
        frame.insert(0, "key", list(models))
        backbone = reports[0].backbone  # the cost columns' prefix: unet / transformer
        keep = ["key", f"{backbone}_params_M", f"{backbone}_macs_G", "whole_macs_G", "latency_median_ms"]
        return {"rows": frame[[k for k in keep if k in frame]].to_dict("records")}

    def tasks(self) -> list[Task]:
        """Every task in dependency order."""
        w, out = self.work, []
        for criterion in self.config.scored():
            out.append(
                Task(f"score {criterion}", w / "scores" / f"{criterion}.done.json", lambda c=criterion: self._score(c))
            )
        plans = {a.plan.text: a.plan for a in self.arms if a.retrained_by_study}
        for text, plan in plans.items():
            needs = (f"score {plan.criterion}",) if plan.criterion else ()
            out.append(
                Task(
                    f"student {text}",
                    w / "students" / f"{plan_slug(plan)}.done.json",
                    lambda p=plan: self._build(p),
                    needs,
                )
            )
        for arm in self.arms:
            needs = (f"student {arm.plan.text}",) if arm.retrained_by_study else ()
            out.append(
                Task(
                    f"retrain {arm.name}", w / "arms" / f"{arm.slug}.done.json", lambda a=arm: self._retrain(a), needs
                )
            )
        trained = tuple(f"retrain {a.name}" for a in self.arms)
        for key in self.models():
            needs = (
                (f"retrain {key[4:]}",)
                if key.startswith("arm:")
                else (f"student {key[7:]}",)
                if key.startswith("before:")
                else ()
            )
            out.append(
                Task(f"measure {key}", self.measured(key), lambda k=key: self._measure(k, self._folder(k)), needs)
            )
        out.append(Task("costs", self.costs_path(), self._costs, trained))
        return out  # fmt: skip

    def costs_path(self) -> Path:
        """The cost table of this study's models, named by their set: measured together (latencies on one machine
        state), and again when an arm joins a finished study."""
        import hashlib

        names = "\n".join(f"{k}={f}" for k, f in self.models().items())
        return self.work / "costs" / f"{hashlib.sha256(names.encode()).hexdigest()[:12]}.json"

    def measured(self, key: str) -> Path:
        return self.work / "measure" / f"{_file_key(key)}.json"

    def _folder(self, key: str) -> Path | str:
        if key.startswith("arm:"):
            return self.trained(next(a for a in self.arms if a.name == key[4:]))
        return self.models()[key]

    def run(self, poll_s: float = 5.0) -> None:
        """Run every task not done yet; wait for the ones other processes hold."""
        tasks = self.tasks()
        done = {t.name for t in tasks if t.marker.is_file()}
        with tqdm(total=len(tasks), initial=len(done), desc="study tasks", disable=not self.progress) as bar:
            while len(done) < len(tasks):
                moved = False
                for task in tasks:
                    if task.name in done or not all(a in done for a in task.after):
                        continue
                    bar.set_postfix_str(task.name[:60])
                    if once(task.marker, task.make):
                        done.add(task.name)
                        bar.update(1)
                        moved = True
                if not moved:
                    time.sleep(poll_s)


def _file_key(key: str) -> str:
    from .specs import _slug

    return _slug(key)


def _progressive_export(out: Path) -> Path:
    """Where `prunelab progressive --out DIR` writes its final export (the `apply` layout)."""
    return out / "student"


def torch_threads() -> int | None:
    """The torch CPU threads of this process when torch is loaded (so a child process can be given as many)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _worker(config: StudyConfig, work: str, threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    Study(config, work, progress=False).run()


def run_study(
    config: StudyConfig, work: str | os.PathLike, *, jobs: int = 1, threads: int | None = None, progress: bool = True
) -> dict:
    """Check `config`, run every task (in `jobs` processes), and collect the results (:mod:`.results`).

    Raises:
        ValueError / FileNotFoundError: bad settings, or a work folder holding another study.
    """
    import multiprocessing

    from .results import collect

    config.check()
    work = Path(work)
    check_settings(work, config.settings())
    study = Study(config, work, progress)
    helpers = [
        multiprocessing.get_context("spawn").Process(target=_worker, args=(config, str(work), threads))
        for _ in range(jobs - 1)
    ]
    for p in helpers:
        p.start()
    try:
        study.run()
    finally:
        for p in helpers:
            p.join()
    failed = [p.exitcode for p in helpers if p.exitcode]
    if failed:
        raise ValueError(f"{len(failed)} study worker process(es) failed (exit {failed}); rerun to resume")
    return collect(study)
