"""End-to-end runs of `prunelab blocks / presets / plan / apply` on tiny models saved to tmp_path."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_SDXL, tiny_unet
from diffusers import UNet2DConditionModel

from prune_lab.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_blocks_json_has_the_documented_keys(capsys, tiny_unet_dir):
    code, out, _ = run(capsys, "blocks", "--model", tiny_unet_dir, "--format", "json")
    units = json.loads(out)
    assert code == 0 and len(units) == 75
    keys = {
        "name",
        "label",
        "kind",
        "stage",
        "in_channels",
        "out_channels",
        "params",
        "removal",
        "producer",
        "consumer",
    }
    assert keys <= set(units[0])
    skip = next(u for u in units if u["name"] == "skip:up_blocks.3.resnets.2")
    assert (skip["producer"], skip["consumer"], skip["kind"]) == ("conv_in", "up_blocks.3.resnets.2", "skip")


def test_blocks_csv_and_kind_filter(capsys):
    code, out, _ = run(capsys, "blocks", "--model", "sd-v1", "--format", "csv", "--kind", "mid", "stage")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("name,label,kind") and len(lines) == 1 + 9
    assert any(line.startswith("mid_block,M,mid") for line in lines)


def test_presets_table_sizes(capsys, tiny_unet_dir):
    code, out, _ = run(capsys, "presets", "--model", tiny_unet_dir, "--format", "json")
    rows = {r["preset"]: r for r in json.loads(out)}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_pretrained(tiny_unet_dir)
    assert code == 0 and rows["(base)"]["params"] == sum(p.numel() for p in unet.parameters())
    assert set(rows) == {"(base)", "bk-base", "bk-small", "bk-tiny", "mid-removal"}
    assert rows["bk-tiny"]["params"] < rows["bk-small"]["params"] < rows["bk-base"]["params"]
    assert all(r["expressible"] for r in rows.values())


def test_plan_then_apply(capsys, tmp_path, tiny_unet_dir):
    plan = tmp_path / "plan.json"
    code, out, _ = run(capsys, "plan", "--model", tiny_unet_dir, "--preset", "bk-small", "-o", plan)
    assert code == 0 and "wrote" in out and json.loads(plan.read_text())["meta"]["preset"] == "bk-small"
    code, out, _ = run(capsys, "apply", "--model", tiny_unet_dir, "--keep", plan, "--out", tmp_path / "student")
    assert code == 0 and "plain diffusers" in out and "skip rewired: up_blocks.0.resnets.0" in out
    student = UNet2DConditionModel.from_pretrained(tmp_path / "student" / "unet")
    assert student.config.layers_per_block == 1 and student.mid_block is None


def test_apply_preset_on_a_pipeline(capsys, tmp_path, tiny_pipeline_dir):
    code, out, _ = run(capsys, "apply", "--model", tiny_pipeline_dir, "--preset", "bk-base", "--out", tmp_path / "p")
    assert code == 0 and out.startswith("wrote pipeline")
    assert {p.name for p in (tmp_path / "p").iterdir()} >= {
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "model_index.json",
        "plan.json",
    }


def sdxl_plan(tmp_path):
    path = tmp_path / "sdxl.json"
    sdxl_dir = tmp_path / "sdxl"
    tiny_unet(TINY_SDXL).save_pretrained(sdxl_dir)
    assert main(["plan", "--model", str(sdxl_dir), "--preset", "vega", "-o", str(path)]) == 0
    return path


def bad_unit_plan(tmp_path):
    data = json.loads(sdxl_plan(tmp_path).read_text())
    data["base"]["fingerprint"] = None
    data["keep"] = ["mid_block", "down_blocks.0.resnet.0"]
    path = tmp_path / "bad_unit.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("unknown preset", ["--preset", "bk-huge"], "unknown preset 'bk-huge'"),
        ("other family", ["--preset", "ssd-1b"], "preset 'ssd-1b' is for sdxl models"),
        ("other architecture", ["--keep", sdxl_plan], "plan was made for architecture"),
        ("unknown unit", ["--keep", bad_unit_plan], "did you mean 'down_blocks.0.resnets.0'"),
        ("missing plan", ["--keep", "nope.json"], "plan file nope.json does not exist"),
    ],
)
def test_apply_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, tiny_unet_dir, case, args, message):
    args = [a(tmp_path) if callable(a) else a for a in args]
    capsys.readouterr()
    before = set(tmp_path.iterdir())
    code, out, err = run(capsys, "apply", "--model", tiny_unet_dir, *args, "--out", tmp_path / "out")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and err.startswith("prunelab apply")
    assert set(tmp_path.iterdir()) == before


def test_missing_model_folder(capsys, tmp_path):
    code, _, err = run(capsys, "blocks", "--model", tmp_path / "nothing-here")
    assert code == 2 and "neither a built-in" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "blocks", "--model", tmp_path / "empty")
    assert code == 2 and "holds no U-Net" in err


def test_console_script_exit_code():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prune_lab.cli",
            "plan",
            "--model",
            "sdxl",
            "--preset",
            "bk-tiny",
            "-o",
            "/nonexistent/p.json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "preset 'bk-tiny' is for sd models" in proc.stderr
