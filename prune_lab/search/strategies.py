"""Search strategies, registered like criteria: each turns a :class:`Problem` into a removal *path*.

A path is the order in which a strategy would remove moves, from the unpruned model until no admissible move
saves anything more; every prefix is a plan, and its cost only goes down along the path. The budget search
(:mod:`prune_lab.search.search`) takes the shortest prefix that meets a budget; the Pareto front is built from
the prefixes of every strategy.

* `greedy` — at every step, the admissible move that loses the least importance per unit of the budgeted
  resource it saves (the classic ratio rule for knapsack-like selection; costs and importance are marginal,
  so a move overlapping an earlier one is charged only for what it adds).
* `topk` — LAPTOP-Diff's one-shot selection (Zhang et al., 2024): because the output-ablation loss is close to
  additive, rank the moves once by their own importance and remove from the least important up, skipping what is
  not admissible at its turn (passes repeat, in ranking order, until nothing more can go).
* `exact` — the plan that loses the least importance under the budget, solved as an integer program
  (:mod:`prune_lab.search.exact`). A strategy that can solve for a budget directly registers a `solve`
  (:class:`Solution`); its path is then its front: the best plan under ever lower bounds, not nested, and the
  Pareto front (:func:`~prune_lab.search.search.pareto_front`) asks it for the best plan at the other plans' costs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..units import Move
from .problem import Problem


@dataclass(frozen=True)
class Step:
    """One move of a path and the state after it.

    Attributes:
        move: the move taken.
        removed: every atom removed so far.
        importance_lost: summed importance of the scored rows removed so far.
        estimate: resource -> predicted amount left (:class:`~prune_lab.search.costs.CostModel`).
    """

    move: Move
    removed: frozenset[str]
    importance_lost: float
    estimate: dict[str, float]


@dataclass(frozen=True)
class Solution:
    """The plan a budget-aware strategy solved for.

    Attributes:
        removed: every atom removed.
        moves: the moves that make it up, in forward order.
        feasible: whether it meets the budget (if not, it is the cheapest plan the strategy found).
        info: solver statistics, recorded in the plan's `meta`.
    """

    removed: frozenset[str]
    moves: list[Move]
    feasible: bool
    info: dict


Run = Callable[[Problem, str], list[Step]]
#: `solve(problem, resource, limits, count)`: the plan for each of `limits`, where `count(removed)` gives the exact
#: costs (one call for many limits lets the strategy reuse its work across them).
Solve = Callable[[Problem, str, Sequence[float], Callable[[frozenset[str]], dict]], list[Solution]]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    run: Run
    solve: Solve | None = None


_STRATEGIES: dict[str, Strategy] = {}
#: The strategy `search` and `prunelab plan --target` use unless told otherwise (registered by
#: :mod:`prune_lab.search.exact`; never worse than `greedy` under a budget, and seconds at full size).
DEFAULT_STRATEGY = "exact"


def register_strategy(name: str, description: str, solve: Solve | None = None):
    """Decorator registering `run(problem, resource) -> path` as strategy `name` (with `solve`, for budgets)."""

    def wrap(run: Run) -> Run:
        _STRATEGIES[name] = Strategy(name, description, run, solve)
        return run

    return wrap


def list_strategies() -> list[str]:
    return list(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    if name not in _STRATEGIES:
        close = difflib.get_close_matches(name, list(_STRATEGIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown strategy {name!r}; {hint}choose from: {', '.join(_STRATEGIES)}")
    return _STRATEGIES[name]


def _step(problem: Problem, move: Move, removed: frozenset[str]) -> Step:
    return Step(move, removed, problem.importance.lost(removed), problem.costs.estimate(removed))


def _saving(problem: Problem, state: frozenset[str], after: frozenset[str], resource: str) -> float:
    return problem.costs.estimate(state)[resource] - problem.costs.estimate(after)[resource]


@register_strategy("greedy", "least importance lost per unit of the budgeted resource saved, step by step")
def greedy(problem: Problem, resource: str) -> list[Step]:
    """Greedy by marginal importance per marginal cost; ties go to the earlier, smaller move."""
    state, path = frozenset(), []
    while True:
        ranked = []
        lost = problem.importance.lost(state)
        for move in problem.moves:
            after = state | move.atoms
            saving = _saving(problem, state, after, resource) if after != state else 0.0
            if saving > 0:
                ratio = (problem.importance.lost(after) - lost) / saving
                ranked.append((ratio, move.order, len(move.atoms), move))
        ranked.sort(key=lambda r: r[:3])
        chosen = next(((m, a) for *_, m in ranked if (a := problem.admissible(state, m)) is not None), None)
        if chosen is None:
            return path
        state = chosen[1]
        path.append(_step(problem, chosen[0], state))


@register_strategy("topk", "LAPTOP-Diff one-shot: remove the moves of least own importance first (additivity)")
def topk(problem: Problem, resource: str) -> list[Step]:
    """One ranking by each move's own importance, then remove in that order while admissible."""
    ranking = sorted(problem.moves, key=lambda m: (problem.importance.lost(m.atoms), m.order, len(m.atoms)))
    state, path, changed = frozenset(), [], True
    while changed:
        changed = False
        for move in ranking:
            after = problem.admissible(state, move)
            if after is not None and _saving(problem, state, after, resource) > 0:
                state, changed = after, True
                path.append(_step(problem, move, state))
    return path
