"""Progressive removal (SSD-1B / Segmind-Vega, Gupta et al., 2024, arXiv:2401.02677): score, remove, distil, repeat.

Round r of K scores the current student (round 1: the teacher) with one criterion, searches (:mod:`prune_lab.search`)
the removal that meets the round's budget, applies it to the current student's weights and distils the result from
the *original* teacher with the layer-level losses (by default features at every kept unit, as SSD-1B does). Budgets
are fractions of the original teacher and shrink geometrically: round r allows f^(r/K) of the teacher for a final
fraction f, so every round removes the same share of what is left (the "least important share" of the issue), and
round K's budget is the target itself. `schedule="linear"` takes equal steps 1 - r(1 - f)/K instead.

Plans are restated against the teacher every round (:mod:`.compose`), so each round's `plan.json` / `unit_map.json`
and the final student are relative to the original teacher, and `load_pruned`, `report` and `eval` read them.

Layout of `out`: `progressive.json` (settings), `round-<r>/` (`scores.csv`, `plan.json`, `pruned/` as `apply` writes,
`distill/` a `distill` run, `round.json` once the round is done), `rounds.csv` / `rounds.json` / `rounds.md` (the
table of rounds) and `student/` (the final student, as `apply` writes it). Every stage is skipped when its output
exists, scoring resumes its progress files and distillation its checkpoints, so the same call after a kill at any
point finishes with the student an uninterrupted run gives, bit for bit.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..backbones import backbone_for, make_plan, walk
from ..formats.block import apply_plan
from ..models import load_unet
from ..plan import Plan
from ..runtime.atomic import OUTPUT_MARKER, write_csv, write_json, write_text
from ..runtime.budget import RESOURCES, Budget, parse_budget
from ..runtime.loading import LoadedModel
from ..runtime.tables import render
from ..runtime.validate import read_json
from ..scoring import read_scores, score_model
from ..scoring.inputs import CalibrationSource
from ..search import DEFAULT_STRATEGY, build_problem, get_strategy, search
from ..search.costs import exact_costs
from .compose import Restatement, into_teacher_layout, origins, removed_atoms, restated_problem
from .files import load_student
from .recipe import DistillConfig, DistillRecipe

SCHEDULES = ("geometric", "linear")
SETTINGS = "progressive.json"
#: Resources a progressive budget may bound (counted on `meta` weights; latency would need timings per round).
COUNTED = ("params", "macs", "macs_with_attention")


def fractions(final: float, rounds: int, schedule: str = "geometric") -> list[float]:
    """The budget of each round as a fraction of the teacher; the last is `final` exactly.

    Raises:
        ValueError: `final` not in (0, 1], `rounds` < 1 or an unknown schedule.
    """
    if not 0 < final <= 1:
        raise ValueError(f"--target: the final budget must be a fraction in (0, 1] of the teacher, got {final}")
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "linear":
        steps = [1 - r * (1 - final) / rounds for r in range(1, rounds)]
    else:
        steps = [final ** (r / rounds) for r in range(1, rounds)]
    return [*steps, final]


@dataclass
class ProgressiveConfig:
    """Everything `prunelab progressive` takes.

    Attributes:
        model / data / out: the teacher, the distillation data, the output folder.
        target: final budget, `RESOURCE=VALUE` (params, macs or macs_with_attention; a fraction or an amount).
        rounds / schedule: K rounds, budgets shrinking `geometric` (default) or `linear` (see the module docstring).
        criterion / units / calibration / timesteps / options / device: scoring, as `prunelab score` takes them.
        strategy / expressible: the search, as `prunelab plan --target` takes them (default: the plan search's,
            `exact`); on a student it admits only removals that restate against the teacher (:mod:`.compose`).
        steps_per_round: optimizer steps of distillation per round.
        training: further :class:`DistillConfig` fields (batch_size, lr, lambdas, feature_layers ...).
    """

    model: str
    data: str
    out: str
    target: str
    rounds: int
    criterion: str
    steps_per_round: int
    schedule: str = "geometric"
    strategy: str = DEFAULT_STRATEGY
    expressible: bool = False
    units: str = "blocks"
    calibration: CalibrationSource = field(default_factory=CalibrationSource)
    timesteps: int = 2
    options: dict = field(default_factory=dict)
    device: str | None = None
    training: dict = field(default_factory=lambda: {"feature_layers": "units"})
    progress: bool = True

    def budget(self) -> Budget:
        budget = parse_budget(self.target)
        if budget.resource not in COUNTED:
            raise ValueError(f"--target {self.target}: progressive budgets are one of {', '.join(COUNTED)}")
        return budget

    def distill_config(self, student: Path, out: Path) -> DistillConfig:
        """The recipe of one round: from the original teacher, resumed from its latest checkpoint if any."""
        values = {"checkpoint_every": max(1, self.steps_per_round // 4), **self.training}
        cfg = DistillConfig(
            self.model, str(student), self.data, str(out), max_steps=self.steps_per_round, resume="latest", **values
        )
        cfg.progress = self.progress
        return cfg

    def check(self) -> None:
        """Raise ValueError naming the first bad setting (before any model loads)."""
        self.budget()
        fractions(0.5, self.rounds, self.schedule)
        try:
            get_strategy(self.strategy)
        except ValueError as e:
            raise ValueError(f"--strategy {self.strategy}: {e}") from None
        if self.steps_per_round < 1:
            raise ValueError(f"--steps-per-round must be >= 1, got {self.steps_per_round}")
        cfg = self.distill_config(Path("student"), Path(self.out))
        cfg.check()
        if cfg.checkpoint_every < 1:
            raise ValueError("--checkpoint-every must be >= 1 for progressive (a killed round resumes from them)")

    def record(self) -> dict:
        """The settings as JSON (what a resumed run must match)."""
        data = asdict(self)
        data["calibration"] = {k: None if v is None else str(v) for k, v in asdict(self.calibration).items()}
        data.pop("progress"), data.pop("out")  # the folder itself may move
        return json_safe(data)


def json_safe(value: Any) -> Any:
    """Paths as strings, tuples as lists, recursively (what JSON round-trips)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def check_resumable(cfg: ProgressiveConfig) -> None:
    """Refuse to continue a run in `out` made with other settings (the flag and both values named)."""
    path = Path(cfg.out) / SETTINGS
    if not path.exists():
        return
    old, new = read_json(path, "progressive settings"), cfg.record()
    for key, value in new.items():
        if old.get(key) != value:
            raise ValueError(
                f"--{key.replace('_', '-')} {value} differs from {old.get(key)} of the run in {cfg.out} ({path}); "
                "pass the same settings to resume it, or another --out"
            )


@dataclass
class RoundResult:
    """One row of the table of rounds."""

    round: int
    budget_fraction: float
    params: int
    macs: int
    params_pct: float
    macs_pct: float
    units_removed: int
    importance_removed: float
    importance_total: float
    loss: float
    task: float
    out: float
    feat: float


@dataclass
class ProgressiveResult:
    """What a run did (the CLI formats it): the table of rounds, and the final student folder."""

    table: pd.DataFrame
    student: Path
    teacher_params: int
    teacher_macs: int


class Progressive:
    """The rounds of one run (see the module docstring); `run()` does or resumes them all."""

    def __init__(self, cfg: ProgressiveConfig) -> None:
        cfg.check()
        self.cfg, self.out = cfg, Path(cfg.out)
        self.budget = cfg.budget()

    # ---------------------------------------------------------------------------------------------- set-up
    def _start(self) -> None:
        from accelerate import PartialState

        check_resumable(self.cfg)
        self.state = PartialState()
        if self.state.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / OUTPUT_MARKER).write_text("written by prune_lab progressive\n")
            write_json(self.out / SETTINGS, self.cfg.record())
        self.state.wait_for_everyone()
        self.loaded = load_unet(self.cfg.model)
        self.teacher = self.loaded.unet.float().eval()
        self.graph = walk(self.teacher)
        self.latent = self.teacher.config.sample_size
        full = make_plan(self.teacher, [u.name for u in self.graph.atoms()], source=self.cfg.model, graph=self.graph)
        self.base, _ = exact_costs(self.teacher, full, self.latent)
        limit = self.budget.limit(self.base[self.budget.resource])
        final = limit / self.base[self.budget.resource]
        self.fractions = fractions(min(final, 1.0), self.cfg.rounds, self.cfg.schedule)

    # ---------------------------------------------------------------------------------------------- rounds
    def run(self) -> ProgressiveResult:
        self._start()
        rows, student = [], None
        for r in range(1, self.cfg.rounds + 1):
            rows.append(self._round(r, student))
            student = self._folder(r) / "distill"
            if self.state.is_main_process:
                self._write_table(rows)
        final = self._export(student)
        table = pd.DataFrame([asdict(row) for row in rows])
        return ProgressiveResult(table, final, int(self.base["params"]), int(self.base["macs"]))

    def _folder(self, r: int) -> Path:
        return self.out / f"round-{r}"

    def _round(self, r: int, student: Path | None) -> RoundResult:
        folder = self._folder(r)
        done = folder / "round.json"
        if done.exists():
            return RoundResult(**read_json(done, "round record"))
        folder.mkdir(exist_ok=True)
        scores = folder / "scores.csv"
        if not scores.exists():
            self._score(student, scores)
        if self.state.is_main_process:  # the search and the export once; every process distils
            if not (folder / "plan.json").exists():
                self._plan(r, student, scores).save(folder / "plan.json")
            if not (folder / "pruned").exists():
                self._apply(student, Plan.load(folder / "plan.json"), folder / "pruned")
        self.state.wait_for_everyone()
        plan = Plan.load(folder / "plan.json")
        torch.manual_seed(self.cfg.training.get("seed", 0))
        recipe = DistillRecipe(self.cfg.distill_config(folder / "pruned", folder / "distill"))
        recipe.run()
        row = self._row(r, plan, folder / "distill" / "losses.csv")
        if self.state.is_main_process:
            write_json(done, asdict(row))
        self.state.wait_for_everyone()
        return row

    def _score(self, student: Path | None, out: Path) -> None:
        cfg = self.cfg
        score_model(
            str(student) if student is not None else cfg.model,
            [cfg.criterion],
            out,
            units=cfg.units,
            calibration=cfg.calibration,
            timesteps=cfg.timesteps,
            options=cfg.options,
            device=cfg.device,
            resume=True,
            progress=cfg.progress,
        )

    def _current(self, student: Path | None):
        """(student model, its teacher-relative plan or None, student -> teacher unit map) of the current student."""
        if student is None:
            return self.teacher, None, backbone_for(self.teacher).unit_map(self.teacher, identity=True)
        bundle = load_student(student, self.teacher)
        return bundle.unet, bundle.plan, bundle.unit_map

    def _plan(self, r: int, student: Path | None, scores: Path) -> Plan:
        model, before_plan, umap = self._current(student)
        graph = walk(model)
        mapped = origins(graph, self.graph, umap)
        restatement = Restatement(self.teacher, self.graph, removed_atoms(self.graph, before_plan), mapped)
        resource = self.budget.resource
        fraction = self.fractions[r - 1]
        limit = fraction * self.base[resource]
        problem = build_problem(
            model,
            read_scores(scores),
            criterion=self.cfg.criterion,
            keep_units=[u.name for u in graph.atoms() if u.name not in mapped],  # substitutes stay
            expressible=self.cfg.expressible,
            source=str(student or self.cfg.model),
            where=str(scores),
        )
        text = f"{resource}={fraction:.6g} (round {r} of {self.cfg.rounds}, of the teacher)"
        found = search(restated_problem(problem, restatement), Budget(resource, limit, False, text), self.cfg.strategy)
        meta = {
            "progressive": {
                "round": r,
                "rounds": self.cfg.rounds,
                "schedule": self.cfg.schedule,
                "target": self.cfg.target,
                "fraction": fraction,
                "limit": limit,
                "removed_this_round": sorted(mapped[a] for a in found.removed),
                "importance_removed": found.importance_lost,
                "importance_total": found.importance_total,
            },
            "search": found.plan.meta.get("search", {}),
        }
        plan, _ = restatement.plan(found.removed, source=self.cfg.model, meta=meta)
        costs, compacted = exact_costs(self.teacher, plan, self.latent)
        if costs[resource] > limit:
            spec = RESOURCES.get(resource)
            raise ValueError(
                f"round {r}: the plan restated against the teacher has {spec.format(costs[resource])} {resource}, "
                f"over the round's budget {spec.format(limit)}; try --expressible"
            )
        plan.meta.update(
            student_params=int(costs["params"]),
            predicted={k: int(v) for k, v in costs.items()},
            expressible=compacted.expressible,
        )
        return plan

    def _apply(self, student: Path | None, plan: Plan, out: Path) -> None:
        """Export `plan` (teacher-relative) into `out` as `apply` does, with the current student's weights."""
        model, before_plan, umap = self._current(student)
        weights = self.teacher if before_plan is None else into_teacher_layout(self.teacher, model, before_plan, umap)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # a killed export's staging folder, ours to remove
            shutil.rmtree(stale)
        loaded = LoadedModel(weights, self.loaded.source, self.loaded.kind, self.loaded.root)
        apply_plan(loaded, plan, out)

    def _row(self, r: int, plan: Plan, losses: Path) -> RoundResult:
        info, predicted = plan.meta["progressive"], plan.meta["predicted"]
        last = pd.read_csv(losses).iloc[-1]
        return RoundResult(
            round=r,
            budget_fraction=info["fraction"],
            params=predicted["params"],
            macs=predicted["macs"],
            params_pct=round(100 * predicted["params"] / self.base["params"], 2),
            macs_pct=round(100 * predicted["macs"] / self.base["macs"], 2),
            units_removed=len(info["removed_this_round"]),
            importance_removed=float(info["importance_removed"]),
            importance_total=float(info["importance_total"]),
            loss=float(last["loss"]),
            task=float(last["task"]),
            out=float(last["out"]),
            feat=float(last["feat"]),
        )

    def _write_table(self, rows: list[RoundResult]) -> None:
        table = pd.DataFrame([asdict(row) for row in rows])
        write_csv(self.out / "rounds.csv", table)
        write_json(self.out / "rounds.json", [asdict(row) for row in rows])
        write_text(self.out / "rounds.md", render(table.round(4), "markdown") + "\n")

    def _export(self, student: Path) -> Path:
        """The last round's distilled student as `apply` writes it, into `out/student` (relative to the teacher)."""
        final = self.out / "student"
        if self.state.is_main_process and not final.exists():
            self._apply(student, Plan.load(student / "plan.json"), final)
        self.state.wait_for_everyone()
        return final


def run_progressive(cfg: ProgressiveConfig) -> ProgressiveResult:
    """Run (or resume) progressive removal with `cfg` (see the module docstring)."""
    return Progressive(cfg).run()
