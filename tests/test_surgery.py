import pytest
import torch
from conftest import run_unet, tiny_ldm_unet, unet_inputs

from prune_lab.backbones import taken_out, walk
from prune_lab.backbones.unet.surgery import (
    ChannelInterpolation,
    drop_skip_channels,
    expand_removal,
    interpolate_channels,
)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_taken_out_is_reversible_and_bit_identical(sd_unet):
    inputs = unet_inputs(sd_unet)
    before_out, before_sd = run_unet(sd_unet, inputs), snapshot(sd_unet)
    modules = dict(sd_unet.named_modules())
    graph = walk(sd_unet)
    names = [
        "down_blocks.1.resnets.0",
        "mid_block",
        "up_blocks.2",
        "skip:up_blocks.3.resnets.0",
        "down_blocks.0.attentions.1.transformer_blocks.0",
    ]
    with taken_out(sd_unet, names, graph=graph):
        changed = run_unet(sd_unet, inputs)
        assert isinstance(sd_unet.get_submodule("down_blocks.1.resnets.0"), ChannelInterpolation)
    assert not torch.equal(changed, before_out)
    assert torch.equal(run_unet(sd_unet, inputs), before_out)
    after = sd_unet.state_dict()
    assert before_sd.keys() == after.keys() and all(torch.equal(before_sd[k], after[k]) for k in before_sd)
    assert all(dict(sd_unet.named_modules())[n] is m for n, m in modules.items())
    assert not any(m._forward_pre_hooks for m in sd_unet.modules())


def test_restored_even_when_the_block_raises(sd_unet):
    original = sd_unet.get_submodule("mid_block.attentions.0")
    with pytest.raises(RuntimeError):
        with taken_out(sd_unet, ["mid_block.attentions.0"]):
            raise RuntimeError("boom")
    assert sd_unet.get_submodule("mid_block.attentions.0") is original


def test_interpolation_values_by_hand():
    x = torch.tensor([1.0, 4.0]).view(1, 2, 1, 1)
    y = interpolate_channels(x, 4)  # positions 0, 1/3, 2/3, 1 between the two input channels
    assert torch.allclose(y.flatten(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.arange(6.0).view(1, 6, 1, 1).repeat(2, 1, 3, 2)
    y = interpolate_channels(x, 3)  # positions 0, 2.5, 5
    assert y.shape == (2, 3, 3, 2)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 2.5, 5.0]))
    assert interpolate_channels(x, 6) is x


def test_substitute_call_signatures():
    sub = ChannelInterpolation(8, 4, tuple_output=True)
    x = torch.randn(2, 8, 3, 3)
    out = sub(x, encoder_hidden_states=torch.zeros(2, 7, 32), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (2, 4, 3, 3)
    assert sub(x).sample.shape == (2, 4, 3, 3)
    assert ChannelInterpolation(8, 8)(x, torch.zeros(2, 16)) is x


def test_removed_resnet_with_matching_shapes_is_identity(sd_unet):
    """With D1-R2 out, D1-A2 receives exactly what D1-A1 produced."""
    captured = {}
    sd_unet.down_blocks[0].attentions[0].register_forward_hook(lambda m, a, o: captured.__setitem__("a1", o[0]))
    sd_unet.down_blocks[0].attentions[1].register_forward_pre_hook(
        lambda m, a, k: captured.__setitem__("a2_in", a[0]), with_kwargs=True
    )
    with taken_out(sd_unet, ["down_blocks.0.resnets.1"]):
        run_unet(sd_unet, unet_inputs(sd_unet))
    assert torch.equal(captured["a1"], captured["a2_in"])


def test_removed_up_resnet_interpolates_the_concatenation(sd_unet):
    captured = {}
    name = "up_blocks.2.resnets.2"
    attn = sd_unet.get_submodule("up_blocks.2.attentions.2")
    attn.register_forward_pre_hook(lambda m, a, k: captured.__setitem__("attn_in", a[0]), with_kwargs=True)
    with taken_out(sd_unet, [name]):
        sub = sd_unet.get_submodule(name)
        sub.register_forward_pre_hook(lambda m, a, k: captured.__setitem__("cat", a[0]), with_kwargs=True)
        run_unet(sd_unet, unet_inputs(sd_unet))
    assert captured["cat"].shape[1] == 48 and captured["attn_in"].shape[1] == 32
    assert torch.allclose(captured["attn_in"], interpolate_channels(captured["cat"], 32))


def test_zeroed_skip_reaches_the_consumer_as_zeros(sd_unet):
    inputs = unet_inputs(sd_unet)
    consumer = sd_unet.get_submodule("up_blocks.3.resnets.2")  # input: 16 hidden + 16 from conv_in
    captured = []
    with taken_out(sd_unet, ["skip:up_blocks.3.resnets.2"]):
        handle = consumer.register_forward_pre_hook(lambda m, a, k: captured.append(a[0]), with_kwargs=True)
        zeroed = run_unet(sd_unet, inputs)
        handle.remove()
    x = captured[0]
    assert x.shape[1] == 32 and not x[:, 16:].any() and x[:, :16].abs().sum() > 0
    # the same output as running the consumer on an input whose skip half is zero, by hand
    full = []
    h = consumer.register_forward_pre_hook(lambda m, a, k: (full.append(a[0]), None)[1], with_kwargs=True)
    base = run_unet(sd_unet, inputs)
    h.remove()
    assert torch.equal(full[0][:, :16], x[:, :16])
    assert not torch.allclose(zeroed, base)


def test_dropped_skip_prunes_the_consumers_input_channels(sd_unet):
    resnet = sd_unet.get_submodule("up_blocks.2.resnets.2")  # 32 hidden + 16 skip -> 32
    dropped = drop_skip_channels(resnet, 32)
    assert dropped.conv1.weight.shape[1] == 32 and dropped.norm1.num_channels == 32
    assert torch.equal(dropped.conv1.weight, resnet.conv1.weight[:, :32])
    assert torch.equal(dropped.conv_shortcut.weight, resnet.conv_shortcut.weight[:, :32])
    assert dropped.norm1.num_groups == resnet.norm1.num_groups
    x, temb = torch.randn(2, 48, 4, 4), torch.randn(2, 64)
    other = x.clone()
    other[:, 32:] = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        assert torch.equal(dropped(x, temb), dropped(other, temb))  # the skip no longer matters
    assert resnet.conv1.weight.shape[1] == 48  # the original is untouched
    with pytest.raises(ValueError, match="not divisible"):
        drop_skip_channels(resnet, 30)


def test_expand_removal_groups_and_redundancy(sd_unet):
    graph = walk(sd_unet)
    atoms = expand_removal(
        graph, ["mid_block", "down_blocks.0.attentions.0", "down_blocks.0.attentions.0.transformer_blocks.0"]
    )
    assert atoms == [
        "down_blocks.0.attentions.0",
        "mid_block.resnets.0",
        "mid_block.attentions.0",
        "mid_block.resnets.1",
    ]
    atoms = expand_removal(graph, ["up_blocks.0.resnets.0", "skip:up_blocks.0.resnets.0"])
    assert atoms == ["up_blocks.0.resnets.0"]


def test_removing_the_mid_stage_equals_skipping_it(sd_unet):
    inputs = unet_inputs(sd_unet)
    with taken_out(sd_unet, ["mid_block"]):
        out = run_unet(sd_unet, inputs)
    mid, sd_unet.mid_block = sd_unet.mid_block, None
    try:
        assert torch.equal(out, run_unet(sd_unet, inputs))
    finally:
        sd_unet.mid_block = mid


def test_unknown_skip_mode(sd_unet):
    with pytest.raises(ValueError, match="skip_mode"):
        with taken_out(sd_unet, [], skip_mode="cut"):
            pass


def test_unet2dmodel_units_come_out_and_mid_removal_exports():
    from prune_lab.backbones import build_student, create_plan

    unet = tiny_ldm_unet()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = unet(x, 10).sample
        for unit in walk(unet):
            with taken_out(unet, [unit.name]):
                out = unet(x, 10).sample
            assert out.shape == base.shape and not torch.equal(out, base), unit.name
        compacted = build_student(unet, create_plan(unet, "mid-removal", source="tiny-ldm"))
        with taken_out(unet, ["mid_block"]):
            assert torch.equal(compacted.student(x, 10).sample, unet(x, 10).sample)
    assert compacted.expressible and compacted.student.mid_block is None


def test_a_students_substitute_taken_out_again_keeps_its_call_convention(sd_unet):
    """A progressive round's student carries the substitutes of the attention blocks removed before; taking one out
    again (scoring the student) is the identity, not a tensor indexed as if it were a tuple (a past crash)."""
    from prune_lab.backbones import build_student, make_plan

    graph = walk(sd_unet)
    gone = {"down_blocks.1.attentions.0", "mid_block.attentions.0"}
    keep = [u.name for u in graph.atoms() if not any(u.name == g or u.name.startswith(g + ".") for g in gone)]
    student = build_student(sd_unet, make_plan(sd_unet, keep, source="tiny-sd")).student.eval()
    assert isinstance(student.get_submodule("down_blocks.1.attentions.0"), ChannelInterpolation)
    inputs = unet_inputs(student)
    base = run_unet(student, inputs)
    student_graph = walk(student)
    for name in sorted(gone):
        with torch.no_grad(), taken_out(student, [name], graph=student_graph):
            assert torch.equal(run_unet(student, inputs), base), name
