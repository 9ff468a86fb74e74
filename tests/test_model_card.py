"""Model cards (prune_lab/formats/card.py): every export's README.md, its hub metadata, the reporter's numbers, and
distill's update."""

from __future__ import annotations

import pytest
from conftest import TINY_SD, tiny_unet

from prune_lab.backbones import create_plan, make_plan, walk
from prune_lab.formats.block import apply_plan
from prune_lab.formats.card import CardFacts, read_card, render_card
from prune_lab.models import load_unet
from prune_lab.report import report
from prune_lab.runtime.loading import LoadedModel


def _front_matter(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


@pytest.fixture(scope="module")
def exported(tiny_pipeline_dir, tmp_path_factory):
    loaded = load_unet(tiny_pipeline_dir)
    plan = create_plan(loaded.unet, "bk-small", source="tiny")
    out = tmp_path_factory.mktemp("card") / "bk-small"
    apply_plan(loaded, plan, out)
    return loaded, plan, out


def test_apply_card_front_matter_and_numbers_equal_the_reporter(exported):
    loaded, plan, out = exported
    meta = _front_matter(out)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"pruning", "prune_lab", "text-to-image"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is no hub id
    facts = read_card(out)
    base, student = report(loaded), report(loaded, plan=plan)
    assert (facts.teacher_params, facts.teacher_macs) == (base.unet.params, base.unet.macs)
    assert (facts.student_params, facts.student_macs) == (student.unet.params, student.unet.macs)
    assert facts.student_params == sum(p.numel() for p in load_unet(out).unet.parameters())
    assert facts.how == {"kind": "preset", "preset": "bk-small", "layer_choice": "first"}
    assert (
        "mid_block.attentions.0" in facts.removed
        and "mid_block.attentions.0.transformer_blocks.0" not in facts.removed
    )
    text = (out / "README.md").read_text()
    assert f"{student.unet.params / 1e6:.3f} M" in text and f"{base.unet.macs / 1e9:.3f} G" in text
    assert "StableDiffusionPipeline.from_pretrained" in text and "## Retraining\n\nNone" in text


def test_hub_teacher_is_the_base_model():
    facts = CardFacts("org/teacher", None, {"kind": "plan"}, [], 10, 5, 100, 40, 8, "load_pruned", "x")
    text = render_card(facts)
    assert "base_model: org/teacher" in text and "prune_lab.load_pruned" in text and "library_name: prune_lab" in text


def test_load_pruned_student_card(tmp_path):
    teacher = tiny_unet(TINY_SD)
    graph = walk(teacher)
    gone = {"up_blocks.2.attentions.1", *graph.descendants("up_blocks.2.attentions.1")}
    plan = make_plan(teacher, [u.name for u in graph.atoms() if u.name not in gone], source="tiny")
    apply_plan(LoadedModel(teacher, "tiny", "unet"), plan, tmp_path / "hand")
    facts = read_card(tmp_path / "hand")
    assert facts.loader == "load_pruned" and facts.pipeline is None and facts.removed == ["up_blocks.2.attentions.1"]
    assert "prune_lab.load_pruned" in (tmp_path / "hand" / "README.md").read_text()


def test_width_export_gets_a_card(tiny_unet_dir, tmp_path):
    from prune_lab.width.run import prune_model_width

    run = prune_model_width(tiny_unet_dir, tmp_path / "w", target="params=0.6", progress=False)
    facts = read_card(tmp_path / "w")
    assert facts.how["kind"] == "width" and facts.removed == [] and facts.loader == "load_pruned"
    assert (facts.teacher_params, facts.student_params) == (run.result.base_params, run.result.params)


def test_distill_export_adds_the_recipe(exported, tmp_path):
    from prune_lab.distill.files import export_student, load_student, retraining_recipe
    from prune_lab.distill.recipe import DistillConfig

    loaded, _, out = exported
    bundle = load_student(out, loaded.unet)
    cfg = DistillConfig(teacher="t", student=str(out), data="data", out=str(tmp_path), batch_size=2, lr=1e-4)
    export_student(bundle.unet, bundle, tmp_path / "d", retraining=retraining_recipe(cfg, 3, 8))
    before, after = read_card(out), read_card(tmp_path / "d")
    assert after.retraining["steps"] == 3 and after.retraining["lr"] == 1e-4 and after.retraining["data_size"] == 8
    assert after.retraining["losses"] == {"task": 1.0, "out": 1.0, "feat": 1.0}
    assert (after.student_params, after.student_macs) == (before.student_params, before.student_macs)
    meta = _front_matter(tmp_path / "d")
    assert "knowledge-distillation" in meta["tags"]
    assert "- steps: 3" in (tmp_path / "d" / "README.md").read_text()
