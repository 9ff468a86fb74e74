import json

import pytest
import torch
from conftest import TINY_SD, TINY_SDXL, run_unet, tiny_unet, unet_inputs
from diffusers import UNet2DConditionModel

from prune_lab.backbones import build_architecture, build_student, create_plan, make_plan, taken_out, walk
from prune_lab.backbones.unet.architectures import ARCHITECTURES
from prune_lab.backbones.unet.compaction import unit_map
from prune_lab.formats import load_pruned
from prune_lab.formats.block import apply_plan
from prune_lab.models import load_unet
from prune_lab.plan import Plan
from prune_lab.runtime.loading import LoadedModel

SD_TYPES = dict(down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3)

# Hand-written diffusers configs of the published students, at toy width (the full-size ones are below).
HAND = {
    "bk-base": dict(TINY_SD, layers_per_block=1),
    "bk-small": dict(TINY_SD, layers_per_block=1, mid_block_type=None),
    "bk-tiny": dict(TINY_SD, layers_per_block=1, mid_block_type=None, block_out_channels=(16, 32, 64), **SD_TYPES),
    "mid-removal": dict(TINY_SD, mid_block_type=None),
    "ssd-1b": dict(
        TINY_SDXL,
        transformer_layers_per_block=[1, 2, 4],
        reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1],
        mid_block_type="UNetMidBlock2D",
    ),
    "vega": dict(
        TINY_SDXL,
        transformer_layers_per_block=[1, 1, 2],
        reverse_transformer_layers_per_block=[[2, 2, 2], [1, 1, 1], 1],
        mid_block_type="UNetMidBlock2D",
    ),
}

# BK-SDM's own student initialisation (copy_weight_from_teacher): student key prefix <- teacher key prefix;
# every other key is copied under the same name.
BK_CONNECT = {
    "bk-base": {
        f"up_blocks.{u}.{kind}.1.": f"up_blocks.{u}.{kind}.2." for u in range(4) for kind in ("resnets", "attentions")
    },
    "bk-tiny": {
        f"up_blocks.{u}.{kind}.{j}.": f"up_blocks.{u + 1}.{kind}.{2 if j else 0}."
        for u in range(3)
        for kind in ("resnets", "attentions")
        for j in (0, 1)
    }
    | {f"up_blocks.{u}.upsamplers.": f"up_blocks.{u + 1}.upsamplers." for u in range(3)},
}
BK_CONNECT["bk-small"] = BK_CONNECT["bk-base"]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def teacher_for(preset):
    return tiny_unet(TINY_SDXL if preset in ("ssd-1b", "vega") else TINY_SD)


@pytest.mark.parametrize("preset", list(HAND))
def test_presets_equal_hand_written_diffusers_configs(preset):
    teacher = teacher_for(preset)
    compacted = build_student(teacher, create_plan(teacher, preset, source="tiny"))
    assert compacted.expressible
    with torch.device("meta"):
        hand = UNet2DConditionModel(**HAND[preset])
    assert shapes(compacted.student) == shapes(hand)
    assert isinstance(compacted.student, UNet2DConditionModel)
    expected = HAND[preset]
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert list(compacted.config[key]) == list(expected[key])
    assert compacted.config["mid_block_type"] == expected.get("mid_block_type", "UNetMidBlock2DCrossAttn")


@pytest.mark.parametrize("preset", ["bk-base", "bk-small", "bk-tiny"])
def test_bk_students_inherit_weights_as_bk_sdm_copies_them(preset):
    teacher = tiny_unet(TINY_SD)
    student = build_student(teacher, create_plan(teacher, preset, source="tiny")).student
    t_sd = teacher.state_dict()
    for key, value in student.state_dict().items():
        origin = next((key.replace(p, q, 1) for p, q in BK_CONNECT[preset].items() if key.startswith(p)), key)
        assert torch.equal(value, t_sd[origin]), (key, origin)


def test_unit_map_follows_units_not_indices():
    teacher = tiny_unet(TINY_SD)
    student = build_student(teacher, create_plan(teacher, "bk-tiny", source="tiny")).student
    umap = unit_map(student)
    assert umap["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"
    assert umap["up_blocks.2.attentions.1"] == "up_blocks.3.attentions.2"
    assert umap["down_blocks.2.resnets.0"] == "down_blocks.2.resnets.0"
    assert student.down_blocks[2].downsamplers is None and student.num_upsamplers == 2


def test_sdxl_presets_keep_first_layers_or_best_scored():
    teacher = tiny_unet(TINY_SDXL)
    student = build_student(teacher, create_plan(teacher, "vega", source="tiny")).student
    assert len(student.down_blocks[2].attentions[0].transformer_blocks) == 2
    assert torch.equal(
        student.down_blocks[2].attentions[0].transformer_blocks[1].attn1.to_q.weight,
        teacher.down_blocks[2].attentions[0].transformer_blocks[1].attn1.to_q.weight,
    )
    graph = walk(teacher)
    scores = {
        u.name: float(u.name.endswith(("transformer_blocks.9", "transformer_blocks.4"))) + u.order * 1e-6
        for u in graph.of_kind("transformer_layer")
    }
    plan = create_plan(teacher, "vega", source="tiny", scores=scores)
    student = build_student(teacher, plan).student
    attn = "down_blocks.2.attentions.0"
    assert f"{attn}.transformer_blocks.4" in plan.keep and f"{attn}.transformer_blocks.9" in plan.keep
    assert unit_map(student)[f"{attn}.transformer_blocks.1"] == f"{attn}.transformer_blocks.9"


@pytest.mark.parametrize("preset,removed", [("mid-removal", ["mid_block"]), ("ssd-1b", None)])
def test_compact_output_equals_analysis_mode(preset, removed):
    """Where export removes only identity-like units, the compact model computes what analysis mode does."""
    teacher = teacher_for(preset)
    plan = create_plan(teacher, preset, source="tiny")
    compacted = build_student(teacher, plan)
    inputs = unet_inputs(teacher)
    with taken_out(teacher, removed or compacted.resolution.removed):
        expected = run_unet(teacher, inputs)
    assert torch.allclose(run_unet(compacted.student, inputs), expected, atol=1e-6)


def lone_units_plan(teacher):
    graph = walk(teacher)
    removed = {
        "down_blocks.1.resnets.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.1.transformer_blocks.0",
        "skip:up_blocks.2.resnets.0",
        "up_blocks.3.resnets.1",
    }
    keep = {u.name for u in graph.atoms()} - removed
    return make_plan(
        teacher,
        keep,
        source="tiny",
        actions={"down_blocks.1.resnets.0": "interpolate", "up_blocks.3.resnets.1": "interpolate"},
    ), removed


def test_non_expressible_plan_round_trips_through_load_pruned(tmp_path, tiny_unet_dir):
    loaded = load_unet(tiny_unet_dir)
    plan, removed = lone_units_plan(loaded.unet)
    result = apply_plan(loaded, plan, tmp_path / "out")
    assert not result.expressible and (tmp_path / "out" / "unet" / "prune_lab_pruned.json").exists()
    inputs = unet_inputs(loaded.unet)
    with taken_out(loaded.unet, removed, skip_mode="drop"):
        expected = run_unet(loaded.unet, inputs)
    reloaded = load_pruned(tmp_path / "out")
    assert torch.allclose(run_unet(reloaded, inputs), expected, atol=1e-6)
    assert sum(p.numel() for p in reloaded.parameters()) == result.student_params < result.teacher_params
    assert load_unet(tmp_path / "out").kind == "pipeline"  # DIR/unet is found by --model too


def test_expressible_export_loads_with_plain_diffusers(tmp_path, tiny_unet_dir):
    loaded = load_unet(tiny_unet_dir)
    plan = create_plan(loaded.unet, "bk-small", source=str(tiny_unet_dir))
    result = apply_plan(loaded, plan, tmp_path / "bk")
    plain = UNet2DConditionModel.from_pretrained(tmp_path / "bk" / "unet").eval()
    inputs = unet_inputs(plain)
    assert torch.equal(run_unet(plain, inputs), run_unet(build_student(loaded.unet, plan).student, inputs))
    assert plain.config.layers_per_block == 1 and plain.config.mid_block_type is None
    assert Plan.load(tmp_path / "bk" / "plan.json").keep == plan.keep
    umap = json.loads((tmp_path / "bk" / "unit_map.json").read_text())
    assert umap["up_blocks.3.resnets.1"] == "up_blocks.3.resnets.2"
    assert torch.equal(run_unet(load_pruned(tmp_path / "bk"), inputs), run_unet(plain, inputs))
    assert result.expressible and result.student_params == sum(p.numel() for p in plain.parameters())


def test_pipeline_export_is_a_whole_pipeline(tmp_path, tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    loaded = load_unet(tiny_pipeline_dir)
    apply_plan(loaded, create_plan(loaded.unet, "bk-tiny", source="tiny"), tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None)
    assert len(pipe.unet.down_blocks) == 3
    original = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.parameters(), original.text_encoder.parameters()))
    image = pipe(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3)


def test_failed_apply_writes_nothing(tmp_path, tiny_unet_dir):
    loaded = load_unet(tiny_unet_dir)
    graph = walk(loaded.unet)
    keep = {u.name for u in graph.atoms()} - {
        "down_blocks.1.resnets.1",
        "down_blocks.1.attentions.1",
        "down_blocks.1.attentions.1.transformer_blocks.0",
    }
    with pytest.raises(ValueError, match="unfed"):
        apply_plan(loaded, make_plan(loaded.unet, keep, source="t"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(FileExistsError, match="--overwrite"):
        apply_plan(loaded, create_plan(loaded.unet, "bk-base", source="t"), tmp_path / "taken")


def test_meta_weights_cannot_be_exported(tmp_path):
    unet = build_architecture("sd-v1", meta=True)
    with pytest.raises(ValueError, match="meta"):
        apply_plan(LoadedModel(unet, "sd-v1", "builtin"), create_plan(unet, "bk-base", source="sd-v1"), tmp_path / "o")


# Released diffusers configs of the full-size students (BK-SDM src/unet_config/*, SSD-1B, Segmind-Vega).
PUBLISHED = {
    ("sd-v1", "bk-base"): (dict(ARCHITECTURES["sd-v1"], layers_per_block=1), 579_384_964),
    ("sd-v1", "bk-small"): (dict(ARCHITECTURES["sd-v1"], layers_per_block=1, mid_block_type=None), 482_346_884),
    ("sd-v1", "bk-tiny"): (
        dict(
            ARCHITECTURES["sd-v1"],
            layers_per_block=1,
            mid_block_type=None,
            block_out_channels=(320, 640, 1280),
            **SD_TYPES,
        ),
        323_384_964,
    ),
    ("sd-v2-base", "bk-tiny"): (
        dict(
            ARCHITECTURES["sd-v2-base"],
            layers_per_block=1,
            mid_block_type=None,
            block_out_channels=(320, 640, 1280),
            attention_head_dim=(5, 10, 20),
            **SD_TYPES,
        ),
        326_825_604,
    ),
    ("sdxl", "ssd-1b"): (
        dict(
            ARCHITECTURES["sdxl"],
            transformer_layers_per_block=[1, 2, 4],
            reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1],
            mid_block_type="UNetMidBlock2D",
        ),
        1_331_334_404,
    ),
    ("sdxl", "vega"): (
        dict(
            ARCHITECTURES["sdxl"],
            transformer_layers_per_block=[1, 1, 2],
            reverse_transformer_layers_per_block=[[2, 2, 2], [1, 1, 1], 1],
            mid_block_type="UNetMidBlock2D",
        ),
        745_225_604,
    ),
}


@pytest.mark.parametrize("arch,preset", list(PUBLISHED))
def test_full_size_presets_reproduce_the_released_architectures(arch, preset):
    config, params = PUBLISHED[(arch, preset)]
    teacher = build_architecture(arch, meta=True)
    compacted = build_student(teacher, create_plan(teacher, preset, source=arch))
    with torch.device("meta"):
        released = UNet2DConditionModel(**config)
    assert shapes(compacted.student) == shapes(released)
    assert sum(p.numel() for p in compacted.student.parameters()) == params
