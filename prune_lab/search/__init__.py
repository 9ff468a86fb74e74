"""Budgeted plan search: from unit scores to the best `plan.json` under a params / MACs / latency target.

* what may go: :func:`candidate_moves` (skip-consistent groups) and :func:`protected_atoms` (constraints);
* what it costs: :func:`importance_from_scores` (additive importance lost), :func:`build_cost_model` (predicted
  savings from the reporter's per-unit counts), :func:`unit_latency` (per-unit timings);
* how to choose: the strategy registry (:func:`register_strategy`, :func:`list_strategies`: `greedy`, `topk`,
  `exact`);
* the entry points: :func:`parse_budget` (from :mod:`prune_lab.runtime.budget`), :func:`build_problem`,
  :func:`search`, :func:`pareto_front`.
"""

from ..runtime.budget import RESOURCES, Budget, Resource, get_resource, parse_budget
from ..units import Move
from . import exact  # noqa: F401  (registers the `exact` strategy)
from .costs import CostModel, build_cost_model, exact_costs
from .importance import Importance, importance_from_scores
from .latency import UnitLatency, unit_latency
from .moves import candidate_moves, protected_atoms
from .problem import Problem
from .search import SearchResult, build_problem, mark_front, pareto_front, preset_removals, search
from .strategies import (
    DEFAULT_STRATEGY,
    Solution,
    Step,
    Strategy,
    get_strategy,
    list_strategies,
    register_strategy,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "RESOURCES",
    "Budget",
    "CostModel",
    "Importance",
    "Move",
    "Problem",
    "Resource",
    "SearchResult",
    "Solution",
    "Step",
    "Strategy",
    "UnitLatency",
    "build_cost_model",
    "build_problem",
    "candidate_moves",
    "exact_costs",
    "get_resource",
    "get_strategy",
    "importance_from_scores",
    "list_strategies",
    "mark_front",
    "pareto_front",
    "parse_budget",
    "preset_removals",
    "protected_atoms",
    "register_strategy",
    "search",
    "unit_latency",
]
