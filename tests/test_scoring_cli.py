"""`prunelab score` / `prunelab plot` end to end on the tiny pipeline, the CLIP criterion, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prune_lab.backbones import walk
from prune_lab.cli import main
from prune_lab.models import load_unet
from prune_lab.scoring import ClipOptions, ScoringInputs, get_criterion, list_criteria, score_units
from prune_lab.scoring.calibration import load_pipeline
from prune_lab.scoring.clip import load_clip

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
UNITS = ["down_blocks.1.resnets.0", "up_blocks.2.attentions.1"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny open_clip model: its config (registered from a .json) and a checkpoint file."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "prunelab-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    checkpoint = folder / "tiny-clip.pt"
    torch.save(open_clip.create_model("prunelab-tiny-clip").state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a red cat\n\nthe blue sky at night\na dog on a beach\n")
    return path


def _clip_args(tiny_clip) -> list[str]:
    return ["--clip-model", str(tiny_clip[0]), "--clip-checkpoint", str(tiny_clip[1])]


def _score(pipe_dir, out, criterion, prompts, *extra) -> int:
    argv = [
        "score",
        "--model",
        str(pipe_dir),
        "--criterion",
        criterion,
        "-o",
        str(out),
        "--quiet",
        "--prompts",
        str(prompts),
        "--samples",
        "2",
        "--steps",
        "2",
        "--timesteps",
        "1",
        *extra,
    ]
    return main(argv)


@pytest.mark.parametrize("criterion", list_criteria("unet"))
def test_every_criterion_runs_end_to_end(tiny_pipeline_dir, tmp_path, prompts, tiny_clip, criterion, capsys):
    out = tmp_path / "scores.csv"
    assert _score(tiny_pipeline_dir, out, criterion, prompts, "--only", *UNITS, *_clip_args(tiny_clip)) == 0
    df = pd.read_csv(out)
    assert df["name"].tolist() == UNITS and set(df["criterion"]) == {criterion}
    assert df.columns.tolist()[:11] == [
        "name",
        "label",
        "kind",
        "params",
        "macs",
        "substitute",
        "criterion",
        "metric",
        "raw",
        "importance",
        "rank",
    ]
    assert df["macs"].gt(0).all() and sorted(df["rank"]) == [1, 2] and df["label"].tolist() == ["D2-R1", "U3-A2"]
    assert json.loads(out.with_suffix(".json").read_text())["scores"][0]["name"] == UNITS[0]
    assert "wrote" in capsys.readouterr().out


def test_clip_criterion_equals_a_manual_cosine(tiny_pipeline_dir, tmp_path, prompts, tiny_clip):
    loaded = load_unet(tiny_pipeline_dir)
    pipe, graph = load_pipeline(loaded), walk(loaded.unet)
    texts = ["a red cat", "the blue sky at night"]
    options = ClipOptions(
        clip_model=str(tiny_clip[0]), clip_checkpoint=str(tiny_clip[1]), steps=2, image_dir=str(tmp_path / "images")
    )
    inputs = ScoringInputs(loaded.unet, graph, pipeline=pipe, prompts=texts, options=[options], seed=3)
    unit = next(u for u in score_units(graph, "blocks") if u.name == UNITS[1])
    result = get_criterion("clip").build(inputs)(unit)

    clip = load_clip(str(tiny_clip[0]), checkpoint=tiny_clip[1])

    def manual(folder: str) -> float:
        images = [Image.open(tmp_path / "images" / folder / f"{i:04d}.png") for i in range(2)]
        with torch.no_grad():
            img = clip.model.encode_image(torch.stack([clip.preprocess(im) for im in images]))
            txt = clip.model.encode_text(clip.tokenizer(texts))
        return F.cosine_similarity(img, txt).mean().item()

    assert result.extras["clip_baseline"] == pytest.approx(manual("unpruned"), abs=1e-6)
    assert result.raw == pytest.approx(manual(UNITS[1]), abs=1e-6)
    assert result.importance == pytest.approx(result.extras["clip_baseline"] - result.raw, abs=1e-12)
    again = get_criterion("clip").build(inputs)(unit)  # same seeded initial latents -> same images, same score
    assert again == result


def test_skips_plot_and_compare(tiny_pipeline_dir, tmp_path, prompts, capsys):
    skips = tmp_path / "skips.csv"
    only = ["skip:up_blocks.3.resnets.2", "skip:up_blocks.0.resnets.0", "skip:up_blocks.2.resnets.1"]
    assert _score(tiny_pipeline_dir, skips, "magnitude", prompts, "--units", "skips", "--only", *only) == 0
    blocks = tmp_path / "blocks.csv"
    assert _score(tiny_pipeline_dir, blocks, "magnitude", prompts, "--only", *UNITS) == 0
    merged = tmp_path / "merged.csv"
    pd.concat([pd.read_csv(blocks), pd.read_csv(skips)]).to_csv(merged, index=False)
    assert main(["plot", str(merged), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000 and (tmp_path / "fig_skips.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["score", "--compare", str(skips), str(skips), "--format", "csv"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split(",")
    assert row[:3] == ["skips:magnitude", "skips:magnitude#2", "3"] and float(row[3]) == pytest.approx(1.0)


def test_calibration_cache_reproduces_the_encoded_run(tiny_pipeline_dir, tmp_path, prompts):
    cache = tmp_path / "calib.safetensors"
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _score(tiny_pipeline_dir, first, "ablation", prompts, "--only", *UNITS, "--save-calib", str(cache)) == 0
    argv = [
        "score",
        "--model",
        str(tiny_pipeline_dir),
        "--criterion",
        "ablation",
        "-o",
        str(second),
        "--quiet",
        "--calib-cache",
        str(cache),
        "--timesteps",
        "1",
        "--only",
        *UNITS,
    ]
    assert main(argv) == 0
    pd.testing.assert_series_equal(pd.read_csv(first)["raw"], pd.read_csv(second)["raw"])


@pytest.mark.parametrize(
    "case",
    ["criterion", "captions", "empty_prompts", "clip_offline", "no_data", "bare_unet_clip"],
)
def test_bad_input_is_one_line_and_exit_2(tiny_pipeline_dir, tiny_unet_dir, tmp_path, prompts, case, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "empty.txt").write_text("\n  \n")
    base = ["score", "--model", str(tiny_pipeline_dir), "-o", str(tmp_path / "s.csv"), "--quiet"]
    argv, expected = {
        "criterion": (base + ["--criterion", "magnitud"], "did you mean 'magnitude'?"),
        "captions": (base + ["--criterion", "taylor", "--calib-dir", str(tmp_path / "imgs")], "metadata.csv"),
        "empty_prompts": (base + ["--criterion", "ablation", "--prompts", str(tmp_path / "empty.txt")], "is empty"),
        "clip_offline": (base + ["--criterion", "clip", "--prompts", str(prompts)], "--clip-checkpoint"),
        "no_data": (base + ["--criterion", "taylor"], "--calib-dir"),
        "bare_unet_clip": (
            [
                "score",
                "--model",
                str(tiny_unet_dir),
                "-o",
                str(tmp_path / "s.csv"),
                "--criterion",
                "clip",
                "--prompts",
                str(prompts),
            ],
            "pipeline folder",
        ),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and err[-1].startswith("prunelab score: error:")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_two_processes_split_the_units_and_merge_one_table(tiny_unet_dir, tmp_path):
    common = [
        "score",
        "--model",
        str(tiny_unet_dir),
        "--criterion",
        "magnitude",
        "ablation",
        "--synthetic",
        "--samples",
        "2",
        "--timesteps",
        "1",
        "--quiet",
    ]
    assert main([*common, "-o", str(tmp_path / "one.csv")]) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    # accelerate's multi-process CPU mode: the multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2"]
    options = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    cmd = [*launch, *options, "-m", "prune_lab.cli", *common, "-o", str(tmp_path / "two.csv")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    pd.testing.assert_frame_equal(one, two, check_exact=False, rtol=1e-6)
    assert not list(tmp_path.glob("*.partial-*"))
    assert json.loads((tmp_path / "two.json").read_text())["meta"]["processes"] == 2
