"""Arm specs of `prunelab study`: the grammar, parsed and checked where the flags enter (import-cheap, no torch).

An arm is one or more *terms* joined by ``/``; at most one of each kind:

* a plan term: ``preset:NAME`` (a published architecture), ``criterion:C@RESOURCE=VALUE[,strategy=S]`` (the plan
  search of `prunelab plan --target` on criterion C's scores), ``progressive:C@RESOURCE=VALUE,rounds=K`` (SSD-1B's
  progressive removal, `prunelab progressive`, its K rounds sharing the study's steps);
* ``init:teacher`` (default) or ``init:random`` (BK-SDM Table 4's random initialisation of the student);
* ``kd:LOSSES``: the retraining objective, ``+``-joined from ``task``, ``out``, ``feat`` and ``norm-feat``
  (LAPTOP-Diff's feature loss normalised by the teacher feature's squared norm); the listed terms are weighted 1,
  the others 0. ``kd:norm-feat`` alone means ``kd:task+out+norm-feat``. Without a kd term an arm keeps the
  study's objective (its ``--lambda-*`` flags).

An arm without a plan term modifies the study's base plan (``--base``), so ``kd:task`` with ``--base preset:bk-small``
is ``preset:bk-small/kd:task``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from ..runtime.budget import RESOURCES, parse_budget

PLAN_KINDS = ("preset", "criterion", "progressive")
INITS = ("teacher", "random")
LOSSES = ("task", "out", "feat", "norm-feat")
#: What the arm grammar looks like, for messages and `--help`.
GRAMMAR = (
    "TERM[/TERM...] with TERM one of preset:NAME, criterion:C@params=X[,strategy=S], "
    "progressive:C@params=X,rounds=K[,strategy=S], init:teacher|random, "
    "kd:task[+out][+feat|+norm-feat] or kd:norm-feat"
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class PlanSpec:
    """Where an arm's student comes from.

    Attributes:
        kind: `preset`, `criterion` or `progressive`.
        name: the preset or the criterion.
        budget: ``RESOURCE=VALUE`` (criterion and progressive).
        strategy: the search strategy (criterion; None: the plan search's default).
        rounds: removal rounds (progressive).
    """

    kind: str
    name: str
    budget: str | None = None
    strategy: str | None = None
    rounds: int | None = None

    @property
    def text(self) -> str:
        """The canonical spec."""
        if self.kind == "preset":
            return f"preset:{self.name}"
        options = [f"strategy={self.strategy}"] if self.strategy else []
        options += [f"rounds={self.rounds}"] if self.rounds else []
        return f"{self.kind}:{self.name}@{','.join([self.budget, *options])}"

    @property
    def criterion(self) -> str | None:
        """The criterion whose scores the plan needs (None for a preset)."""
        return None if self.kind == "preset" else self.name


@dataclass(frozen=True)
class Arm:
    """One arm: a plan, an initialisation and a retraining objective.

    Attributes:
        plan: the student's plan.
        init: `teacher` or `random`.
        losses: the kd term's losses (empty: the study's objective).
    """

    plan: PlanSpec
    init: str = "teacher"
    losses: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """The canonical spec (plan, then init and kd when not the defaults)."""
        terms = [self.plan.text]
        terms += [f"init:{self.init}"] if self.init != "teacher" else []
        terms += [f"kd:{'+'.join(self.losses)}"] if self.losses else []
        return "/".join(terms)

    @property
    def slug(self) -> str:
        """A folder name for the arm: its spec made file-safe, with a short hash of the spec."""
        return _slug(self.name)

    @property
    def retrained_by_study(self) -> bool:
        """Whether the study retrains this arm's student itself (a progressive arm is retrained while it prunes)."""
        return self.plan.kind != "progressive"


def _slug(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")
    return f"{safe[:60]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def plan_slug(plan: PlanSpec) -> str:
    """A folder name for a plan's student (shared by every arm with this plan)."""
    return _slug(plan.text)


def _fail(spec: str, problem: str) -> ValueError:
    return ValueError(f"arm {spec!r}: {problem}; an arm is {GRAMMAR}")


def _options(spec: str, text: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``C@RESOURCE=VALUE[,key=value...]`` -> (C, {"budget": ..., key: value})."""
    name, at, rest = text.partition("@")
    if not at or not name or not _NAME.match(name):
        raise _fail(spec, f"{text!r} needs a criterion and a budget, e.g. magnitude@params=0.56")
    budget, *pairs = rest.split(",")
    try:
        parsed = parse_budget(budget)
    except ValueError as e:
        raise _fail(spec, str(e)) from None
    if RESOURCES.get(parsed.resource).measured:
        raise _fail(spec, f"budget {budget!r} is timed; a study compares plans on counted budgets (params, macs)")
    options = {"budget": budget}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key not in allowed or not value or key in options:
            raise _fail(spec, f"option {pair!r}: allowed once each: {', '.join(k + '=...' for k in allowed)}")
        options[key] = value
    return name, options


def _plan_term(spec: str, kind: str, value: str) -> PlanSpec:
    if kind == "preset":
        if not _NAME.match(value):
            raise _fail(spec, f"preset {value!r} is not a name")
        return PlanSpec("preset", value)
    allowed = ("strategy",) if kind == "criterion" else ("rounds", "strategy")
    name, options = _options(spec, value, allowed)
    strategy = options.get("strategy")
    if strategy is not None and not _NAME.match(strategy):
        raise _fail(spec, f"strategy {strategy!r} is not a name")
    if kind == "criterion":
        return PlanSpec("criterion", name, options["budget"], strategy=strategy)
    rounds = options.get("rounds", "")
    if not rounds.isdigit() or int(rounds) < 1:
        raise _fail(spec, f"progressive needs rounds=K with K >= 1, got {rounds or 'none'!r}")
    return PlanSpec("progressive", name, options["budget"], rounds=int(rounds), strategy=strategy)


def _losses(spec: str, value: str) -> tuple[str, ...]:
    if value == "norm-feat":
        return ("task", "out", "norm-feat")
    parts = value.split("+")
    if not value or any(p not in LOSSES for p in parts) or len(set(parts)) != len(parts):
        raise _fail(spec, f"kd:{value}: losses are {'+'.join(LOSSES)} (each at most once)")
    if "feat" in parts and "norm-feat" in parts:
        raise _fail(spec, "kd: feat and norm-feat are two forms of one loss; choose one")
    return tuple(p for p in LOSSES if p in parts)


def parse_terms(spec: str) -> tuple[PlanSpec | None, str | None, tuple[str, ...] | None]:
    """The (plan, init, losses) terms of `spec` (None where a term is absent).

    Raises:
        ValueError: bad syntax, an unknown term kind, a repeated kind (naming the spec).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(str(spec), "empty")
    plan = init = losses = None
    for term in spec.split("/"):
        kind, colon, value = term.partition(":")
        if not colon or not value:
            raise _fail(spec, f"term {term!r} is not KIND:VALUE")
        if kind in PLAN_KINDS:
            if plan is not None:
                raise _fail(spec, "two plan terms (preset / criterion / progressive); an arm has one")
            plan = _plan_term(spec, kind, value)
        elif kind == "init":
            if init is not None or value not in INITS:
                raise _fail(spec, f"init:{value}: one init term, teacher or random")
            init = value
        elif kind == "kd":
            if losses is not None:
                raise _fail(spec, "two kd terms; join the losses with + in one")
            losses = _losses(spec, value)
        else:
            raise _fail(spec, f"unknown term kind {kind!r}")
    return plan, init, losses


def parse_base(spec: str) -> PlanSpec:
    """``--base``: a single plan term.

    Raises:
        ValueError: anything but one plan term.
    """
    plan, init, losses = parse_terms(spec)
    if plan is None or init is not None or losses is not None:
        raise ValueError(f"--base {spec!r} must be one plan term (preset:NAME, criterion:C@params=X, ...)")
    return plan


def parse_arm(spec: str, base: PlanSpec | None = None) -> Arm:
    """The arm `spec` describes; an arm without a plan term takes `base`.

    Raises:
        ValueError: a bad spec, a plan-less arm without `base`, or a combination that cannot run (naming the spec).
    """
    plan, init, losses = parse_terms(spec)
    if plan is None:
        if base is None:
            raise _fail(spec, "no plan term and no --base; give one (e.g. --base preset:bk-small)")
        plan = base
    if plan.kind == "progressive" and init == "random":
        raise _fail(spec, "a progressive arm starts from the teacher; init:random does not apply")
    return Arm(plan, init or "teacher", losses or ())


def parse_arms(specs: list[str], base: str | None = None) -> list[Arm]:
    """Every arm of `specs` (with ``--base`` `base`), refusing two specs that mean the same arm.

    Raises:
        ValueError: the first bad spec, or a duplicate.
    """
    base_plan = parse_base(base) if base is not None else None
    arms, seen = [], {}
    for spec in specs:
        arm = parse_arm(spec, base_plan)
        if arm.name in seen:
            raise ValueError(f"arm {spec!r} is the same arm as {seen[arm.name]!r} ({arm.name}); list it once")
        seen[arm.name] = spec
        arms.append(arm)
    if not arms:
        raise ValueError("--arms: give at least one arm")
    return arms


def loss_weights(losses: tuple[str, ...]) -> dict[str, float]:
    """`DistillConfig` loss weights of a kd term: 1 for each listed loss, 0 for the others."""
    return {
        "lambda_task": float("task" in losses),
        "lambda_out": float("out" in losses),
        "lambda_feat": float("feat" in losses or "norm-feat" in losses),
    }
