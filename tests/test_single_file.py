"""Single-file checkpoints (prune_lab/formats/single_file.py): LDM key names, round trips through diffusers'
`from_single_file` with identical outputs, refusals, and `prunelab apply --single-file`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY_SD,
    build_tiny_pipeline,
    build_tiny_sdxl_pipeline,
    run_unet,
    tiny_unet,
    unet_inputs,
)
from safetensors.torch import load_file

from prune_lab.backbones import create_plan, make_plan, walk
from prune_lab.cli import main
from prune_lab.formats import PRUNED_MARKER
from prune_lab.formats.block import apply_plan
from prune_lab.formats.card import read_card
from prune_lab.formats.single_file import (
    check_single_file,
    check_single_file_path,
    load_single_file,
    unet_to_ldm,
    write_single_file,
)
from prune_lab.models import load_unet


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("single-file")


def _export(work: Path, teacher: str, preset: str) -> Path:
    loaded = load_unet(work / teacher)
    out = work / f"{teacher}-{preset}"
    apply_plan(loaded, create_plan(loaded.unet, preset, source=teacher), out)
    return out


@pytest.fixture(scope="module")
def sd_small(work):
    """bk-small of a tiny SD-v1 pipeline: fewer blocks per stage and no mid stage."""
    build_tiny_pipeline().save_pretrained(work / "sd")
    return _export(work, "sd", "bk-small")


@pytest.fixture(scope="module")
def sdxl_vega(work):
    build_tiny_sdxl_pipeline().save_pretrained(work / "sdxl")
    return _export(work, "sdxl", "vega")


def _images(pipe, **extra) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    kwargs = dict(num_inference_steps=2, height=32, width=32, generator=g, output_type="np")
    return pipe("a red circle", **kwargs, **extra).images


# ------------------------------------------------------------------------------------------------- key names
def test_stock_unet_keys_follow_the_ldm_layout_and_convert_back():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny_unet(TINY_SD)
    ldm = unet_to_ldm(unet)
    # SD-v1: 4 stages x (2 layers + downsampler) - 1 + conv_in = input_blocks 0..11; output_blocks 0..11.
    for key in (
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "middle_block.0.emb_layers.1.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.in_layers.2.weight",
        "output_blocks.2.1.conv.weight",  # up_blocks.0 has no attention: its upsampler is slot 1
        "output_blocks.5.2.conv.weight",  # with attention, slot 2
        "output_blocks.11.0.skip_connection.weight",
        "time_embed.0.weight",
        "out.2.weight",
    ):
        assert key in ldm, key
    assert not any(k.startswith(("input_blocks.12", "output_blocks.12", "middle_block.3")) for k in ldm)
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm.items()}, dict(unet.config))
    state = unet.state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_student_numbering_follows_its_layout(sd_small):
    from diffusers import UNet2DConditionModel

    ldm = unet_to_ldm(UNet2DConditionModel.from_pretrained(sd_small / "unet"))
    inputs = {int(k.split(".")[1]) for k in ldm if k.startswith("input_blocks.")}
    outputs = {int(k.split(".")[1]) for k in ldm if k.startswith("output_blocks.")}
    # 1 layer per down stage: conv_in, then (layer, downsampler) x 3 and a last layer = 0..7; up: 2 layers x 4 = 0..7
    assert inputs == set(range(8)) and outputs == set(range(8))
    assert "input_blocks.2.0.op.weight" in ldm and "output_blocks.1.1.conv.weight" in ldm
    assert not any(k.startswith("middle_block") for k in ldm)


# ------------------------------------------------------------------------------------------------ round trips
def test_sd_student_without_mid_round_trips_with_identical_outputs(sd_small, work):
    from diffusers import StableDiffusionPipeline

    path = write_single_file(sd_small, work / "sd-small.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in keys
    reloaded = load_single_file(path, sd_small)
    assert isinstance(reloaded, StableDiffusionPipeline)
    export = StableDiffusionPipeline.from_pretrained(sd_small)
    assert np.array_equal(_images(export), _images(reloaded))
    assert read_card(sd_small).single_file == str(path)


def test_sdxl_student_round_trips_with_identical_outputs(sdxl_vega, work):
    from diffusers import StableDiffusionXLPipeline

    path = write_single_file(sdxl_vega, work / "sdxl-vega.safetensors")
    reloaded = load_single_file(path, sdxl_vega)
    export = StableDiffusionXLPipeline.from_pretrained(sdxl_vega)
    assert np.array_equal(_images(export), _images(reloaded))
    ok, reason = check_single_file(sdxl_vega, work / "check")
    assert ok, reason


def test_unet_only_export_with_mid_round_trips(tmp_path):
    from diffusers import UNet2DConditionModel

    from prune_lab.runtime.loading import LoadedModel

    teacher = tiny_unet(TINY_SD)
    apply_plan(LoadedModel(teacher, "tiny", "unet"), create_plan(teacher, "bk-base", source="tiny"), tmp_path / "e")
    path = write_single_file(tmp_path / "e", tmp_path / "u.safetensors")
    reloaded = load_single_file(path, tmp_path / "e")
    export = UNet2DConditionModel.from_pretrained(tmp_path / "e" / "unet")
    assert reloaded.mid_block is not None
    inputs = unet_inputs(export)
    assert torch.equal(run_unet(export, inputs), run_unet(reloaded.eval(), inputs))


# ---------------------------------------------------------------------------------------------------- refusals
def test_load_pruned_only_students_are_refused(tmp_path):
    from prune_lab.runtime.loading import LoadedModel

    teacher = tiny_unet(TINY_SD)
    graph = walk(teacher)
    gone = {"up_blocks.2.attentions.1", *graph.descendants("up_blocks.2.attentions.1")}
    plan = make_plan(teacher, [u.name for u in graph.atoms() if u.name not in gone], source="tiny")
    apply_plan(LoadedModel(teacher, "tiny", "unet"), plan, tmp_path / "hand")
    assert (tmp_path / "hand" / "unet" / PRUNED_MARKER).exists()
    with pytest.raises(ValueError, match="load_pruned"):
        write_single_file(tmp_path / "hand", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    ok, reason = check_single_file(tmp_path / "hand", tmp_path)
    assert not ok and "load_pruned" in reason


def test_destination_checks(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        check_single_file_path(tmp_path / "model.ckpt")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(FileExistsError, match="folder"):
        check_single_file_path(tmp_path / "d.safetensors")
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="exists"):
        check_single_file_path(theirs)
    with pytest.raises(FileExistsError, match="did not write"):
        check_single_file_path(theirs, overwrite=True)


# ---------------------------------------------------------------------------------------------------------- CLI
def _cli(argv: list[str], capfd) -> tuple[int, str]:
    code = main(argv)
    return code, capfd.readouterr().err


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "name, setup, fragment",
    [
        ("wrong-suffix", None, ".safetensors file"),
        ("folder", "dir", "is a folder"),
        ("not-ours", "theirs", "did not write"),
    ],
)
def test_cli_bad_single_file(name, setup, fragment, work, sd_small, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / ("model.ckpt" if name == "wrong-suffix" else "m.safetensors")
    if setup == "dir":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif setup == "theirs":
        target.write_bytes(b"user file")
    before = _tree(tmp_path)
    argv = ["apply", "--model", str(work / "sd"), "--preset", "bk-small", "--out", str(tmp_path / "out")]
    code, err = _cli([*argv, "--single-file", str(target), "--overwrite"], capfd)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--single-file" in lines[0] and fragment in lines[0], err
    assert _tree(tmp_path) == before


def test_cli_refuses_a_load_pruned_plan_before_writing(work, sd_small, tmp_path, capfd):
    teacher = load_unet(work / "sd").unet
    graph = walk(teacher)
    gone = {"up_blocks.2.attentions.1", *graph.descendants("up_blocks.2.attentions.1")}
    make_plan(teacher, [u.name for u in graph.atoms() if u.name not in gone], source="sd").save(tmp_path / "p.json")
    argv = ["apply", "--model", str(work / "sd"), "--keep", str(tmp_path / "p.json"), "--out", str(tmp_path / "o")]
    code, err = _cli([*argv, "--single-file", str(tmp_path / "s.safetensors")], capfd)
    assert code == 2 and "load_pruned" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_cli_apply_single_file_end_to_end_and_overwrite(work, sd_small, tmp_path, capfd):
    out, single = tmp_path / "out", tmp_path / "student.safetensors"
    argv = [
        "apply",
        "--model",
        str(work / "sd"),
        "--preset",
        "bk-tiny",
        "--out",
        str(out),
        "--single-file",
        str(single),
    ]
    assert main(argv) == 0
    first = load_file(single)
    assert read_card(out).single_file == str(single)
    assert "from_single_file" in (out / "README.md").read_text()
    code, err = _cli(argv, capfd)  # without --overwrite the existing folder is refused first
    assert code == 2 and "--out" in err
    assert main([*argv, "--overwrite"]) == 0  # prune_lab's own file may be replaced
    again = load_file(single)  # the same tensors (the header's metadata order is the serializer's hash order)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    shutil.rmtree(out)
