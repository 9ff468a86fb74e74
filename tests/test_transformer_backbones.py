"""The transformer backbone on tiny random models of every family: units, reversible removal, exports equal to the
analysis-mode removal (stock configs reloaded by diffusers alone; branch removals through `load_pruned`), presets on
the full-size `meta` configs, plan search and the CLI."""

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_TRANSFORMERS, run_transformer, tiny_transformer, transformer_inputs

from prune_lab.backbones import backbone_for, build_architecture, build_student, create_plan, make_plan, walk
from prune_lab.cli import main
from prune_lab.formats import load_pruned
from prune_lab.formats.block import apply_plan
from prune_lab.models import load_unet
from prune_lab.runtime.loading import LoadedModel

#: Units per tiny model: blocks + branches (SD3: dual attention in blocks 0 and 2, the last block has no `ff_context`).
UNIT_COUNTS = {
    "DiTTransformer2DModel": (4, 8),
    "PixArtTransformer2DModel": (3, 9),
    "SD3Transformer2DModel": (4, 13),
    "FluxTransformer2DModel": (7, 9),
    "SanaTransformer2DModel": (3, 9),
}


def _plan_without(model, graph, removed):
    keep = [u.name for u in graph.atoms() if u.name not in removed and u.parent not in removed]
    return make_plan(model, keep, source="test", graph=graph)


def _removal_cases(graph) -> list[list[str]]:
    """A middle block, the first, the last of each stack, and two blocks at once."""
    cases = []
    for stack in dict.fromkeys(u.stage for u in graph.blocks()):
        blocks = [u.name for u in graph.blocks(stack)]
        cases += [[blocks[1]], [blocks[0]], [blocks[-1]]]
    blocks = [u.name for u in graph.blocks()]
    return [*cases, [blocks[1], blocks[-1]]]


def test_unit_counts_names_and_labels(tiny_family):
    model = tiny_transformer(tiny_family)
    graph = walk(model)
    blocks, branches = UNIT_COUNTS[tiny_family]
    assert (len(graph.blocks()), len(graph) - len(graph.blocks())) == (blocks, branches)
    assert all(model.get_submodule(u.name) is not None for u in graph.units)
    assert sum(u.params for u in graph.blocks()) == sum(
        p.numel() for s in {u.stage for u in graph.blocks()} for p in getattr(model, s).parameters()
    )
    if tiny_family == "FluxTransformer2DModel":
        assert (
            graph["single_transformer_blocks.3"].label == "S4"
            and graph["transformer_blocks.2.ff_context"].label == "D3-Fc"
        )
        assert graph["single_transformer_blocks.0"].children == ()
    if tiny_family == "SD3Transformer2DModel":
        assert graph["transformer_blocks.2.attn2"].kind == "dual_attention"
        assert "transformer_blocks.3.ff_context" not in graph  # context_pre_only


def test_block_removal_exports_a_stock_model_equal_to_analysis_mode(tiny_family):
    model = tiny_transformer(tiny_family)
    graph, call = walk(model), transformer_inputs(model)
    base = run_transformer(model, call)
    backbone = backbone_for(model)
    for removed in _removal_cases(graph):
        with backbone.taken_out(model, removed):
            reference = run_transformer(model, call)
        assert torch.equal(run_transformer(model, call), base)  # restored bit for bit
        assert not torch.allclose(reference, base)
        compacted = build_student(model, _plan_without(model, graph, removed))
        assert torch.equal(run_transformer(compacted.student, call), reference), removed
        stock = not (tiny_family == "DiTTransformer2DModel" and "transformer_blocks.0" in removed)
        assert compacted.expressible == stock  # DiT's random per-block embeddings differ: the block format
        if stock:
            assert type(compacted.student) is type(model)


def test_branch_removal_equals_analysis_mode(tiny_family):
    model = tiny_transformer(tiny_family)
    graph, call = walk(model), transformer_inputs(model)
    branches = [u.name for u in graph.units if u.kind != "block"]
    removed = [branches[0], branches[-1]]
    with backbone_for(model).taken_out(model, removed):
        reference = run_transformer(model, call)
    compacted = build_student(model, _plan_without(model, graph, removed))
    assert not compacted.expressible
    assert torch.equal(run_transformer(compacted.student, call), reference)


def test_stock_exports_reload_without_prune_lab(tmp_path):
    """SD3.5-style dual attention renumbered, the context_pre_only last block removed, Flux double + single."""
    cases = {
        "SD3Transformer2DModel": (["transformer_blocks.1", "transformer_blocks.3"], {"num_layers": 2}),
        "FluxTransformer2DModel": (
            ["transformer_blocks.0", "single_transformer_blocks.1", "single_transformer_blocks.2"],
            {"num_layers": 2, "num_single_layers": 2},
        ),
    }
    for name, (removed, counts) in cases.items():
        model = tiny_transformer(name)
        graph, call = walk(model), transformer_inputs(model)
        with backbone_for(model).taken_out(model, removed):
            reference = run_transformer(model, call)
        out = tmp_path / name
        result = apply_plan(LoadedModel(model, "tiny", "unet"), _plan_without(model, graph, removed), out)
        assert result.expressible
        reloaded = type(model).from_pretrained(out / "transformer").eval()
        assert {k: reloaded.config[k] for k in counts} == counts
        assert torch.equal(run_transformer(reloaded, call), reference)
        unit_map = json.loads((out / "unit_map.json").read_text())
        assert unit_map["transformer_blocks.1"] == "transformer_blocks.2"  # both keep teacher blocks 1-2 or 0, 2
        if name.startswith("SD3"):
            assert list(reloaded.config.dual_attention_layers) == [0, 1]  # teacher blocks 0 and 2
            assert reloaded.transformer_blocks[-1].context_pre_only


def test_dit_first_block_removal_is_stock_when_embeddings_are_shared():
    model = tiny_transformer("DiTTransformer2DModel")
    with torch.no_grad():  # as in converted DiT checkpoints: every block holds the same t / y embedders
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    graph, call = walk(model), transformer_inputs(model)
    with backbone_for(model).taken_out(model, ["transformer_blocks.0"]):
        reference = run_transformer(model, call)
    compacted = build_student(model, _plan_without(model, graph, ["transformer_blocks.0"]))
    assert compacted.expressible and compacted.config["num_layers"] == 3
    assert torch.equal(run_transformer(compacted.student, call), reference)


def test_branch_export_loads_through_load_pruned(tmp_path):
    model = tiny_transformer("SanaTransformer2DModel")
    graph, call = walk(model), transformer_inputs(model)
    removed = ["transformer_blocks.1", "transformer_blocks.0.ff", "transformer_blocks.2.attn2"]
    with backbone_for(model).taken_out(model, removed):
        reference = run_transformer(model, call)
    result = apply_plan(LoadedModel(model, "tiny", "unet"), _plan_without(model, graph, removed), tmp_path / "out")
    assert not result.expressible and set(removed) < set(result.removed)  # + the removed block's branches
    assert torch.equal(run_transformer(load_pruned(tmp_path / "out"), call), reference)


def test_plans_refuse_what_a_transformer_cannot_do():
    model = tiny_transformer("DiTTransformer2DModel")
    graph = walk(model)
    with pytest.raises(ValueError, match="removes every block"):
        build_student(model, _plan_without(model, graph, [u.name for u in graph.blocks()]))
    plan = _plan_without(model, graph, ["transformer_blocks.1"])
    plan.actions = {"transformer_blocks.1": "interpolate"}
    with pytest.raises(ValueError, match="take no actions"):
        build_student(model, plan)


def test_feature_pairs_blocks_and_uniform():
    model = tiny_transformer("FluxTransformer2DModel")
    graph = walk(model)
    removed = ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.2"]
    compacted = build_student(model, _plan_without(model, graph, removed))
    backbone = backbone_for(model)
    unit_map = backbone.unit_map(compacted.student)
    blocks = backbone.feature_pairs(model, compacted.student, compacted.resolution, unit_map, "blocks")
    assert [(p.student.module, p.teacher.module) for p in blocks.pairs] == [
        ("transformer_blocks.0", "transformer_blocks.1"),
        ("transformer_blocks.1", "transformer_blocks.2"),
        ("single_transformer_blocks.0", "single_transformer_blocks.1"),
        ("single_transformer_blocks.1", "single_transformer_blocks.3"),
    ]
    uniform = backbone.feature_pairs(model, compacted.student, compacted.resolution, unit_map, "uniform")
    assert [(p.student.module, p.teacher.module) for p in uniform.pairs] == [
        ("single_transformer_blocks.0", "single_transformer_blocks.1"),
        ("single_transformer_blocks.1", "single_transformer_blocks.3"),
    ]
    assert "transformer_blocks" in uniform.teacher_unpaired  # 3 double blocks are no multiple of 2


def test_presets_on_full_size_meta_configs():
    flux = build_architecture("flux-dev", meta=True)
    lite = create_plan(flux, "flux-lite", source="flux-dev")
    mini = create_plan(flux, "flux-mini", source="flux-dev")
    stacks = ("transformer_blocks", "single_transformer_blocks")
    blocks = {name: [k for k in plan.keep if k.count(".") == 1] for name, plan in (("lite", lite), ("mini", mini))}
    count = {name: {s: sum(k.split(".")[0] == s for k in kept) for s in stacks} for name, kept in blocks.items()}
    assert count == {
        "lite": {"transformer_blocks": 8, "single_transformer_blocks": 38},
        "mini": {"transformer_blocks": 5, "single_transformer_blocks": 10},
    }
    kept = [n for n in mini.keep if n.count(".") == 1]
    assert kept[:5] == [f"transformer_blocks.{i}" for i in (0, 4, 9, 14, 18)]  # evenly spaced, ends kept
    dit = build_architecture("dit-xl-2", meta=True)
    tiny = create_plan(dit, "tinyfusion", source="dit-xl-2")
    assert len(tiny.keep) == 14 * 3 and {"transformer_blocks.0", "transformer_blocks.27"} <= set(tiny.keep)
    scores = {f"transformer_blocks.{i}": float(i % 7) for i in range(28)}
    best = [n for n in create_plan(dit, "tinyfusion", source="dit-xl-2", scores=scores).keep if n in scores]
    assert sorted(scores[n] for n in best) == sorted(sorted(scores.values())[-14:])
    half = [n for n in create_plan(flux, "depth-half", source="flux-dev").keep if n.count(".") == 1]
    assert [n for n in half if n.startswith("transformer_blocks.")] == [
        f"transformer_blocks.{i}"
        for i in (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)  # 10 of 19: round(j * 18 / 9)
    ]
    assert sum(n.startswith("single_transformer_blocks.") for n in half) == 19
    assert {"single_transformer_blocks.0", "single_transformer_blocks.37"} <= set(half)


def test_plan_target_on_a_tiny_model(tmp_path, capsys):
    folder = tmp_path / "sd3"
    tiny_transformer("SD3Transformer2DModel").save_pretrained(folder)
    graph = walk(load_unet(folder).unet)
    rows = [{"name": u.name, "criterion": "toy", "importance": float(u.order)} for u in graph.blocks()]
    pd.DataFrame(rows).to_csv(tmp_path / "scores.csv", index=False)
    plan = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "--model",
            str(folder),
            "--scores",
            str(tmp_path / "scores.csv"),
            "--target",
            "params=0.7",
            "--expressible",
            "-o",
            str(plan),
        ]
    )
    assert code == 0, capsys.readouterr().err
    keep = json.loads(plan.read_text())["keep"]
    assert "transformer_blocks.0" not in keep and "transformer_blocks.3" in keep  # least important blocks go first


def test_cli_blocks_and_presets(tmp_path, capsys):
    pipe = tmp_path / "pipe"
    tiny_transformer("FluxTransformer2DModel").save_pretrained(pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert load_unet(pipe).kind == "pipeline"
    assert main(["blocks", "--model", str(pipe), "--format", "json"]) == 0
    units = json.loads(capsys.readouterr().out)
    assert len(units) == 16 and units[-1]["name"] == "single_transformer_blocks.3"
    assert main(["presets", "--model", "flux-dev", "--format", "json"]) == 0
    table = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(table) == {"(base)", "flux-lite", "flux-mini", "depth-half"} and table["flux-lite"]["expressible"]
    assert table["flux-mini"]["params"] < table["depth-half"]["params"] < table["flux-lite"]["params"]
    assert table["flux-lite"]["params"] < table["(base)"]["params"]


def test_every_family_has_a_tiny_config():
    from prune_lab.backbones.transformer.spec import FAMILIES

    assert set(FAMILIES) == set(TINY_TRANSFORMERS)
