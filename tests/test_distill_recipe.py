"""The distillation recipe and `prunelab distill` / `cache-latents` end to end on a tiny pipeline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SD, tiny_unet
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from test_distill import write_image_folder

from prune_lab import load_unet, walk
from prune_lab.backbones import create_plan, make_plan
from prune_lab.cli import main
from prune_lab.distill import recipe as recipe_module
from prune_lab.distill.recipe import DistillConfig, DistillRecipe, DivergedError
from prune_lab.formats import PRUNED_MARKER, load_pruned
from prune_lab.formats.block import apply_plan


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def images(work):
    return write_image_folder(work / "images")  # 8 readable images and one corrupt file


@pytest.fixture(scope="module")
def student(work, tiny_pipeline_dir):
    """bk-tiny: a plain diffusers U-Net plus the other pipeline parts (apply's output for a pipeline teacher)."""
    loaded = load_unet(tiny_pipeline_dir)
    apply_plan(loaded, create_plan(loaded.unet, "bk-tiny", source="tiny"), work / "bk-tiny")
    return work / "bk-tiny"


@pytest.fixture(scope="module")
def compact_student(work, tiny_pipeline_dir):
    """A hand-written plan without a diffusers config (an attention block replaced): compact weights + plan."""
    loaded = load_unet(tiny_pipeline_dir)
    graph = walk(loaded.unet)
    gone = {"up_blocks.2.attentions.1", *graph.descendants("up_blocks.2.attentions.1")}
    keep = [u.name for u in graph.atoms() if u.name not in gone]
    apply_plan(loaded, make_plan(loaded.unet, keep, source="tiny"), work / "hand")
    assert (work / "hand" / "unet" / PRUNED_MARKER).exists()
    return work / "hand"


def config(teacher, student, data, out, **overrides) -> DistillConfig:
    base = dict(
        max_steps=5,
        batch_size=2,
        grad_accum=2,
        resolution=32,
        num_workers=0,
        checkpoint_every=3,
        checkpoints_limit=1,
        ema=True,
        ema_decay=0.9,
        progress=False,
    )
    return DistillConfig(
        teacher=str(teacher), student=str(student), data=str(data), out=str(out), **{**base, **overrides}
    )


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(work, tiny_pipeline_dir, student, images):
    result = DistillRecipe(config(tiny_pipeline_dir, student, images, work / "a")).run()
    return result


def test_uninterrupted_run_logs_every_step_and_skips_the_corrupt_image(uninterrupted):
    lines = (uninterrupted.out_dir / "losses.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,task,out,feat,feat:down_blocks.0,")
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert uninterrupted.bad_images == ["broken.png"]
    row = dict(zip(lines[0].split(","), map(float, lines[-1].split(","))))
    weighted = row["task"] + row["out"] + row["feat"]  # all lambdas 1
    assert row["loss"] == pytest.approx(weighted, rel=1e-6)
    assert row["feat"] == pytest.approx(sum(v for k, v in row.items() if k.startswith("feat:")), rel=1e-6)
    checkpoints = sorted(p.name for p in (uninterrupted.out_dir / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-0000005"]  # every 3 steps and at the end, newest 1 kept


def test_resume_after_a_kill_reproduces_the_loss_curve(
    uninterrupted, work, tiny_pipeline_dir, student, images, monkeypatch
):
    finish = recipe_module.DistillRecipe._finish_step

    def dies_after_step_4(self, means):
        finish(self, means)
        if self.progress.step == 4:
            raise Killed  # no checkpoint, no export: as if the process had been killed here

    monkeypatch.setattr(recipe_module.DistillRecipe, "_finish_step", dies_after_step_4)
    with pytest.raises(Killed):
        DistillRecipe(config(tiny_pipeline_dir, student, images, work / "b")).run()
    monkeypatch.undo()
    assert not (work / "b" / "unet").exists()
    assert len((work / "b" / "losses.csv").read_text().splitlines()) == 1 + 4
    resumed = DistillRecipe(config(tiny_pipeline_dir, student, images, work / "b", resume="latest")).run()
    assert resumed.resumed_from.name == "checkpoint-0000003"  # mid-epoch: 6 of 4-per-epoch micro-batches
    assert (work / "b" / "losses.csv").read_text() == (uninterrupted.out_dir / "losses.csv").read_text()
    a = load_file(uninterrupted.out_dir / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(work / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_holds_the_ema_weights_and_generates(uninterrupted, tiny_pipeline_dir):
    out = uninterrupted.out_dir
    last = out / "checkpoints" / "checkpoint-0000005"
    ema = torch.load(last / "custom_checkpoint_1.pkl", weights_only=True)["shadow_params"]
    trained = load_file(last / "model.safetensors")
    exported = load_pruned(out)
    params = dict(exported.named_parameters())
    for value, shadow in zip(params.values(), ema, strict=True):
        torch.testing.assert_close(value, shadow, rtol=0, atol=0)
    assert any(not torch.equal(params[k], trained[k]) for k in params)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert pipe.unet.config.block_out_channels == [16, 32, 64]
    image = pipe(
        "a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_cli_cache_then_distill_a_compact_student(work, tiny_pipeline_dir, compact_student, images, capsys):
    cache, out = work / "cache", work / "cli"
    assert (
        main(
            [
                "cache-latents",
                "--model",
                str(tiny_pipeline_dir),
                "--data",
                str(images),
                "--out",
                str(cache),
                "--resolution",
                "32",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "wrote 8 samples" in capsys.readouterr().out
    argv = [
        "distill",
        "--teacher",
        str(tiny_pipeline_dir),
        "--student",
        str(compact_student),
        "--data",
        str(cache),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--resolution",
        "32",
        "--num-workers",
        "0",
        "--feature-layers",
        "units",
        "--gradient-checkpointing",
        "--checkpoint-every",
        "0",
        "--validation-prompts",
        "a red cat",
        "--validation-every",
        "2",
        "--validation-steps",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "unet" / PRUNED_MARKER).exists() and (out / "plan.json").exists()
    assert (out / "samples" / "step-0000002" / "00.png").exists()
    assert "feat:up_blocks.2.attentions.0.transformer_blocks.0" in (out / "losses.csv").read_text().splitlines()[0]
    unet = load_pruned(out)
    assert "up_blocks.2.attentions.1" not in dict(unet.named_modules()) or not list(
        unet.up_blocks[2].attentions[1].parameters()
    )
    pipe = StableDiffusionPipeline.from_pretrained(out, unet=unet, safety_checker=None)
    image = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_cli_bad_input_is_one_line_and_exit_2(work, tiny_pipeline_dir, student, images, capsys, tmp_path):
    other = tmp_path / "other-teacher"
    tiny_unet(dict(TINY_SD, cross_attention_dim=16)).save_pretrained(other)
    loaded = load_unet(other)
    apply_plan(loaded, create_plan(loaded.unet, "bk-tiny", source="other"), tmp_path / "foreign")
    no_captions = tmp_path / "no-captions"
    no_captions.mkdir()
    (work / "a-dir").mkdir(exist_ok=True)
    (work / "a-dir" / "something").write_text("x")
    cases = {
        "pruned from architecture": (tmp_path / "foreign", images, tmp_path / "o1"),
        "no captions": (student, no_captions, tmp_path / "o2"),
        "--resume latest": (student, images, work / "a-dir"),
    }
    for message, (student_dir, data, out) in cases.items():
        argv = [
            "distill",
            "--teacher",
            str(tiny_pipeline_dir),
            "--student",
            str(student_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--resolution",
            "32",
            "--batch-size",
            "2",  # the default 64 is refused up front: 8 samples
            "--no-progress",
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(work, tiny_pipeline_dir, student, images, monkeypatch):
    forward = recipe_module.DistillationLoss.forward
    calls = []

    def nan_at_third_step(self, *args, **kwargs):
        terms = forward(self, *args, **kwargs)
        calls.append(1)
        return (
            terms
            if len(calls) < 3
            else type(terms)(terms.total * float("nan"), terms.task, terms.out, terms.feat, terms.per_feature)
        )

    monkeypatch.setattr(recipe_module.DistillationLoss, "forward", nan_at_third_step)
    out = work / "nan"
    cfg = config(tiny_pipeline_dir, student, images, out, grad_accum=1, checkpoint_every=2, checkpoints_limit=None)
    with pytest.raises(DivergedError, match="checkpoint-0000002"):
        DistillRecipe(cfg).run()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-0000002"]
    assert not (out / "unet").exists()


@pytest.mark.slow
def test_two_process_cpu_run_under_accelerate_launch(work, tiny_pipeline_dir, student, images):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Path(sys.executable).with_name("accelerate")
    out = work / "ddp"
    # accelerate's multi-process CPU mode: the multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU
    cmd = [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "prune_lab.cli",
        "distill",
        "--teacher",
        str(tiny_pipeline_dir),
        "--student",
        str(student),
        "--data",
        str(images),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--resolution",
        "32",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-0000002").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]  # both processes took part
    assert load_pruned(out).config.block_out_channels == [16, 32, 64]
