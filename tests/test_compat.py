"""prune_lab.compat: the ControlNet builder (zero-initialised = unchanged, residuals consumed), LoRA round trips,
the IP-Adapter layout, and the `prunelab check` / `apply --check` command lines, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SD, TINY_SDXL, build_tiny_pipeline, run_unet, tiny_unet, unet_inputs

from prune_lab import build_student, create_plan, load_unet, make_plan, walk
from prune_lab.compat import controlnet_from_student, open_export
from prune_lab.compat.controlnet import residual_channels
from prune_lab.compat.controlnet_check import control_residuals, excite

#: Units of a plan that no stock config describes: lone blocks (substitutes) and a dropped skip.
LONE = {
    "down_blocks.1.resnets.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.1.transformer_blocks.0",
    "skip:up_blocks.2.resnets.0",
    "up_blocks.3.resnets.1",
}
SUBSTITUTES = {"down_blocks.1.resnets.0": "interpolate", "up_blocks.3.resnets.1": "interpolate"}
#: One fewer layer in the first down stage (and its up consumer) only: expressible, but stages differ in depth.
UNEVEN = {
    "down_blocks.0.resnets.1",
    "down_blocks.0.attentions.1",
    "down_blocks.0.attentions.1.transformer_blocks.0",
    "up_blocks.3.resnets.1",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.1.transformer_blocks.0",
    "skip:up_blocks.3.resnets.1",
}


def without(unet, removed: set[str], **kw):
    keep = {u.name for u in walk(unet).atoms()} - removed
    return make_plan(unet, keep, source="tiny", **kw)


def student(topology: str, preset: str):
    teacher = tiny_unet(TINY_SD if topology == "sd" else TINY_SDXL)
    plan = (
        without(teacher, LONE, actions=SUBSTITUTES) if preset == "lone" else create_plan(teacher, preset, source="t")
    )
    compacted = build_student(teacher, plan)
    assert compacted.expressible == (preset != "lone")
    return compacted.student


def control_cond(scale: int = 8) -> torch.Tensor:
    return torch.rand(1, 3, 16 * scale, 16 * scale, generator=torch.Generator().manual_seed(3))


STUDENTS = [
    *[("sd", p) for p in ("bk-base", "bk-small", "bk-tiny", "mid-removal", "lone")],
    *[("sdxl", p) for p in ("ssd-1b", "vega", "mid-removal")],
]


@pytest.mark.parametrize(("topology", "preset"), STUDENTS)
def test_controlnet_lines_up_and_starts_as_identity(topology, preset):
    s = student(topology, preset)
    net = controlnet_from_student(s)
    assert residual_channels(net) == residual_channels(s)
    inputs = unet_inputs(s, batch=1)
    down, mid = control_residuals(net, inputs, control_cond())
    assert len(down) == len(residual_channels(s)) and all(not r.any() for r in (*down, mid))
    plain = run_unet(s, inputs)
    controlled = s(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(controlled.detach(), plain)  # exactly: zero residuals are added as zeros
    excite(net)
    down, mid = control_residuals(net, inputs, control_cond())
    with torch.no_grad():
        changed = s(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert (changed - plain).abs().max() > 1e-4


def test_stock_from_unet_fails_without_mid_stage_and_the_builder_copies_the_encoder():
    from diffusers import ControlNetModel

    s = student("sd", "bk-small")
    assert s.mid_block is None
    with pytest.raises(ValueError, match="unknown mid_block_type : None"):
        ControlNetModel.from_unet(s)
    net = controlnet_from_student(s)
    assert net.config.mid_block_type == "UNetMidBlock2D" and net.config.layers_per_block == 1
    ours, theirs = net.state_dict(), s.state_dict()
    copied = [k for k in theirs if k.startswith(("conv_in.", "time_embedding.", "down_blocks."))]
    assert copied and all(torch.equal(ours[k], theirs[k]) for k in copied)
    # the same builder on a student with a mid stage is what diffusers' from_unet builds
    full = student("sd", "bk-base")
    stock, built = ControlNetModel.from_unet(full), controlnet_from_student(full)
    assert stock.state_dict().keys() == built.state_dict().keys()
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in stock.state_dict().items() if "controlnet_" not in k)


def test_mid_residual_reaches_a_student_without_mid_stage():
    s = student("sd", "bk-tiny")
    net = controlnet_from_student(s)
    inputs = unet_inputs(s, batch=1)
    with torch.no_grad():
        net.controlnet_mid_block.weight.normal_(0, 0.05)
    down, mid = control_residuals(net, inputs, control_cond())
    assert mid.any() and not any(r.any() for r in down)
    with torch.no_grad():
        out = s(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert (out - run_unet(s, inputs)).abs().max() > 1e-4


def test_controlnet_refuses_stages_of_different_depth():
    teacher = tiny_unet(TINY_SD)
    compacted = build_student(teacher, without(teacher, UNEVEN))
    assert compacted.expressible and compacted.config["layers_per_block"] == [1, 2, 2, 2]
    with pytest.raises(ValueError, match=r"hold \[1, 2, 2, 2\] layers"):
        controlnet_from_student(compacted.student)


def test_controlnet_from_student_refuses_a_non_unet():
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        controlnet_from_student(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("compat") / "sd"
    build_tiny_pipeline().save_pretrained(path)
    return path


def export(sd_dir, tmp_path, name: str, plan=None):
    from prune_lab import apply_plan

    loaded = load_unet(sd_dir)
    plan = plan or create_plan(loaded.unet, name, source=str(sd_dir))
    apply_plan(loaded, plan, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("preset", ["bk-small", "lone"])
def test_lora_round_trip_into_a_fresh_pipeline(sd_dir, tmp_path, preset):
    from prune_lab.compat.lora import add_lora, lora_layers, train_lora

    plan = without(load_unet(sd_dir).unet, LONE, actions=SUBSTITUTES) if preset == "lone" else None
    e = open_export(export(sd_dir, tmp_path, preset, plan))
    assert e.plain == (preset != "lone")
    pipe = e.pipeline()
    add_lora(pipe.unet)
    losses = train_lora(pipe.unet, steps=4)
    assert losses[-1] < losses[0]
    type(pipe).save_lora_weights(tmp_path / "lora", unet_lora_layers=lora_layers(pipe.unet))
    fresh = e.pipeline()
    inputs = unet_inputs(fresh.unet, batch=1)
    before = run_unet(fresh.unet, inputs)
    fresh.load_lora_weights(tmp_path / "lora")
    trained = run_unet(pipe.unet, inputs)
    assert torch.allclose(run_unet(fresh.unet, inputs), trained, atol=1e-6)
    assert (trained - before).abs().max() > 1e-4


def test_ip_adapter_state_dict_has_one_pair_per_cross_attention():
    from prune_lab.compat.ip_adapter import ip_adapter_state_dict

    s = student("sd", "bk-small")
    state = ip_adapter_state_dict(s)
    cross = [n for n in s.attn_processors if n.endswith("attn2.processor")]
    ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("ip_adapter.")})
    assert ids == list(range(1, 2 * len(cross), 2))  # diffusers' numbering: every other processor
    assert state["ip_adapter.1.to_k_ip.weight"].shape == (16, 32)  # stage 0 width x cross_attention_dim


def test_cli_check_json_and_exit_codes(sd_dir, tmp_path, capsys):
    from prune_lab.cli import main

    folder = export(sd_dir, tmp_path, "bk-tiny")
    assert main(["check", str(folder), "--only", "controlnet", "fp16", "cpu-offload", "--format", "json"]) == 0
    rows = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["controlnet"]["result"] == "ok" and rows["fp16"]["status"] == "ok"
    if not torch.cuda.is_available():
        assert rows["cpu-offload"]["result"].startswith("not applicable: no CUDA device")
    uneven = export(sd_dir, tmp_path, "uneven", without(load_unet(sd_dir).unet, UNEVEN))
    assert main(["check", str(uneven), "--only", "controlnet", "bf16"]) == 1  # a failing row: exit code 1
    out = capsys.readouterr().out
    assert "fails: ValueError: the student's down stages hold [1, 2, 2, 2] layers" in out
    assert "bf16" in out and out.count(" ok") == 1


def test_apply_check_runs_the_table_at_the_end(sd_dir, tmp_path, capsys):
    from prune_lab.cli import main

    out = tmp_path / "applied"
    argv = ["apply", "--model", str(sd_dir), "--preset", "bk-small", "--out", str(out)]
    assert main([*argv, "--check", "--only", "training-scripts", "controlnet"]) == 0
    text = capsys.readouterr().out
    assert "wrote pipeline" in text and "training-scripts" in text and text.count(" ok") == 2
    assert (out / "unet" / "config.json").is_file()
