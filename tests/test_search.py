"""Budgeted plan search on the tiny SD-v1 topology with hand-made score tables.

Pairs-granularity scores (BK-SDM Fig 5b) make the expected picks computable by hand: every R-A pair scores 10
except the second pairs of levels 1 and 2 (D2/U3 and D3/U2 slot 2), which score 0.5 each side, so both BK-style
slot moves lose 1.0 and the level-2 one saves about four times the parameters.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY_SD, tiny_unet
from diffusers import UNet2DConditionModel

from prune_lab.backbones import walk
from prune_lab.cli import main
from prune_lab.formats import load_pruned
from prune_lab.formats.block import apply_plan
from prune_lab.report import LatencySettings, profile_unet
from prune_lab.runtime.loading import LoadedModel
from prune_lab.scoring import score_units
from prune_lab.search import (
    Budget,
    build_problem,
    exact_costs,
    get_strategy,
    list_strategies,
    pareto_front,
    parse_budget,
    search,
)
from prune_lab.units import atoms_of

LEVEL1 = ["down_blocks.1.resnets.1", "down_blocks.1.attentions.1", "up_blocks.2.resnets.1", "up_blocks.2.attentions.1"]
LEVEL2 = ["down_blocks.2.resnets.1", "down_blocks.2.attentions.1", "up_blocks.1.resnets.1", "up_blocks.1.attentions.1"]
CHEAP = {"+".join(LEVEL1[:2]), "+".join(LEVEL1[2:]), "+".join(LEVEL2[:2]), "+".join(LEVEL2[2:])}


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(TINY_SD)


@pytest.fixture(scope="module")
def graph(unet):
    return walk(unet)


def pair_scores(graph) -> pd.DataFrame:
    names = [u.name for u in score_units(graph, "pairs")]
    values = [0.5 if n in CHEAP else 10.0 for n in names]
    return pd.DataFrame({"name": names, "criterion": "hand", "importance": values})


def block_scores(graph) -> pd.DataFrame:
    """Blocks (resnets and attention blocks): importance grows with forward order, attention cheaper."""
    units = graph.of_kind("resnet", "attention")
    values = [(1 + i % 7) * (0.5 if u.kind == "attention" else 1.0) for i, u in enumerate(units)]
    return pd.DataFrame({"name": [u.name for u in units], "criterion": "magnitude", "importance": values})


@pytest.fixture(scope="module")
def pairs(unet, graph):
    return build_problem(unet, pair_scores(graph), source="tiny")


@pytest.fixture(scope="module")
def blocks(unet, graph):
    return build_problem(unet, block_scores(graph), source="tiny")


def with_skip(graph, names):
    return atoms_of(graph, names + [f"skip:{n}" for n in names if n.startswith("up_blocks") and ".resnets." in n])


# ------------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    "text,resource,value,fraction",
    [
        ("params=0.5", "params", 0.5, True),
        ("macs=70%", "macs", 0.7, True),
        ("params=480M", "params", 480e6, False),
        ("macs=1.5G", "macs", 1.5e9, False),
        ("latency=120ms", "latency", 120.0, False),
        ("latency=0.2s", "latency", 200.0, False),
    ],
)
def test_parse_budget(text, resource, value, fraction):
    budget = parse_budget(text)
    assert (budget.resource, budget.fraction) == (resource, fraction) and budget.value == pytest.approx(value)


@pytest.mark.parametrize(
    "text,message",
    [
        ("params=-0.5", "must be positive"),
        ("params=0", "must be positive"),
        ("params=1.5", "must be at most 1"),
        ("flops=0.5", "unknown resource 'flops'"),
        ("params", "is not RESOURCE=VALUE"),
        ("params=half", "is not a number"),
        ("latency=3X", "unknown unit 'X'"),
    ],
)
def test_bad_budget_is_a_one_line_cli_error(capsys, tmp_path, tiny_unet_dir, text, message):
    scores = tmp_path / "s.csv"
    pd.DataFrame({"name": ["mid_block"], "importance": [1.0]}).to_csv(scores, index=False)
    code = main(
        [
            "plan",
            "--model",
            str(tiny_unet_dir),
            "--scores",
            str(scores),
            "--target",
            text,
            "-o",
            str(tmp_path / "p.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------------------------------- picks and budgets
def test_greedy_picks_the_cheapest_importance_per_parameter(unet, graph, pairs):
    expected = with_skip(graph, LEVEL2)
    limit, _ = exact_costs(unet, pairs.plan(expected), pairs.latent)
    budget = Budget("params", limit["params"], False, "params=exact")
    greedy = search(pairs, budget, "greedy")
    assert set(greedy.removed) == expected and greedy.importance_lost == 1.0
    assert greedy.predicted["params"] == budget.value  # met exactly, not approximately
    # one-shot top-k ranks by importance alone: the equally important, smaller level-1 move comes first
    topk = search(pairs, budget, "topk")
    assert set(topk.removed) == expected | with_skip(graph, LEVEL1) and topk.importance_lost == 2.0


def test_budget_is_met_and_the_previous_step_was_not(pairs):
    result = search(pairs, parse_budget("params=0.5"), "greedy")
    limit = 0.5 * pairs.costs.base["params"]
    path = get_strategy("greedy").run(pairs, "params")
    k = next(i for i, step in enumerate(path) if step.removed == frozenset(result.removed))
    assert result.predicted["params"] <= limit < pairs.costs.estimate(path[k - 1].removed)["params"]
    # the two cheap slot moves, the mid stage, then the innermost level (2 down + 3 up rows)
    assert [path[i].move.kind for i in range(k + 1)] == ["pair", "pair", "mid", "level"]
    assert result.importance_lost == 4 * 0.5 + 10 + 5 * 10 == result.plan.meta["importance_lost"]
    assert result.plan.meta["predicted"] == result.predicted and result.plan.meta["removed"] == result.removed
    assert result.expressible and result.plan.meta["expressible"]
    nothing = search(pairs, parse_budget("params=1"), "greedy")
    assert nothing.removed == [] and nothing.predicted["params"] == pairs.costs.base["params"]


def test_infeasible_budget_names_the_closest(unet, pairs):
    path = get_strategy("greedy").run(pairs, "params")
    smallest, _ = exact_costs(unet, pairs.plan(path[-1].removed), pairs.latent)
    with pytest.raises(ValueError, match="infeasible") as info:
        search(pairs, parse_budget("params=0.05"), "greedy")
    base = pairs.costs.base["params"]
    assert f"{smallest['params'] / 1e6:,.2f}M ({100 * smallest['params'] / base:.1f}%" in str(info.value)


def test_cost_model_predicts_the_reporter(unet, graph, blocks):
    """A BK pair, the mid stage, lone blocks with substitutes, a dropped skip: the prediction is the reporter's."""
    lone = ["mid_block", "up_blocks.3.attentions.0", "down_blocks.1.resnets.0", "skip:up_blocks.3.resnets.0"]
    removed = with_skip(graph, LEVEL1) | atoms_of(graph, lone)
    assert blocks.valid(removed)
    exact, _ = exact_costs(unet, blocks.plan(removed), blocks.latent)
    estimate = blocks.costs.estimate(removed)
    assert estimate["params"] == exact["params"] and estimate["macs"] == exact["macs"]


# ------------------------------------------------------------------------------------------ exported = predicted
@pytest.mark.parametrize("case", ["greedy-macs", "topk-params", "greedy-expressible"])
def test_every_plan_applies_and_its_export_reports_the_prediction(unet, graph, blocks, tmp_path, case):
    """Block scores allow lone blocks (substitutes) and skip drops; `--expressible` must exclude them."""
    strategy, option = case.split("-")
    problem = build_problem(unet, block_scores(graph), expressible=True) if option == "expressible" else blocks
    target = "macs=0.8" if option == "macs" else "params=0.6"
    result = search(problem, parse_budget(target), strategy)
    loaded = LoadedModel(unet, "tiny", "unet", None)
    exported = apply_plan(loaded, result.plan, tmp_path / "student")
    assert exported.expressible == result.expressible == (option == "expressible")
    if result.expressible:  # whole slots only: every removed skip went with its consumer
        assert all(graph[a].kind != "skip" or graph[a].consumer in result.removed for a in result.removed)
    student = (
        UNet2DConditionModel.from_pretrained(tmp_path / "student" / "unet")
        if exported.expressible
        else load_pruned(tmp_path / "student")
    )
    profile = profile_unet(student, problem.latent)
    assert profile.params == result.predicted["params"] and profile.macs == result.predicted["macs"]
    assert profile.macs_with_attention == result.predicted["macs_with_attention"]
    saved = json.loads((tmp_path / "student" / "plan.json").read_text())["meta"]
    assert saved["predicted"]["params"] == profile.params and saved["search"]["strategy"] == strategy


# ------------------------------------------------------------------------------------------------ constraints
def test_constraints_are_respected(unet, graph):
    protected = build_problem(unet, block_scores(graph), keep_units=["mid_block"], never_remove=["attention"])
    result = search(protected, parse_budget("params=0.7"), "greedy")
    assert result.removed and not any(
        graph[a].kind == "attention" or a.startswith("mid_block") for a in result.removed
    )
    with pytest.raises(ValueError, match="did you mean 'mid_block'"):
        build_problem(unet, block_scores(graph), keep_units=["mid_blok"])
    with pytest.raises(ValueError, match="matches no unit"):
        build_problem(unet, block_scores(graph), never_remove=["attn*"])


def test_score_tables_are_checked(unet, graph):
    two = pd.concat([block_scores(graph), block_scores(graph).assign(criterion="taylor")])
    with pytest.raises(ValueError, match="several criteria"):
        build_problem(unet, two)
    overlap = pd.DataFrame({"name": ["mid_block", "mid_block.resnets.0"], "importance": [1.0, 2.0]})
    with pytest.raises(ValueError, match="overlap"):
        build_problem(unet, overlap)


def test_latency_budget_from_per_unit_timings(unet, graph):
    settings = LatencySettings(runs=1, warmup=0)
    problem = build_problem(unet, pair_scores(graph), latency=settings)
    result = search(problem, parse_budget("latency=0.8"), "greedy")
    assert 0 < result.predicted["latency"] <= 0.8 * problem.costs.base["latency"]
    assert result.plan.meta["search"]["resource"] == "latency"


# ------------------------------------------------------------------------------------------------------ Pareto
def test_pareto_front_is_monotone_and_places_the_presets(pairs):
    df = pareto_front(pairs, "params", exact=False)
    front = df[df["on_front"]].sort_values("params")
    assert len(front) >= 5 and front["importance_lost"].is_monotonic_decreasing
    assert front["importance_lost"].diff().dropna().lt(0).all()  # strictly: no dominated point on it
    for name in list_strategies():  # every path only ever lowers the cost
        costs = [step.estimate["params"] for step in get_strategy(name).run(pairs, "params")]
        assert all(a > b for a, b in zip(costs, costs[1:]))
    presets = df.set_index("source").filter(like="preset:", axis=0)
    assert set(presets.index) == {"preset:bk-base", "preset:bk-small", "preset:bk-tiny", "preset:mid-removal"}
    # bk-base removes the second slot of all 4 down and 4 up stages: the 4 cheap halves and 4 rows of 10
    assert presets.loc["preset:bk-base", "importance_lost"] == 4 * 0.5 + 4 * 10
    assert presets.loc["preset:mid-removal", "importance_lost"] == 10.0 and not presets["on_front"].any()


def test_cli_target_then_apply_and_pareto(capsys, tmp_path, tiny_unet_dir, graph):
    scores = tmp_path / "scores.csv"
    pair_scores(graph).to_csv(scores, index=False)
    plan = tmp_path / "plan.json"
    base = ["plan", "--model", str(tiny_unet_dir), "--scores", str(scores)]
    assert main([*base, "--target", "params=0.6", "--expressible", "-o", str(plan)]) == 0
    out = capsys.readouterr().out
    meta = json.loads(plan.read_text())["meta"]
    assert "plain diffusers config" in out and "importance lost" in out and meta["expressible"]
    assert meta["predicted"]["params"] <= 0.6 * meta["base"]["params"] and meta["removed"]
    assert main(["apply", "--model", str(tiny_unet_dir), "--keep", str(plan), "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    code = main([*base, "--pareto", "--predicted", "-o", str(tmp_path / "front.csv")])
    front = pd.read_csv(tmp_path / "front.csv")
    assert code == 0 and (tmp_path / "front.png").stat().st_size > 0 and front["on_front"].any()
    code = main([*base, "--target", "params=0.005", "-o", str(tmp_path / "none.json")])
    err = capsys.readouterr().err
    assert code == 2 and "infeasible" in err and "closest" in err and not (tmp_path / "none.json").exists()
