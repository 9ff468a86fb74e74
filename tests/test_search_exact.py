"""The `exact` strategy: brute force over every union of moves on small problems, greedy on tiny U-Nets.

Brute force enumerates every union of the problem's moves (breadth first), keeps those greedy could accept
(covered by the scores and buildable) and takes the least importance lost under each budget: the MILP must find
exactly that, with the U-Net's routing rows and with cuts alone. The rows must also accept every buildable set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pandas as pd
import pytest
from conftest import TINY_SD, tiny_ldm_unet, tiny_unet
from test_architecture import import_graph

from prune_lab.backbones import backbone_of, walk
from prune_lab.backbones.base import Backbone
from prune_lab.cli import main
from prune_lab.models import load_unet
from prune_lab.scoring import read_scores
from prune_lab.search import build_problem, get_strategy, list_strategies, pareto_front, parse_budget, search
from prune_lab.search import exact as exact_module

BUDGET_SHARES = (0.95, 0.85, 0.7, 0.55, 0.4, 0.25)


def random_scores(graph, kinds=("resnet", "attention"), seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    units = graph.of_kind(*kinds)
    values = [rng.uniform(1.0, 10.0) for _ in units]
    return pd.DataFrame({"name": [u.name for u in units], "criterion": "random", "importance": values})


def restricted(problem, stages: tuple[str, ...]):
    """The problem with only the moves inside `stages` (every atom elsewhere stays)."""
    inside = {u.name for u in problem.graph.atoms() if u.stage in stages}
    return dataclasses.replace(problem, moves=[m for m in problem.moves if m.atoms <= inside])


def without_constraints(monkeypatch, problem) -> None:
    """The problem's backbone states no rows (the :class:`Backbone` default): the solver relies on cuts alone."""
    monkeypatch.setattr(type(backbone_of(problem.graph)), "plan_constraints", Backbone.plan_constraints)


_UNIONS: dict[int, dict] = {}


def admissible_unions(problem) -> dict[frozenset, tuple[float, float]]:
    """Every union of moves greedy's checks accept -> (importance lost, predicted params) (cached per problem)."""
    if id(problem) not in _UNIONS:
        _UNIONS[id(problem)] = _enumerate(problem)
    return _UNIONS[id(problem)]


def _enumerate(problem) -> dict[frozenset, tuple[float, float]]:
    seen, frontier = {frozenset()}, [frozenset()]
    while frontier:
        grown = {state | m.atoms for state in frontier for m in problem.moves} - seen
        seen |= grown
        frontier = list(grown)
    out = {}
    for state in seen:
        if not problem.importance.uncovered(problem.graph, state) and problem.valid(state):
            out[state] = (problem.importance.lost(state), problem.costs.estimate(state)["params"])
    return out


def brute_force(unions: dict, limit: float) -> float:
    return min(lost for lost, cost in unions.values() if cost <= limit)


@pytest.fixture(scope="module")
def ldm():
    """A whole tiny pixel U-Net (2 levels, self-attention): every move, small enough to enumerate."""
    unet = tiny_ldm_unet()
    return build_problem(unet, random_scores(walk(unet)))


@pytest.fixture(scope="module")
def ldm_expressible(ldm):
    return dataclasses.replace(ldm, expressible=True)


@pytest.fixture(scope="module")
def sd():
    unet = tiny_unet(TINY_SD)
    return build_problem(unet, random_scores(walk(unet)), source="tiny")


@pytest.fixture(scope="module")
def sd_level1(sd):
    """Tiny SD restricted to its level 1 (D2 and U3): channels change there, so routing and hidden widths matter."""
    return restricted(sd, ("down_blocks.1", "up_blocks.2"))


@pytest.fixture(scope="module")
def sd_expressible(sd):
    """Tiny SD restricted to its level 2 (D3 and U2), plain diffusers configs only."""
    return restricted(dataclasses.replace(sd, expressible=True), ("down_blocks.2", "up_blocks.1"))


def _limits(problem, unions):
    base = problem.costs.base["params"]
    costs = sorted({cost for _, cost in unions.values()})
    shares = [costs[int(q * (len(costs) - 1))] for q in (0.1, 0.3, 0.5, 0.8)]  # budgets met exactly
    return shares + [share * base for share in BUDGET_SHARES]


# ---------------------------------------------------------------------------------------------- brute force
@pytest.mark.parametrize(
    "case,constraints",
    [
        ("ldm", True),
        ("ldm", False),
        ("sd_level1", True),
        ("sd_level1", False),
        ("ldm_expressible", True),
        ("sd_expressible", True),
    ],
)
def test_exact_matches_brute_force(request, monkeypatch, case, constraints):
    problem = request.getfixturevalue(case)
    if not constraints:
        without_constraints(monkeypatch, problem)
    unions = admissible_unions(problem)
    for limit in _limits(problem, unions):
        if limit < min(cost for _, cost in unions.values()):
            continue
        form = exact_module._Formulation.build(problem, "params")
        found = exact_module._find(form, form.importance, limit)
        assert found in unions, "the solver returned a set greedy's checks reject"
        lost, cost = unions[found]
        assert cost <= limit and math.isclose(lost, brute_force(unions, limit), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("case", ["ldm", "sd_level1", "ldm_expressible", "sd_expressible"])
def test_constraints_accept_every_buildable_set(request, case):
    """The backbone's rows are necessary conditions: fixing x to any admissible set leaves the program feasible."""
    problem = request.getfixturevalue(case)
    form = exact_module._Formulation.build(problem, "params")
    unions = sorted(admissible_unions(problem), key=lambda s: sorted(s))
    for state in random.Random(0).sample(unions, min(len(unions), 150)):
        fixed = [({i: 1.0}, float(a in state), float(a in state)) for a, i in form.x.items()]
        assert form.program.solve({}, fixed).status == 0, sorted(state)


def test_one_program_for_many_limits_matches_brute_force(ldm):
    """Solving many limits with one program (cuts kept, floors from looser limits) loses nothing: each plan is the
    brute-force optimum of its limit, in the order asked; below the cheapest plan, the cheapest, infeasible."""
    unions = admissible_unions(ldm)
    cheapest = min(cost for _, cost in unions.values())
    limits = [*_limits(ldm, unions), 0.5 * cheapest]
    random.Random(1).shuffle(limits)
    solutions = exact_module.solve(ldm, "params", limits, ldm.costs.estimate)
    for limit, solution in zip(limits, solutions):
        lost, cost = unions[solution.removed]
        if limit < cheapest:
            assert not solution.feasible and cost == cheapest
            continue
        assert solution.feasible and cost <= limit
        assert math.isclose(lost, brute_force(unions, limit), rel_tol=1e-9, abs_tol=1e-9)


def test_infeasible_sets_are_cut_and_counted(ldm, monkeypatch):
    without_constraints(monkeypatch, ldm)
    [solution] = exact_module.solve(ldm, "params", [0.4 * ldm.costs.base["params"]], ldm.costs.estimate)
    assert solution.feasible and solution.info["cuts"] > 0 and solution.info["solves"] == solution.info["cuts"] + 1


# -------------------------------------------------------------------------------------------- against greedy
@pytest.mark.parametrize("resource,expressible", [("params", False), ("macs", False), ("params", True)])
def test_exact_never_loses_more_than_greedy(sd, resource, expressible):
    problem = dataclasses.replace(sd, expressible=expressible)
    base = problem.costs.base[resource]
    for share in (0.7, 0.45):
        budget = parse_budget(f"{resource}={share}")
        greedy = search(problem, budget, "greedy")
        exact = search(problem, budget, "exact")
        assert exact.predicted[resource] <= share * base and exact.expressible >= expressible
        assert exact.importance_lost <= greedy.importance_lost + 1e-9
        assert exact.plan.meta["search"]["solver"]["solves"] >= 1


def test_exact_uses_the_budget_greedy_overshoots(sd):
    """Between two greedy steps exact keeps what it need not remove: at such budgets it loses strictly less."""
    path = get_strategy("greedy").run(sd, "params")
    base, better = sd.costs.base["params"], 0
    steps = sorted(zip(path, path[1:]), key=lambda s: s[1].estimate["params"] - s[0].estimate["params"])
    for before, after in steps[:3]:  # the three largest steps
        limit = (before.estimate["params"] + after.estimate["params"]) / 2
        budget = parse_budget(f"params={limit / base}")
        exact, greedy = search(sd, budget, "exact"), search(sd, budget, "greedy")
        assert exact.predicted["params"] <= limit and exact.importance_lost <= greedy.importance_lost + 1e-9
        better += exact.importance_lost < greedy.importance_lost - 1e-9
    assert better


@pytest.mark.slow
def test_sdxl_layout(sdxl_unet):
    """SDXL's layout (3 levels, transformer depths 1/2/10, no attention at level 0) at block and layer scores."""
    graph = walk(sdxl_unet)
    for kinds in (("resnet", "attention"), ("transformer_layer",)):
        problem = build_problem(sdxl_unet, random_scores(graph, kinds))
        for share in (0.7,):
            budget = parse_budget(f"params={share}")
            greedy, exact = (search(problem, budget, s) for s in ("greedy", "exact"))
            assert exact.importance_lost <= greedy.importance_lost + 1e-9


@pytest.mark.slow
def test_front_dominates_greedy_and_is_strict(sd):
    front = get_strategy("exact").run(sd, "params")
    costs = [s.estimate["params"] for s in front]
    lost = [s.importance_lost for s in front]
    assert all(a > b for a, b in zip(costs, costs[1:])) and all(a < b for a, b in zip(lost, lost[1:]))
    for step in get_strategy("greedy").run(sd, "params"):
        best = min(lo for c, lo in zip(costs, lost) if c <= step.estimate["params"])
        assert best <= step.importance_lost + 1e-9


def test_pareto_front_compares_exact_at_every_other_plans_cost(sd):
    """`pareto_front` solves exact at every greedy / topk / preset cost: at each it loses no more."""
    assert_exact_dominates(pareto_front(sd, "params", exact=False), "params")


def assert_exact_dominates(df: pd.DataFrame, resource: str) -> None:
    """At the cost of every other plan of a front table, some exact plan costs no more and loses no more."""
    exact_rows = df[df["source"].str.contains("exact")]
    assert len(exact_rows) > 1
    for _, row in df[~df["source"].str.contains("exact")].iterrows():
        if row["removed_count"] == 0 or (row["source"].startswith("preset:") and row["unscored"]):
            continue  # the unpruned model; presets removing what the scores do not cover are not comparable
        best = exact_rows[exact_rows[resource] <= row[resource]]["importance_lost"].min()
        assert best <= row["importance_lost"] + 1e-9, (row["source"], row[resource])


def test_search_speaks_only_of_the_backbone_interface():
    """No module of `prune_lab.search` imports a backbone family's modules (ARCHITECTURE.md: capabilities call the
    backbone interface); the U-Net's rows reach the solver through `Backbone.plan_constraints`."""
    graph = import_graph()
    family = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.startswith("prune_lab.search")
        for t in targets
        if t.startswith("prune_lab.backbones.") and t != "prune_lab.backbones.base"
    ]
    assert family == []


# ------------------------------------------------------------------------------------------- counting, errors
def test_reporter_gap_is_re_solved_with_a_margin(sd):
    """When the count exceeds the model's prediction, the bound is tightened by the gap and the program re-solved."""
    limit = 0.6 * sd.costs.base["params"]
    [first] = exact_module.solve(sd, "params", [limit], sd.costs.estimate)
    gap = limit - sd.costs.estimate(first.removed)["params"] + 1.0

    def count(removed):  # the first plan counts over the limit, the others as predicted
        extra = gap if removed == first.removed else 0.0
        return {"params": sd.costs.estimate(removed)["params"] + extra}

    [second] = exact_module.solve(sd, "params", [limit], count)
    assert second.removed != first.removed and second.info["recounts"] == 1
    assert sd.costs.estimate(second.removed)["params"] <= limit - second.info["margin"]


def test_infeasible_budget_names_the_closest(sd):
    with pytest.raises(ValueError, match=r"infeasible: the closest the exact search reaches is"):
        search(sd, parse_budget("params=0.005"), "exact")


def test_registry_and_cli(tmp_path, capsys, tiny_unet_dir):
    assert "exact" in list_strategies() and get_strategy("exact").solve is not None
    assert "integer program" in get_strategy("exact").description
    scores = tmp_path / "scores.csv"
    unet = tiny_unet(TINY_SD)
    random_scores(walk(unet)).to_csv(scores, index=False)
    plan = tmp_path / "plan.json"
    args = ["plan", "--model", str(tiny_unet_dir), "--scores", str(scores), "--target", "params=0.6"]
    assert main([*args, "--strategy", "exact", "-o", str(plan)]) == 0
    meta = json.loads(plan.read_text())["meta"]
    assert meta["search"]["strategy"] == "exact" and meta["search"]["solver"]["cuts"] >= 0
    assert meta["predicted"]["params"] <= 0.6 * meta["base"]["params"] and "exact search" in capsys.readouterr().out


def test_program_solves_with_highs():
    """The wrapper's own contract: AND of literals, and a zero-gap MILP through scipy."""
    program = exact_module._Program()
    a, b = program.var(integral=True), program.var(integral=True)
    both = program.both([(a, False), (b, True)])  # a and not b
    for va, vb in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        fixed = [({a: 1.0}, va, va), ({b: 1.0}, vb, vb)]
        result = program.solve({both: -1.0}, fixed)
        assert result.status == 0 and round(result.x[both]) == int(va and not vb)


# ------------------------------------------------------------------------------------------------ full size
@pytest.mark.slow
def test_sd_v1_magnitude_uses_the_budget(tmp_path):
    """The README's measurement: sd-v1 with seeded random weights, magnitude scores of its blocks; exact never loses
    more than greedy, uses the budget at params=0.56, and at every budget of `--pareto` loses no more."""
    scores = tmp_path / "scores.csv"
    assert main(["score", "--model", "sd-v1", "--criterion", "magnitude", "--quiet", "-o", str(scores)]) == 0
    problem = build_problem(load_unet("sd-v1", meta=True).unet, read_scores(scores), source="sd-v1")
    for share in (0.5, 0.56, 0.6):
        budget = parse_budget(f"params={share}")
        greedy, exact = (search(problem, budget, s) for s in ("greedy", "exact"))
        assert exact.importance_lost <= greedy.importance_lost + 1e-9
        assert exact.plan.meta["search"]["solver"]["seconds"] < 30
    kept = search(problem, parse_budget("params=0.56"), "exact").predicted["params"]
    assert 0.54 <= kept / problem.costs.base["params"] <= 0.56
    assert_exact_dominates(pareto_front(problem, "params"), "params")  # counted by the reporter, as --pareto does
