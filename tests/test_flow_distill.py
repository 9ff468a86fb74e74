"""`prunelab distill` end to end on a tiny SD3 pipeline: a student with one block fewer, exported by `apply` as a
stock transformer, retrained with the flow-matching objective, exported, reloaded and sampled."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from test_distill import write_image_folder
from transformer_pipelines import save_pipeline

pytest.importorskip("prune_lab.backbones.transformer", reason="needs the transformer backbone (issue 17)")


def test_cli_distills_an_sd3_student(tmp_path, capsys):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    from prune_lab import load_unet, make_plan, walk
    from prune_lab.cli import main
    from prune_lab.formats.block import apply_plan
    from prune_lab.pipelines import load_pipeline
    from prune_lab.runtime.generation import generate, initial_latents

    teacher_dir = save_pipeline("sd3", tmp_path / "teacher")
    images = write_image_folder(tmp_path / "images", n=4, corrupt=False, size=(16, 16))
    loaded = load_unet(teacher_dir)
    graph = walk(loaded.unet)
    keep = [u.name for u in graph.atoms() if u.name != "transformer_blocks.1" and u.parent != "transformer_blocks.1"]
    apply_plan(loaded, make_plan(loaded.unet, keep, source="tiny-sd3", graph=graph), tmp_path / "student")
    before = load_file(tmp_path / "student" / "transformer" / "diffusion_pytorch_model.safetensors")

    out = tmp_path / "out"
    argv = ["distill", "--teacher", str(teacher_dir), "--student", str(tmp_path / "student"), "--data", str(images)]
    argv += ["--out", str(out), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--resolution", "16"]
    argv += ["--num-workers", "0", "--no-progress", "--feature-layers", "blocks", "--lr", "1e-3"]
    argv += ["--validation-prompts", "a red cat", "--validation-every", "2", "--validation-steps", "2"]
    assert main(argv) == 0, capsys.readouterr().err

    rows = list(csv.DictReader((out / "losses.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["task"]) > 0 for r in rows)
    assert float(rows[0]["out"]) > 0 and float(rows[0]["feat"]) > 0  # block 1 of the student reads other inputs
    assert (out / "samples" / "step-0000002" / "00.png").is_file()

    student = SD3Transformer2DModel.from_pretrained(out / "transformer")  # stock diffusers, no prune_lab
    assert student.config.num_layers == 2
    after = student.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    pipe = load_pipeline(out)
    assert pipe.transformer.config.num_layers == 2
    latents = initial_latents(pipe, 1, seed=0, size=16)
    assert generate(pipe, ["a red cat"], latents, steps=2, guidance=2.0, size=16)[0].size == (16, 16)
