import json

import pytest

from prune_lab.backbones import create_plan, make_plan, resolve, walk
from prune_lab.plan import Plan, expand_keep, fingerprint


def all_atoms(graph):
    return {u.name for u in graph.atoms()}


def slot(stage, j, graph):
    names = {f"{stage}.resnets.{j}", f"{stage}.attentions.{j}", f"skip:{stage}.resnets.{j}"}
    names = {n for n in names if n in graph}
    return names | {d for n in names for d in graph.descendants(n)}


def plan_without(unet, *removed, actions=None):
    graph = walk(unet)
    keep = all_atoms(graph) - set().union(*[{r} | set(graph.descendants(r)) for r in removed])
    return make_plan(unet, keep, source="test", actions=actions)


def check(unet, plan):
    return resolve(plan, walk(unet), fingerprint(unet))


def test_container_rule(sdxl_unet):
    graph = walk(sdxl_unet)
    attn = "down_blocks.2.attentions.0"
    assert set(graph[attn].children) <= expand_keep(graph, [attn])
    kept = expand_keep(graph, [f"{attn}.transformer_blocks.3"])
    assert kept == {attn, f"{attn}.transformer_blocks.3"}
    kept = expand_keep(graph, ["down_blocks.2"])
    assert set(graph.descendants("down_blocks.2")) < kept


def test_plan_round_trip_and_atomic_save(sd_unet, tmp_path):
    plan = create_plan(sd_unet, "bk-base", source="tiny")
    path = plan.save(tmp_path / "plans" / "plan.json")
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]
    loaded = Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    data = json.loads(path.read_text())
    assert data["format"] == "prune_lab.plan" and data["version"] == 1
    assert data["base"]["fingerprint"] == fingerprint(sd_unet) and data["meta"]["preset"] == "bk-base"


def test_bk_base_resolution_rewires_up_stage_skips(sd_unet):
    res = check(sd_unet, create_plan(sd_unet, "bk-base", source="tiny"))
    assert [len(s.kept_slots) for s in res.down] == [1, 1, 1, 1]
    assert [len(s.kept_slots) for s in res.up] == [2, 2, 2, 2]
    rewired = res.rewired()
    # teacher: up.resnets.0 consumed the (now removed) second down pair; it now gets the first pair's output
    assert rewired["up_blocks.0.resnets.0"] == ("down_blocks.3.resnets.1", "down_blocks.3.resnets.0")
    assert rewired["up_blocks.3.resnets.0"] == ("down_blocks.0.attentions.1", "down_blocks.0.attentions.0")
    assert "up_blocks.3.resnets.2" not in rewired  # still conv_in's output
    assert "down_blocks.1.resnets.1" in res.removed and "skip:up_blocks.1.resnets.1" in res.removed


def test_bk_tiny_removes_the_innermost_level(sd_unet):
    res = check(sd_unet, create_plan(sd_unet, "bk-tiny", source="tiny"))
    assert res.removed_levels == 1 and res.down[3].level_removed and res.up[0].level_removed
    assert not res.down[2].level_removed


@pytest.mark.parametrize(
    "removed,message",
    [
        # one producer fewer at level 1 and no consumer removed: the consumer of its skip is unfed
        (
            ["down_blocks.1.resnets.1", "down_blocks.1.attentions.1"],
            r"up_blocks.2.resnets.0 is left unfed: it took the skip of down_blocks.1.attentions.1",
        ),
        # counts agree, but resnets.1 now gets the downsampler's 16 channels where it expects a 32-wide skip
        (
            [
                "down_blocks.1.resnets.1",
                "down_blocks.1.attentions.1",
                "up_blocks.2.resnets.2",
                "up_blocks.2.attentions.2",
                "skip:up_blocks.2.resnets.2",
            ],
            r"up_blocks.2.resnets.1 expects 64 input channels .* 32 \+ 16 .*mis-shaped",
        ),
        # first R-A pair of a wider stage gone: its second resnet receives 16 channels instead of 32
        (
            ["down_blocks.1.resnets.0", "down_blocks.1.attentions.0"],
            r"down_blocks.1.resnets.1 expects 32 input channels",
        ),
        # removing a consumer without its producer leaves a skip with no consumer
        (
            ["up_blocks.3.resnets.2", "up_blocks.3.attentions.2", "skip:up_blocks.3.resnets.2"],
            r"the skip of conv_in has no consumer",
        ),
        # a lone resnet that changes channels needs the interpolation action
        (["down_blocks.1.resnets.0"], r"interpolate"),
        # a down stage left without blocks: its downsampler (32 channels) would receive down_blocks.0's 16
        (["down_blocks.1"], r"down_blocks.1.downsamplers.0 expects 32 input channels but would receive 16"),
        # whole non-innermost level
        (["down_blocks.1", "up_blocks.2"], r"only the innermost resolution levels"),
    ],
)
def test_inconsistent_plans_are_rejected_naming_the_unit(sd_unet, removed, message):
    with pytest.raises(ValueError, match=message):
        check(sd_unet, plan_without(sd_unet, *removed))


def test_kept_skip_with_removed_consumer_is_rejected(sd_unet):
    graph = walk(sd_unet)
    keep = all_atoms(graph) - slot("up_blocks.0", 0, graph) | {"skip:up_blocks.0.resnets.0"}
    with pytest.raises(ValueError, match=r"skip:up_blocks.0.resnets.0 is kept but its consumer"):
        check(sd_unet, make_plan(sd_unet, keep, source="t"))


def test_lone_resnet_removal_accepted_with_interpolate_action(sd_unet):
    plan = plan_without(sd_unet, "down_blocks.1.resnets.0", actions={"down_blocks.1.resnets.0": "interpolate"})
    res = check(sd_unet, plan)
    assert res.removed == ["down_blocks.1.resnets.0"]


def test_dropped_and_zeroed_skips(sd_unet):
    plan = plan_without(
        sd_unet,
        "skip:up_blocks.1.resnets.0",
        "skip:up_blocks.2.resnets.1",
        actions={"skip:up_blocks.2.resnets.1": "zero"},
    )
    res = check(sd_unet, plan)
    modes = {s.resnet: s.skip_mode for st in res.up for s in st.slots}
    assert modes["up_blocks.1.resnets.0"] == "drop" and modes["up_blocks.2.resnets.1"] == "zero"
    assert modes["up_blocks.0.resnets.0"] == "keep"


def test_unknown_unit_suggests_the_closest(sd_unet):
    plan = make_plan(sd_unet, all_atoms(walk(sd_unet)), source="t")
    plan.keep.append("up_blocks.1.attentons.0")
    with pytest.raises(
        ValueError, match=r"unknown unit 'up_blocks.1.attentons.0'; did you mean 'up_blocks.1.attentions.0'"
    ):
        check(sd_unet, plan)


def test_plan_for_another_architecture_is_rejected(sd_unet, sdxl_unet):
    plan = create_plan(sdxl_unet, "vega", source="tiny-sdxl")
    with pytest.raises(ValueError, match=r"plan was made for architecture .* \(tiny-sdxl\), this model is"):
        check(sd_unet, plan)


def test_bad_actions(sd_unet):
    with pytest.raises(ValueError, match="is for skips"):
        check(sd_unet, plan_without(sd_unet, "mid_block", actions={"mid_block.resnets.0": "zero"}))
    with pytest.raises(ValueError, match="is kept"):
        check(sd_unet, plan_without(sd_unet, "mid_block", actions={"down_blocks.0.resnets.0": "interpolate"}))


@pytest.mark.parametrize(
    "data,message",
    [
        ({"keep": []}, "not a prune_lab plan"),
        ({"format": "prune_lab.plan", "version": 9, "keep": []}, "plan version 9"),
        ({"format": "prune_lab.plan", "version": 1, "keep": "mid_block"}, "must be a list"),
        ({"format": "prune_lab.plan", "version": 1, "keep": [], "actions": {"x": "cut"}}, "action 'cut'"),
    ],
)
def test_malformed_plan_files(tmp_path, data, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        Plan.load(path)


def test_missing_and_invalid_json_plan(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")


def test_make_plan_refuses_keep_lists_the_container_rule_would_change(sd_unet):
    graph = walk(sd_unet)
    layer = "down_blocks.0.attentions.1.transformer_blocks.0"
    with pytest.raises(ValueError, match="implies down_blocks.0.attentions.1"):
        make_plan(sd_unet, all_atoms(graph) - {"down_blocks.0.attentions.1"}, source="t")
    with pytest.raises(ValueError, match=f"implies {layer}"):
        make_plan(sd_unet, all_atoms(graph) - {layer}, source="t")


def test_read_importance_picks_one_criterion(tmp_path):
    from prune_lab.backbones import read_importance

    path = tmp_path / "scores.csv"
    path.write_text("name,criterion,importance\na,magnitude,1.0\nb,magnitude,2.0\na,taylor,5.0\nb,taylor,0.5\n")
    assert read_importance(path, "taylor") == {"a": 5.0, "b": 0.5}
    with pytest.raises(ValueError, match="several criteria .*--criterion"):
        read_importance(path)
    with pytest.raises(ValueError, match="no scores of criterion 'clip'"):
        read_importance(path, "clip")
    (tmp_path / "one.csv").write_text("name,importance\na,3\n")
    assert read_importance(tmp_path / "one.csv") == {"a": 3.0}
