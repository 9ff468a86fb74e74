from collections import Counter

import pytest
import torch
from conftest import TINY_SD, run_unet, tiny_ldm_unet, unet_inputs

from prune_lab.backbones import build_architecture, walk
from prune_lab.backbones.unet.architectures import ARCHITECTURES


def kinds(graph):
    return Counter(u.kind for u in graph)


def test_sd_topology_counts_and_labels(sd_unet):
    graph = walk(sd_unet)
    # 4 down stages x 2 R + 2 R (mid) + 4 up stages x 3 R; A in 3 down x 2, 1 mid, 3 up x 3.
    assert kinds(graph) == {"resnet": 22, "attention": 16, "transformer_layer": 16, "skip": 12, "stage": 8, "mid": 1}
    by_label = {u.label: u.name for u in graph}
    assert by_label["D1-R1"] == "down_blocks.0.resnets.0"
    assert by_label["D3-A2"] == "down_blocks.2.attentions.1"
    assert by_label["M-R1"] == "mid_block.resnets.0"
    assert by_label["M-A1"] == "mid_block.attentions.0"
    assert by_label["M-R2"] == "mid_block.resnets.1"
    assert by_label["U2-A3"] == "up_blocks.1.attentions.2"
    assert by_label["U1-R3"] == "up_blocks.0.resnets.2"
    assert by_label["D2-A1-T1"] == "down_blocks.1.attentions.0.transformer_blocks.0"
    assert "D4-A1" not in by_label  # the innermost SD stage is R-only


def test_forward_order_puts_each_skip_before_its_consumer(sd_unet):
    graph = walk(sd_unet)
    assert [u.order for u in graph] == list(range(len(graph)))
    for skip in graph.of_kind("skip"):
        assert skip.order == graph[skip.consumer].order - 1
    names = graph.names
    assert names.index("down_blocks.3.resnets.1") < names.index("mid_block") < names.index("up_blocks.0")


def test_skip_routing_matches_diffusers_stack(sd_unet):
    graph = walk(sd_unet)
    producer = {e.consumer: e.producer for e in graph.edges}
    assert producer["up_blocks.0.resnets.0"] == "down_blocks.3.resnets.1"
    assert producer["up_blocks.0.resnets.1"] == "down_blocks.3.resnets.0"
    assert producer["up_blocks.0.resnets.2"] == "down_blocks.2.downsamplers.0"
    assert producer["up_blocks.1.resnets.0"] == "down_blocks.2.attentions.1"
    assert producer["up_blocks.3.resnets.2"] == "conv_in"
    skip = graph["skip:up_blocks.1.resnets.2"]
    assert (skip.producer, skip.consumer, skip.label) == (
        "down_blocks.1.downsamplers.0",
        "up_blocks.1.resnets.2",
        "D2-DS>U2-R3",
    )


def test_skip_channels_agree_with_the_real_concatenation(sd_unet):
    """The walker's skip widths equal what diffusers concatenates at each consumer."""
    graph = walk(sd_unet)
    seen = {}
    handles = [
        sd_unet.get_submodule(e.consumer).register_forward_pre_hook(
            lambda m, a, name=e.consumer: seen.__setitem__(name, a[0].shape[1])
        )
        for e in graph.edges
    ]
    run_unet(sd_unet, unet_inputs(sd_unet))
    for h in handles:
        h.remove()
    for e in graph.edges:
        assert seen[e.consumer] == graph[e.consumer].in_channels
        assert graph["skip:" + e.consumer].in_channels == e.channels
    assert seen["up_blocks.2.resnets.0"] == 64 + 32  # hidden from up_blocks.1 + down_blocks.1.attentions.1
    assert seen["up_blocks.2.resnets.2"] == 32 + 16  # hidden from resnets.1 + down_blocks.0's downsampler


def test_removal_modes_and_channels(sd_unet):
    graph = walk(sd_unet)
    assert graph["down_blocks.0.resnets.0"].removal == "remove"
    first_wider = graph["down_blocks.1.resnets.0"]
    assert (first_wider.in_channels, first_wider.out_channels, first_wider.removal) == (16, 32, "interpolate")
    assert all(graph[f"up_blocks.{u}.resnets.{j}"].removal == "interpolate" for u in range(4) for j in range(3))
    assert graph["up_blocks.2.resnets.2"].in_channels == 32 + 16
    assert graph["up_blocks.2"].in_channels == 64  # the stage's own input, without the skip
    assert graph["mid_block"].removal == "remove"
    assert graph["skip:up_blocks.0.resnets.0"].removal == "zero"


def test_params_match_modules_and_nest(sd_unet):
    graph = walk(sd_unet)
    for unit in graph.of_kind("resnet", "attention", "transformer_layer", "mid"):
        module = sd_unet.get_submodule(unit.name)
        assert unit.params == sum(p.numel() for p in module.parameters())
    stages = graph.of_kind("stage", "mid")
    outside = sum(
        p.numel() for n, p in sd_unet.named_parameters() if not n.startswith(("down_blocks", "up_blocks", "mid_block"))
    )
    assert sum(u.params for u in stages) + outside == sum(p.numel() for p in sd_unet.parameters())
    attn = graph["down_blocks.0.attentions.0"]
    assert attn.children == ("down_blocks.0.attentions.0.transformer_blocks.0",)
    assert graph[attn.children[0]].parent == attn.name


def test_sdxl_transformer_layers(sdxl_unet):
    graph = walk(sdxl_unet)
    # down 2x2 + 2x10, mid 10, up 3x10 + 3x2
    assert kinds(graph)["transformer_layer"] == 70
    assert len(graph["down_blocks.2.attentions.1"].children) == 10
    assert graph["down_blocks.2.attentions.1.transformer_blocks.9"].label == "D3-A2-T10"
    assert kinds(graph)["skip"] == 9


@pytest.mark.parametrize(
    "name,expected",
    [
        ("sd-v1", {"resnet": 22, "attention": 16, "transformer_layer": 16, "skip": 12, "stage": 8, "mid": 1}),
        ("sd-v2-base", {"resnet": 22, "attention": 16, "transformer_layer": 16, "skip": 12, "stage": 8, "mid": 1}),
        ("sdxl", {"resnet": 17, "attention": 11, "transformer_layer": 70, "skip": 9, "stage": 6, "mid": 1}),
    ],
)
def test_full_size_builtins_walk_on_meta(name, expected):
    unet = build_architecture(name, meta=True)
    graph = walk(unet)
    assert kinds(graph) == expected
    assert sum(u.params for u in graph.of_kind("stage", "mid")) < sum(p.numel() for p in unet.parameters())


def test_sd_v1_total_params_is_the_published_859_5M():
    unet = build_architecture("sd-v1", meta=True)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert ARCHITECTURES["sd-v2"]["sample_size"] == 96


def test_unet2dmodel_walks():
    unet = tiny_ldm_unet()
    graph = walk(unet)
    assert kinds(graph) == {"resnet": 2 + 2 + 4, "attention": 1 + 1 + 2, "skip": 4, "stage": 4, "mid": 1}
    assert graph["down_blocks.1.attentions.0"].in_channels == 32
    assert {e.consumer: e.producer for e in graph.edges}["up_blocks.1.resnets.1"] == "conv_in"


def test_unknown_name_suggests_the_closest(sd_unet):
    graph = walk(sd_unet)
    with pytest.raises(ValueError, match=r"did you mean 'down_blocks.0.resnets.0'"):
        graph["down_blocks.0.resnet.0"]


def test_walk_rejects_models_no_backbone_handles():
    with pytest.raises(
        ValueError, match="no backbone for the model, a Linear; it handles: UNet2DConditionModel, UNet2DModel"
    ):
        walk(torch.nn.Linear(2, 2))


def test_a_stage_that_keeps_no_slot_walks_with_its_channels_passing_through():
    """A student stage with no resnet left (a progressive round's student): its channels are its input's."""
    from diffusers import UNet2DConditionModel

    config = {**TINY_SD, "layers_per_block": (2, 2, 2, 0)}  # the last down stage keeps no slot
    unet = UNet2DConditionModel(**config).eval()
    graph = walk(unet)
    stage = graph["down_blocks.3"]
    assert (stage.in_channels, stage.out_channels) == (64, 64)
    assert not [u for u in graph.units if u.parent == "down_blocks.3"]
    skips = [u for u in graph.units if u.kind == "skip"]
    assert len(skips) == sum(len(b.resnets) for b in unet.up_blocks) == 10
    assert graph["up_blocks.0"].in_channels == 64
