"""Budgeted plan search and the Pareto front of cost against importance lost.

:func:`build_problem` gathers a model, a score table and the constraints; :func:`search` runs a strategy and
returns the best plan it finds under a budget, and :func:`pareto_front` every plan the strategies pass through,
with the presets placed beside them.

Plans are never written from predictions alone: the cost model (:mod:`prune_lab.search.costs`) only steers; the
chosen plan's params and MACs are those the reporter counts on its compact student, and a budget is met when that
count is within it. Latency budgets are met by the per-unit timing prediction (`prunelab report --keep plan.json
--latency` measures the student).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch.nn as nn
from tqdm.auto import tqdm

from ..backbones import backbone_of, create_plan, list_presets, model_family, walk
from ..plan import Plan, expand_keep
from ..report import LatencySettings, profile_unet
from ..runtime.budget import RESOURCES, Budget
from .costs import PROFILED, build_cost_model, exact_costs
from .importance import importance_from_scores
from .latency import unit_latency
from .moves import candidate_moves, protected_atoms
from .problem import Problem
from .strategies import Step, get_strategy, list_strategies


def build_problem(
    unet: nn.Module,
    scores: pd.DataFrame,
    *,
    criterion: str | None = None,
    keep_units: Iterable[str] = (),
    never_remove: Iterable[str] = (),
    expressible: bool = False,
    source: str = "",
    latency: LatencySettings | None = None,
    where: str = "scores",
) -> Problem:
    """A search problem for `unet` (real or `meta` weights).

    Args:
        scores: a score table (`prunelab score` CSV read into a DataFrame: `name`, `criterion`, `importance`).
        criterion: which criterion of the table (needed when it holds several).
        keep_units / never_remove: constraints (:func:`prune_lab.search.moves.protected_atoms`).
        expressible: only plans with a plain diffusers config.
        source: the model's name or path, recorded in plans.
        latency: also predict latency, from per-unit timings taken with these settings.
        where: how to name the scores in errors.
    """
    graph = walk(unet)
    importance = importance_from_scores(scores, graph, criterion, where)
    protected = protected_atoms(graph, keep_units, never_remove)
    latent = backbone_of(graph).latent_size(unet)
    extra = {}
    if latency is not None:
        timed = unit_latency(unet, graph, latent, latency)
        extra["latency"] = (timed.total_ms, timed.cost)
    costs = build_cost_model(unet, graph, profile_unet(unet, latent), extra)
    return Problem(unet, graph, importance, costs, candidate_moves(graph), protected, expressible, source, latent)


class _Exact:
    """Exact costs per state (cached): the reporter on the compact student; latency stays predicted."""

    def __init__(self, problem: Problem) -> None:
        self.problem, self.cache = problem, {}

    def __call__(self, removed: frozenset[str]) -> dict:
        if removed not in self.cache:
            costs, compacted = exact_costs(self.problem.unet, self.problem.plan(removed), self.problem.latent)
            estimate = self.problem.costs.estimate(removed)
            costs.update({r: v for r, v in estimate.items() if r not in PROFILED})
            self.cache[removed] = {**costs, "expressible": compacted.expressible}
        return self.cache[removed]


@dataclass
class SearchResult:
    """The plan a search chose, with its exact costs.

    Attributes:
        plan: the plan (its `meta` holds everything below).
        budget / limit: what was asked, and the absolute bound it means.
        predicted: resource -> amount of the compact student (reporter counts; latency predicted).
        base: resource -> amount of the unpruned model.
        removed: atoms removed; moves: the moves taken, in order.
        importance_lost / importance_total: summed importance removed, and of every scored row.
        expressible: the student is a plain diffusers config.
    """

    plan: Plan
    budget: Budget
    limit: float
    predicted: dict[str, float]
    base: dict[str, float]
    removed: list[str]
    moves: list[str]
    importance_lost: float
    importance_total: float
    expressible: bool
    strategy: str


def _states(path: list[Step]) -> list[frozenset[str]]:
    return [frozenset()] + [s.removed for s in path]


def _shortest_prefix(problem: Problem, states, resource: str, limit: float, exact: _Exact) -> int | None:
    """Index of the shortest prefix whose exact cost meets `limit` (costs fall along a path), or None.

    Starts where the cost model says the budget is met and moves on while the exact count disagrees; the prefix
    before is counted too when the model missed on this one (where it was right, it is trusted for that prefix).
    """
    estimates = [problem.costs.estimate(s)[resource] for s in states]
    k = next((i for i, e in enumerate(estimates) if e <= limit), len(states) - 1)
    while exact(states[k])[resource] > limit:
        if k == len(states) - 1:
            return None
        k += 1
    while k > 0 and exact(states[k])[resource] != estimates[k] and exact(states[k - 1])[resource] <= limit:
        k -= 1
    return k


def _cheaper_finish(problem: Problem, before: frozenset, step_lost: float, resource: str, limit: float, exact):
    """From the state before the last step, the admissible move that meets the budget losing the least."""
    options = []
    for move in problem.moves:
        after = before | move.atoms
        if problem.costs.estimate(after)[resource] <= limit and problem.importance.lost(after) < step_lost:
            options.append((problem.importance.lost(after), move.order, move))
    for _, _, move in sorted(options, key=lambda o: o[:2]):
        after = problem.admissible(before, move)
        if after is not None and exact(after)[resource] <= limit:
            return move, after
    return None


def _infeasible(problem: Problem, budget: Budget, strategy: str, closest: dict | None) -> ValueError:
    resource = RESOURCES.get(budget.resource)
    base = problem.costs.base[budget.resource]
    if closest is None:
        return ValueError(
            f"--target {budget.text} is infeasible: no candidate move is admissible (each must be covered by the "
            f"{problem.importance.criterion!r} scores and respect --keep-units / --never-remove / --expressible); "
            "score with --units blocks or pairs, or relax the constraints"
        )
    value = closest[budget.resource]
    fraction = math.ceil(1000 * value / base) / 1000
    return ValueError(
        f"--target {budget.text} is infeasible: the closest the {strategy} search reaches is "
        f"{resource.format(value)} ({100 * value / base:.1f}% of {resource.format(base)}); ask for "
        f"{budget.resource}={fraction:g} or more, or relax --keep-units / --never-remove / --expressible"
    )


def search(problem: Problem, budget: Budget, strategy: str = "greedy") -> SearchResult:
    """The plan `strategy` finds for `budget`.

    Raises:
        ValueError: an unknown strategy, a resource the problem has no costs for (latency without timings), or an
            infeasible budget (naming the closest amount the search reaches).
    """
    run = get_strategy(strategy).run
    if budget.resource not in problem.costs.base:
        raise ValueError(f"--target {budget.text}: {budget.resource} needs timings; build the problem with latency")
    limit = budget.limit(problem.costs.base[budget.resource])
    path = run(problem, budget.resource) if problem.costs.base[budget.resource] > limit else []
    states, exact = _states(path), _Exact(problem)
    k = _shortest_prefix(problem, states, budget.resource, limit, exact)
    if k is None:
        raise _infeasible(problem, budget, strategy, exact(states[-1]) if path else None)
    removed, moves = states[k], [s.move.name for s in path[:k]]
    if k > 0:
        finish = _cheaper_finish(problem, states[k - 1], path[k - 1].importance_lost, budget.resource, limit, exact)
        if finish is not None:
            removed, moves = finish[1], moves[:-1] + [finish[0].name]
    return _result(problem, budget, limit, strategy, removed, moves, exact(removed))


def _number(resource: str, value: float) -> int | float:
    """Counts as integers, timings in milliseconds to the microsecond."""
    return int(value) if resource in PROFILED else round(value, 3)


def _result(problem: Problem, budget: Budget, limit: float, strategy: str, removed, moves, costs) -> SearchResult:
    graph, importance = problem.graph, problem.importance
    ordered = sorted(removed, key=lambda a: graph[a].order)
    predicted = {r: _number(r, costs[r]) for r in problem.costs.base}
    lost = importance.lost(removed)
    meta = {
        "search": {
            "strategy": strategy,
            "criterion": importance.criterion,
            "target": budget.text,
            "resource": budget.resource,
            "limit": limit,
            "latent": problem.latent,
            "expressible_only": problem.expressible,
            "protected": sorted(problem.protected),
        },
        "base": {r: _number(r, v) for r, v in problem.costs.base.items()},
        "predicted": predicted,
        "removed": ordered,
        "moves": moves,
        "importance_lost": lost,
        "importance_total": importance.total,
        "student_params": int(costs["params"]),
        "expressible": costs["expressible"],
    }
    plan = problem.plan(removed, meta)
    return SearchResult(
        plan,
        budget,
        limit,
        predicted,
        dict(problem.costs.base),
        ordered,
        moves,
        lost,
        importance.total,
        costs["expressible"],
        strategy,
    )


# --------------------------------------------------------------------------------------------------- Pareto
def _point(problem: Problem, removed: frozenset, costs: dict, source: str, step: int) -> dict:
    row = {"source": source, "step": step}
    for resource, base in problem.costs.base.items():
        row[resource] = costs[resource]
        row[f"{resource}_pct"] = round(100 * costs[resource] / base, 2)
    graph, importance = problem.graph, problem.importance
    row.update(
        importance_lost=importance.lost(removed),
        removed_count=len(removed),
        unscored=len(importance.uncovered(graph, removed)),
        expressible=costs["expressible"],
        removed=";".join(sorted(removed, key=lambda a: graph[a].order)),
    )
    return row


def mark_front(df: pd.DataFrame, resource: str) -> pd.Series:
    """True for the rows no other row beats on both `resource` and `importance_lost` (lower is better)."""
    on_front = pd.Series(False, index=df.index)
    best = math.inf
    for index, row in df.sort_values([resource, "importance_lost"]).iterrows():
        if row["importance_lost"] < best:
            on_front[index], best = True, row["importance_lost"]
    return on_front


def preset_removals(problem: Problem) -> dict[str, frozenset[str]]:
    """Preset name -> the atoms it removes, for the presets of the model's family that fit its layout."""
    out = {}
    atoms = {u.name for u in problem.graph.atoms()}
    for name in list_presets(model_family(problem.unet)):
        try:
            plan = create_plan(problem.unet, name, source=problem.source)
        except ValueError:  # e.g. BK-SDM presets on a U-Net without SD's 2 + 3 blocks per stage
            continue
        out[name] = frozenset(atoms - expand_keep(problem.graph, plan.keep))
    return out


def pareto_front(
    problem: Problem,
    resource: str = "params",
    strategies: Iterable[str] | None = None,
    *,
    exact: bool = True,
    presets: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Every plan the strategies pass through, the front marked, and the presets beside them.

    Args:
        problem: see :func:`build_problem`.
        resource: the cost axis of the front.
        strategies: which (default: all registered).
        exact: count every plan's params / MACs on its compact student with the reporter (about a second per
            plan at full size); False uses the cost model's prediction (`exact` column False).
        presets: add the presets of the model's family (`source` `preset:NAME`, never on the front).
        progress: a progress bar over the plans counted.

    Returns:
        One row per distinct plan: `source` (strategies that reach it, or `preset:NAME`), `step`, each resource
        and its `_pct` of the unpruned model, `importance_lost`, `removed_count`, `unscored` (atoms removed that no
        score covers: presets only), `expressible`, `removed` (`;`-joined atoms), `exact`, `on_front`; the front
        first, by decreasing cost.
    """
    if resource not in problem.costs.base:
        raise ValueError(f"no costs for {resource!r}; choose one of: {', '.join(problem.costs.base)}")
    seen: dict[frozenset[str], tuple[list[str], int]] = {}
    for name in strategies or list_strategies():
        for step, removed in enumerate(_states(get_strategy(name).run(problem, resource))):
            seen.setdefault(removed, ([], step))[0].append(name)
    points = [(removed, ",".join(names), step) for removed, (names, step) in seen.items()]
    if presets:
        points += [(removed, f"preset:{name}", -1) for name, removed in preset_removals(problem).items()]
    counted = _Exact(problem) if exact else (lambda r: {**problem.costs.estimate(r), "expressible": None})
    rows = [
        {**_point(problem, removed, counted(removed), source, step), "exact": exact}
        for removed, source, step in tqdm(points, desc="counting plans", disable=not progress, leave=False)
    ]
    df = pd.DataFrame(rows)
    searched = ~df["source"].str.startswith("preset:")
    df["on_front"] = mark_front(df[searched], resource).reindex(df.index, fill_value=False)
    return df.sort_values(["on_front", resource], ascending=[False, False], kind="stable").reset_index(drop=True)
