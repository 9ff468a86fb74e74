"""Notebook analyses: scoring inputs, sensitivity summaries, skip analysis and plan trade-offs, checked
against hand computations and against the library calls they compose, on the tiny models of conftest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_pipeline, tiny_unet

from prune_lab import analysis as A
from prune_lab.backbones import build_student, create_plan, taken_out, walk
from prune_lab.report import profile_unet
from prune_lab.scoring import (
    ClipOptions,
    ScoringInputs,
    criterion_options,
    denoising_batches,
    get_criterion,
    noise_scheduler,
    rank_agreement,
    score_units,
    synthetic_calibration,
)
from prune_lab.search import build_problem, parse_budget, search


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def graph(unet):
    return walk(unet)


def synthetic_inputs(unet, graph, **options) -> ScoringInputs:
    calib = synthetic_calibration(unet, samples=2, seed=0, tokens=7)
    batches = denoising_batches(calib, noise_scheduler(), timesteps=1, batch_size=2, seed=0)
    return ScoringInputs(unet, graph, batches, options=criterion_options(options))


def hand_table(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["criterion", "name", "label", "kind", "importance"])


# ------------------------------------------------------------------------------------------------------ set-up
def test_scoring_inputs_carry_prompts_and_sampling(pipe):
    prompts = ["a red circle", "a blue square", "a green triangle"]
    inputs = A.scoring_inputs(
        pipe, [], prompts, clip_scorer="scorer", sampling={"scheduler": "dpm", "steps": 3, "guidance": 2.0, "x": 1}
    )
    assert inputs.options_for(ClipOptions) == ClipOptions(scheduler="dpm", steps=3, guidance=2.0, scorer="scorer")
    assert inputs.unet is pipe.unet and inputs.pipeline is pipe and inputs.prompts == prompts
    assert [u.name for u in inputs.graph.units] == [u.name for u in walk(pipe.unet).units]


# ------------------------------------------------------------------------------------------------- sensitivity
def test_fig5_units_are_the_blocks_and_the_mid_stage_in_forward_order(graph):
    names = [u.name for u in A.fig5_units(graph)]
    blocks = [u.name for u in score_units(graph, "blocks")]
    mid = blocks.index("mid_block.resnets.0")
    assert names == blocks[:mid] + ["mid_block"] + blocks[mid:]


def test_score_table_equals_the_criteria_called_directly(unet, graph):
    inputs = synthetic_inputs(unet, graph)
    units = score_units(graph, "stages")
    table = A.score_table(inputs, units, ["magnitude", "ablation"])
    for criterion in ("magnitude", "ablation"):
        scorer = get_criterion(criterion).build(inputs)
        got = table[table["criterion"] == criterion].set_index("name")["importance"]
        assert got.to_dict() == pytest.approx({u.name: scorer(u).importance for u in units}, rel=1e-12)


def test_grouped_aggregates_atoms_by_stage_and_kind(graph):
    table = hand_table(
        [
            ("a", "down_blocks.0.resnets.0", "D1-R1", "resnet", 2.0),
            ("a", "down_blocks.0.attentions.0", "D1-A1", "attention", 4.0),
            ("a", "up_blocks.3.resnets.0", "U4-R1", "resnet", -8.0),
            ("a", "mid_block", "M", "mid", 100.0),  # composite: left out
            ("b", "down_blocks.0.resnets.0", "D1-R1", "resnet", 1.0),
        ]
    )
    by_stage = A.grouped(table, graph, "stage").set_index(["criterion", "stage"])
    assert by_stage.loc[("a", "D1")].to_dict() == pytest.approx(
        {"units": 2, "importance_sum": 6.0, "importance_mean": 3.0, "relative_mean": (2 / 8 + 4 / 8) / 2}
    )
    assert by_stage.loc[("a", "U4"), "relative_mean"] == -1.0
    assert by_stage.loc[("b", "D1"), "relative_mean"] == 1.0
    assert ("a", "M") not in by_stage.index
    by_kind = A.grouped(table, graph, "kind").set_index(["criterion", "kind"])
    assert by_kind.loc[("a", "resnet")].to_dict() == pytest.approx(
        {"units": 2, "importance_sum": -6.0, "importance_mean": -3.0, "relative_mean": (0.25 - 1.0) / 2}
    )
    places = A.with_places(table, graph)
    assert list(places["stage"]) == ["D1", "D1", "U4", "M", "D1"] and list(places["level"]) == [0, 0, 0, 3, 0]


def test_importance_spread_and_wide(graph):
    table = hand_table(
        [
            ("a", "down_blocks.0.resnets.0", "D1-R1", "resnet", 8.0),
            ("a", "down_blocks.0.resnets.1", "D1-R2", "resnet", 0.5),
            ("a", "down_blocks.1.resnets.0", "D2-R1", "resnet", -1.0),
            ("b", "down_blocks.0.resnets.0", "D1-R1", "resnet", 3.0),
            ("b", "down_blocks.0.resnets.1", "D1-R2", "resnet", 0.0),
            ("b", "down_blocks.1.resnets.0", "D2-R1", "resnet", 1.0),
        ]
    )
    spread = A.importance_spread(table).set_index("criterion")
    assert spread.loc["a", ["most", "least"]].tolist() == ["D1-R1", "D2-R1"]
    assert spread.loc["a", "ratio"] == 16.0 and spread.loc["b", "ratio"] == 3.0
    w = A.wide(table)
    assert list(w.columns) == ["a", "b"] and w.index.get_level_values("label").tolist() == ["D1-R1", "D1-R2", "D2-R1"]
    assert w["b"].tolist() == [3.0, 0.0, 1.0]


def test_agreement_matrix_is_the_symmetric_pair_table():
    names = [f"u{i}" for i in range(5)]
    table = pd.DataFrame(
        {
            "name": names * 3,
            "criterion": ["x"] * 5 + ["y"] * 5 + ["z"] * 5,
            "importance": [1, 2, 3, 4, 5] + [5, 4, 3, 2, 1] + [1, 3, 2, 5, 4],
        }
    )
    pairs = rank_agreement([("t", table)])
    matrix = A.agreement_matrix(pairs)
    assert list(matrix.index) == ["x", "y", "z"] and np.allclose(np.diag(matrix), 1.0)
    assert matrix.loc["x", "y"] == matrix.loc["y", "x"] == pytest.approx(-1.0)
    assert matrix.loc["z", "x"] == pytest.approx(0.8)  # 1 - 6 * (0 + 1 + 1 + 1 + 1) / (5 * 24)
    assert A.agreement_matrix(pairs, "kendall_tau").loc["x", "z"] == pytest.approx(0.6)  # (8 - 2) / 10


# ------------------------------------------------------------------------------------------------------- skips
def test_skip_units_one_per_skip_and_one_per_level(graph):
    units = A.skip_units(graph, latent=16)
    singles, levels = units[:12], units[12:]
    assert [u.name for u in singles] == [u.name for u in graph.of_kind("skip")]
    assert [u.label for u in levels] == ["L0 16x16: all 3", "L1 8x8: all 3", "L2 4x4: all 3", "L3 2x2: all 3"]
    for level, unit in enumerate(levels):
        assert set(unit.members) == {u.name for u in graph.of_kind("skip") if u.level == level}
        assert unit.kind == "skip_level" and unit.name == "+".join(unit.members)
    assert len(A.skip_units(graph, levels=False)) == 12


def test_skip_sensitivity_scores_each_mode_like_the_ablation_criterion(unet, graph):
    table = A.skip_sensitivity(synthetic_inputs(unet, graph), ["ablation"], ["zero", "drop"])
    assert len(table) == 2 * 16 and set(table["skip_mode"]) == {"zero", "drop"}
    units = {u.name: u for u in A.skip_units(graph, latent=16)}
    for mode in ("zero", "drop"):
        scorer = get_criterion("ablation").build(synthetic_inputs(unet, graph, skip_mode=mode))
        part = table[table["skip_mode"] == mode].set_index("name")
        assert part["importance"].to_dict() == pytest.approx({n: scorer(u).importance for n, u in units.items()})
        assert part.loc["skip:up_blocks.1.resnets.2", "level"] == 2
    zero, drop = (table[table["skip_mode"] == m]["importance"].to_numpy() for m in ("zero", "drop"))
    assert not np.allclose(zero, drop)


def test_example_removals_rank_one_mode():
    table = hand_table(
        [("c", f"skip:n{i}", f"S{i}", "skip", float(v)) for i, v in enumerate([3, 9, 1, 5])]
        + [("c", "skip:n0+skip:n1", "L0", "skip_level", 99.0), ("d", "skip:n2", "S2", "skip", 100.0)]
    ).assign(skip_mode="zero")
    other = table.assign(skip_mode="drop", importance=-table["importance"])
    got = A.example_removals(pd.concat([table, other]), "c", k=2, skip_mode="zero")
    assert got == {
        "teacher": [],
        "most: S1": ["skip:n1"],
        "most: S3": ["skip:n3"],
        "least: S2": ["skip:n2"],
        "least: S0": ["skip:n0"],
    }


def test_removal_images_generate_each_row_with_its_units_taken_out(pipe):
    prompts = ["a red circle", "a blue square"]
    removals = {"teacher": [], "skip": ["skip:up_blocks.3.resnets.2"]}

    def draw(p):
        generators = [torch.Generator().manual_seed(5 + i) for i in range(len(prompts))]
        return p(prompts, num_inference_steps=2, guidance_scale=3.0, generator=generators, output_type="pt").images

    images = A.removal_images(pipe, removals, draw, skip_mode="drop")
    assert images.shape == (2, 2, 3, 32, 32)
    assert torch.equal(images[0], draw(pipe))
    with taken_out(pipe.unet, removals["skip"], skip_mode="drop"):
        assert torch.equal(images[1], draw(pipe))
    assert not torch.equal(images[0], images[1])


# -------------------------------------------------------------------------------------------------- trade-offs
@pytest.mark.slow  # ~70 s: an exact search per target on the tiny U-Net
def test_tradeoff_plans_are_the_presets_and_the_searched_plans(unet, graph):
    scores = pd.DataFrame(
        {"name": [u.name for u in graph.of_kind("resnet", "attention")], "criterion": "m", "importance": 1.0}
    )
    plans = A.tradeoff_plans(unet, presets=["bk-small"], scores=scores, targets=["params=0.7"], source="tiny")
    assert list(plans) == ["bk-small", "search params=0.7"]
    assert plans["bk-small"].keep == create_plan(unet, "bk-small", source="tiny").keep
    expected = search(build_problem(unet, scores, source="tiny"), parse_budget("params=0.7")).plan
    assert plans["search params=0.7"].keep == expected.keep
    with pytest.raises(ValueError, match="score table"):
        A.tradeoff_plans(unet, targets=["params=0.7"])


@pytest.mark.slow  # ~100 s: every trade-off student generated and timed
def test_plan_tradeoffs_measure_each_compact_student(pipe):
    calib = synthetic_calibration(pipe.unet, samples=3, seed=0, tokens=7)
    batches = denoising_batches(calib, noise_scheduler(), timesteps=1, batch_size=2, seed=0)
    plan = create_plan(pipe.unet, "mid-removal", source="tiny")
    seen = []

    def quality(p):
        seen.append(p.unet)
        return {"q": float(sum(x.numel() for x in p.unet.parameters()))}

    df = A.plan_tradeoffs(pipe, {"mid": plan}, batches, quality=quality).set_index("plan")
    student = build_student(pipe.unet, plan).student
    teacher_params = sum(p.numel() for p in pipe.unet.parameters())
    assert df.loc["teacher", "output_mse"] == 0.0 and df.loc["teacher", "params_pct"] == 100.0
    assert df.loc["teacher", "params_M"] == pytest.approx(teacher_params / 1e6)
    assert df.loc["mid", "params_M"] == pytest.approx(profile_unet(student, 16).params / 1e6)
    assert df.loc["mid", "macs_G"] == pytest.approx(profile_unet(student, 16).macs / 1e9)
    with torch.no_grad():
        errors = [
            (student(**b.inputs).sample - pipe.unet(**b.inputs).sample).pow(2).mean(dim=(1, 2, 3)) for b in batches
        ]
    assert df.loc["mid", "output_mse"] == pytest.approx(float(torch.cat(errors).double().mean()), rel=1e-5)
    assert df.loc["mid", ["kind", "removed_blocks", "expressible"]].tolist() == ["preset", 3, True]
    assert seen[0] is pipe.unet and df["q"].tolist() == [float(teacher_params), df.loc["mid", "params_M"] * 1e6]


def test_pareto_mask():
    df = pd.DataFrame({"cost": [1.0, 2.0, 3.0, 2.5], "acc": [0.2, 0.6, 0.9, 0.5]})
    assert A.pareto_mask(df, "cost", "acc").tolist() == [True, True, True, False]
    assert A.pareto_mask(df, "cost", "acc", higher_is_better=False).tolist() == [True, False, False, False]


# ----------------------------------------------------------------------------------------------------- figures
def test_figures_draw_one_mark_per_value(graph):
    table = hand_table(
        [
            (c, n, n, "resnet", v)
            for c in ("a", "b")
            for n, v in (("down_blocks.0.resnets.0", 1.0), ("up_blocks.3.resnets.0", 2.0))
        ]
    )
    fig = A.plot_grouped(A.grouped(table, graph, "stage"), "stage")
    assert len(fig.axes[0].patches) == 2 * 2
    heat = A.plot_matrix(pd.DataFrame(np.eye(3), index=list("xyz"), columns=list("xyz")))
    assert len(heat.axes[0].texts) == 9
    skips = hand_table([("c", f"skip:n{i}", f"S{i}", "skip", 1.0) for i in range(3)]).assign(level=0, metric="m")
    skips = pd.concat([skips.assign(skip_mode="zero"), skips.assign(skip_mode="drop")])
    assert len(A.plot_skip_modes(skips).axes[0].patches) == 6
    grid = A.plot_image_grid(torch.rand(2, 3, 3, 8, 8), ["r0", "r1"], ["c0", "c1", "c2"])
    assert len(grid.axes) == 6 and grid.axes[3].get_ylabel() == "r1"
    df = pd.DataFrame(
        {"plan": ["t", "p", "s"], "kind": ["teacher", "preset", "search"], "params_M": [3, 2, 1], "macs_G": [3, 1, 2]}
    ).assign(acc=[0.9, 0.5, 0.6])
    fig = A.plot_tradeoffs(df, "acc")
    front = [line for line in fig.axes[0].lines if line.get_label() == "Pareto front"]
    assert front[0].get_xdata().tolist() == [1, 3]
