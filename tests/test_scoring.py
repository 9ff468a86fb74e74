"""Scoring engine: registry, groups, the four criteria against hand computations, prefix caching, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_SDXL, run_unet, tiny_unet, unet_inputs

from prune_lab.backbones import walk
from prune_lab.backbones.unet.staged import StagedUNet
from prune_lab.scoring import (
    ScoringInputs,
    criterion_options,
    denoising_batches,
    get_criterion,
    list_criteria,
    neuron_mean,
    noise_scheduler,
    rank_agreement,
    register_criterion,
    registry,
    run_sweep,
    score_units,
    synthetic_calibration,
)
from prune_lab.scoring.groups import ScoreUnit
from prune_lab.scoring.results import build_table

DATA_CRITERIA = [c for c in list_criteria("unet") if get_criterion(c).needs in ((), ("batches",))]


def _inputs(unet, samples: int = 2, timesteps: int = 1, batch_size: int = 2, **options) -> ScoringInputs:
    calib = synthetic_calibration(unet, samples=samples, seed=0, tokens=7)
    batches = denoising_batches(calib, noise_scheduler(), timesteps=timesteps, batch_size=batch_size, seed=0)
    return ScoringInputs(unet, walk(unet), batches, options=criterion_options(options), seed=0)


def _unit(graph, name: str) -> ScoreUnit:
    return next(
        u
        for g in ("blocks", "transformer_layers", "skips", "stages", "pairs")
        for u in score_units(graph, g)
        if u.name == name
    )


def _snapshot(unet) -> tuple[dict, list]:
    return (
        {k: v.clone() for k, v in unet.state_dict().items()},
        [(p.requires_grad, p.grad) for p in unet.parameters()],
    )


def _assert_unchanged(unet, snapshot) -> None:
    state, flags = snapshot
    for k, v in unet.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [(p.requires_grad, p.grad) for p in unet.parameters()] == flags


# ------------------------------------------------------------------------------------------------ registry, groups


def test_registry_lists_the_builtin_criteria_and_suggests_on_typos():
    assert {"magnitude", "taylor", "ablation", "clip"} <= set(list_criteria())
    with pytest.raises(ValueError, match="did you mean 'taylor'"):
        get_criterion("taylr")


def test_a_registered_criterion_is_listed():
    @register_criterion("_constant", metric="one")
    def constant(inputs):
        return lambda unit: registry.UnitScore(1.0, 1.0)

    try:
        assert "_constant" in list_criteria() and get_criterion("_constant").metric == "one"
    finally:
        registry._CRITERIA.pop("_constant")


def test_criteria_register_typed_options_with_their_defaults_in_one_place():
    from prune_lab.scoring import AblationOptions, ClipOptions, CriterionOptions, TaylorOptions

    kinds = {name: get_criterion(name).options for name in ("magnitude", "taylor", "ablation", "clip")}
    assert kinds == {
        "magnitude": CriterionOptions,
        "taylor": TaylorOptions,
        "ablation": AblationOptions,
        "clip": ClipOptions,
    }
    assert AblationOptions() == AblationOptions(skip_mode="zero", prefix_cache=True)
    assert TaylorOptions().gradient_checkpointing is False
    # scheduler None: the pipeline family's own sampler (pndm for U-Nets, flow-euler for SD3 / Flux)
    assert (ClipOptions().scheduler, ClipOptions().steps, ClipOptions().guidance) == (None, 25, 7.5)


def test_criterion_options_route_flat_settings_to_each_criterion(sd_unet):
    from prune_lab.scoring import AblationOptions, ClipOptions, TaylorOptions

    values = {"skip_mode": "drop", "prefix_cache": False, "steps": 3, "gradient_checkpointing": True}
    options = criterion_options(values, ["ablation", "clip", "magnitude"])
    assert options == (AblationOptions("drop", False), ClipOptions(skip_mode="drop", steps=3))
    inputs = ScoringInputs(sd_unet, walk(sd_unet), options=options)
    assert inputs.options_for(TaylorOptions) == TaylorOptions()  # not given: the defaults
    assert inputs.options_for(ClipOptions).steps == 3
    zeroed = inputs.with_options(skip_mode="zero")
    assert zeroed.options_for(AblationOptions) == AblationOptions("zero", False)
    assert zeroed.options_for(ClipOptions) == ClipOptions(skip_mode="zero", steps=3)
    with pytest.raises(ValueError, match="unknown criterion option.*skipmode"):
        criterion_options({"skipmode": "drop"})
    with pytest.raises(TypeError, match="CriterionOptions instances"):
        ScoringInputs(sd_unet, walk(sd_unet), options={"skip_mode": "drop"})
    with pytest.raises(ValueError, match="two AblationOptions"):
        ScoringInputs(sd_unet, walk(sd_unet), options=[AblationOptions(), AblationOptions()])


def test_listing_criteria_imports_no_criterion_module():
    import subprocess
    import sys

    code = (
        "import sys; from prune_lab.scoring import list_criteria; names = list_criteria(); "
        "print(names, [m for m in ('torch', 'prune_lab.scoring.taylor') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "['ablation', 'clip', 'magnitude', 'similarity', 'taylor'] []", done.stderr


def test_groupings_on_the_sd_topology(sd_unet):
    graph = walk(sd_unet)
    counts = {g: len(score_units(graph, g)) for g in ("blocks", "transformer_layers", "pairs", "stages", "skips")}
    assert counts == {"blocks": 38, "transformer_layers": 16, "pairs": 21, "stages": 9, "skips": 12}
    pair = _unit(graph, "down_blocks.1.resnets.0+down_blocks.1.attentions.0")
    assert pair.label == "D2-R1+A1" and pair.substitute
    assert pair.params == graph["down_blocks.1.resnets.0"].params + graph["down_blocks.1.attentions.0"].params
    assert _unit(graph, "mid_block").kind == "mid"
    with pytest.raises(ValueError, match="choose from"):
        score_units(graph, "heads")
    with pytest.raises(ValueError, match="not a unit of --units blocks"):
        score_units(graph, "blocks", ["down_blocks.0.resnets.7"])


def test_neuron_mean_pools_output_neurons_of_all_layers():
    a, b = torch.ones(2, 3, 1, 1), torch.full((4, 1), 2.0)
    assert neuron_mean([a, b]) == pytest.approx((3 + 3 + 2 * 4) / 6)


# ---------------------------------------------------------------------------------------------------- criteria


def test_magnitude_equals_hand_computation(sd_unet):
    graph = walk(sd_unet)
    scorer = get_criterion("magnitude").build(ScoringInputs(sd_unet, graph))
    resnet = sd_unet.down_blocks[1].resnets[0]
    layers = [resnet.conv1.weight, resnet.time_emb_proj.weight, resnet.conv2.weight, resnet.conv_shortcut.weight]
    rows = torch.cat([w.detach().double().abs().flatten(1).sum(1) for w in layers])
    assert scorer(_unit(graph, "down_blocks.1.resnets.0")).raw == pytest.approx(rows.mean().item(), rel=1e-6)
    # a skip owns the consumer's conv1 / conv_shortcut columns that read its channels
    consumer = sd_unet.up_blocks[3].resnets[2]
    prev = graph["up_blocks.3.resnets.2"].in_channels - 16
    cols = [consumer.conv1.weight[:, prev:], consumer.conv_shortcut.weight[:, prev:]]
    skip_rows = torch.cat([w.detach().double().abs().flatten(1).sum(1) for w in cols])
    assert scorer(_unit(graph, "skip:up_blocks.3.resnets.2")).raw == pytest.approx(skip_rows.mean().item(), rel=1e-6)


def test_taylor_equals_grad_times_weight_by_hand(sd_unet):
    inputs = _inputs(sd_unet, samples=3, batch_size=2)  # two batches of unequal size
    snapshot = _snapshot(sd_unet)
    scorer = get_criterion("taylor").build(inputs)
    _assert_unchanged(sd_unet, snapshot)
    attn = sd_unet.up_blocks[2].attentions[1]
    weights = [m.weight for m in attn.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    loss = sum((run := sd_unet(**b.inputs).sample - b.target).pow(2).flatten(1).mean(1).sum() for b in inputs.batches)
    del run
    grads = torch.autograd.grad(loss / 3, weights)
    rows = torch.cat([(g * w).detach().abs().flatten(1).sum(1) for g, w in zip(grads, weights)])
    assert scorer(_unit(inputs.graph, "up_blocks.2.attentions.1")).raw == pytest.approx(rows.mean().item(), rel=1e-5)
    sd_unet.zero_grad(set_to_none=True)


def test_ablation_of_an_identity_like_unit_is_zero(sd_unet):
    with torch.no_grad():
        sd_unet.down_blocks[0].resnets[1].conv2.weight.zero_()
        sd_unet.down_blocks[0].resnets[1].conv2.bias.zero_()
        sd_unet.up_blocks[1].attentions[0].proj_out.weight.zero_()
        sd_unet.up_blocks[1].attentions[0].proj_out.bias.zero_()
    inputs = _inputs(sd_unet)
    scorer = get_criterion("ablation").build(inputs)
    for name in ("down_blocks.0.resnets.1", "up_blocks.1.attentions.0"):
        score = scorer(_unit(inputs.graph, name))
        assert score.raw == 0.0 and score.importance == 0.0 and score.extras["loss_increase"] == 0.0
    assert scorer(_unit(inputs.graph, "down_blocks.0.resnets.0")).raw > 0


def test_prefix_cached_ablation_equals_naive_ablation(sd_unet):
    graph = walk(sd_unet)
    names = [
        "down_blocks.0.resnets.0",
        "down_blocks.2.attentions.1",
        "mid_block.resnets.1",
        "up_blocks.0.resnets.2",
        "up_blocks.3.attentions.2",
        "skip:up_blocks.1.resnets.0",
        "up_blocks.2.attentions.0.transformer_blocks.0",
        "up_blocks.1",
        "down_blocks.3.resnets.0",
    ]
    units = [_unit(graph, n) for n in names]
    for skip_mode in ("zero", "drop"):
        naive = get_criterion("ablation").build(_inputs(sd_unet, prefix_cache=False, skip_mode=skip_mode))
        fast = get_criterion("ablation").build(_inputs(sd_unet, skip_mode=skip_mode))
        for unit in units:
            a, b = naive(unit), fast(unit)
            assert b.raw == pytest.approx(a.raw, rel=1e-5, abs=1e-9), unit.name
            assert b.extras["loss_increase"] == pytest.approx(a.extras["loss_increase"], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("config", [None, TINY_SDXL], ids=["sd", "sdxl"])
def test_staged_forward_reproduces_the_unet(config):
    unet = tiny_unet() if config is None else tiny_unet(config)
    inputs = unet_inputs(unet, batch=2)
    with torch.no_grad():
        assert torch.equal(StagedUNet(unet)(**inputs), run_unet(unet, inputs))


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_criteria_are_deterministic_finite_and_leave_the_model_unchanged(sd_unet, criterion):
    snapshot = _snapshot(sd_unet)
    units = [_unit(walk(sd_unet), n) for n in ("down_blocks.1.attentions.0", "skip:up_blocks.2.resnets.0")]
    first = [get_criterion(criterion).build(_inputs(sd_unet))(u) for u in units]
    second = [get_criterion(criterion).build(_inputs(sd_unet))(u) for u in units]
    assert first == second
    assert all(torch.isfinite(torch.tensor([s.raw, s.importance])).all() for s in first)
    _assert_unchanged(sd_unet, snapshot)


def test_gradient_checkpointing_gives_the_same_taylor_scores(sd_unet):
    unit = _unit(walk(sd_unet), "up_blocks.3.resnets.0")
    plain = get_criterion("taylor").build(_inputs(sd_unet))(unit).raw
    checkpointed = get_criterion("taylor").build(_inputs(sd_unet, gradient_checkpointing=True))(unit).raw
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    assert not sd_unet.is_gradient_checkpointing


# ------------------------------------------------------------------------------------------------ sweep, tables


class _Interrupt(Exception):
    pass


@pytest.fixture
def counting():
    """Criterion `_counting`: magnitude that records its calls and can be made to die after some units."""
    state = {"calls": [], "fail_after": None}
    magnitude = get_criterion("magnitude").build

    @register_criterion("_counting", metric="mean_abs_weight")
    def build(inputs):
        score = magnitude(inputs)

        def scorer(unit):
            if state["fail_after"] is not None and len(state["calls"]) >= state["fail_after"]:
                raise _Interrupt
            state["calls"].append(unit.name)
            return score(unit)

        return scorer

    yield state
    registry._CRITERIA.pop("_counting")


def test_resume_skips_finished_units_and_writes_the_identical_table(sd_unet, tmp_path, counting):
    inputs = _inputs(sd_unet)
    units = score_units(inputs.graph, "blocks")[:8]
    settings, criteria = {"model": "tiny", "seed": 0}, ["_counting", "ablation"]
    reference = run_sweep(inputs, units, criteria, tmp_path / "ref.csv", settings=settings, progress=False)
    out = tmp_path / "run.csv"
    counting.update(calls=[], fail_after=3)
    with pytest.raises(_Interrupt):
        run_sweep(inputs, units, criteria, out, settings=settings, progress=False)
    partial = tmp_path / "run.csv.partial-0.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 3 and not out.exists()
    with partial.open("a") as f:
        f.write('{"criterion": "_counting", "na')  # a torn line from a kill mid-write
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(inputs, units, criteria, out, settings={"seed": 1}, resume=True, progress=False)
    counting.update(calls=[], fail_after=None)
    resumed = run_sweep(inputs, units, criteria, out, settings=settings, resume=True, progress=False)
    assert len(counting["calls"]) == len(units) - 3
    pd.testing.assert_frame_equal(resumed, reference)
    assert out.read_text() == (tmp_path / "ref.csv").read_text()
    assert not list(tmp_path.glob("*.partial-*"))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["meta"]["seed"] == 0 and len(meta["scores"]) == 2 * len(units)


def test_table_ranks_and_rank_agreement():
    units = [ScoreUnit(f"u{i}", f"U{i}", "resnet", (f"u{i}",), 10, False, i) for i in range(4)]
    records = {("a", f"u{i}"): {"raw": float(i), "importance": float(i)} for i in range(4)}
    records |= {("b", f"u{i}"): {"raw": float(-i), "importance": float(-i)} for i in range(4)}
    table = build_table(units, records, [("a", "x"), ("b", "y")], {"u0": 5, "u1": 6, "u2": 7, "u3": 8})
    assert table[table.criterion == "a"]["rank"].tolist() == [4, 3, 2, 1]
    assert table["macs"].tolist()[:4] == [5, 6, 7, 8]
    agreement = rank_agreement([("t", table)]).iloc[0]
    assert agreement.kendall_tau == pytest.approx(-1.0) and agreement.spearman == pytest.approx(-1.0)
