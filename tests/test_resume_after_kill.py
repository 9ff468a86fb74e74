"""Issue 14: `kill -9` in the middle of `score`, `generate`, `cache-latents` and `distill`, then a resume, gives what
an uninterrupted run gives; a torn last line in a score progress file is redone, not fatal.

The killed run is a real `prunelab` process (SIGKILL once its first progress artifact is on disk); the reference and
the resume run in this process. All on the shipped `demo` model at toy sizes; everything runs on one thread, so
the three runs compute in the same order.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from badinput.fixtures import Fixtures
from PIL import Image
from safetensors.torch import load_file

from prune_lab.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("kill-fixtures"))


def run(argv) -> None:
    assert main([str(a) for a in argv]) == 0


def killed(argv, cwd: Path, ready, limit: float = 120.0) -> Path:
    """Start `prunelab ARGV` as a process, SIGKILL it as soon as `ready()` holds; return its log file.

    Fails when the process ends (or the limit passes) before `ready()`: then nothing was interrupted.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    log = cwd / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prune_lab.cli", *map(str, argv)], cwd=cwd, env=env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + limit
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return log
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    pytest.fail(f"the run ended before it could be killed (rc {proc.returncode}): {log.read_text()[-800:]}")


# ------------------------------------------------------------------------------------------------------ score
SCORE = (
    "score", "--model", "demo", "--criterion", "ablation", "--synthetic", "--samples", "4", "--timesteps", "2",
    "--batch-size", "4", "--threads", "1", "--quiet",
)  # fmt: skip


def _records(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def score_runs(tmp_path_factory):
    """(reference table, folder of a run killed after a few units)."""
    root = tmp_path_factory.mktemp("score-kill")
    run((*SCORE, "-o", root / "ref" / "s.csv"))
    out = root / "killed" / "s.csv"
    out.parent.mkdir()
    progress = out.with_name("s.csv.partial-0.jsonl")
    killed((*SCORE, "-o", out), root, lambda: _records(progress) >= 4)  # header + 3 units
    assert not out.exists() and progress.exists()
    return pd.read_csv(root / "ref" / "s.csv"), out.parent


def _resume_score(folder: Path, tmp_path: Path) -> pd.DataFrame:
    work = tmp_path / "run"
    shutil.copytree(folder, work)
    run((*SCORE, "-o", work / "s.csv", "--resume"))
    assert not list(work.glob("*.partial-*")), "progress files left after the table was written"
    return pd.read_csv(work / "s.csv")


def test_score_killed_then_resumed_equals_uninterrupted(score_runs, tmp_path):
    reference, folder = score_runs
    pd.testing.assert_frame_equal(_resume_score(folder, tmp_path), reference)


def test_score_torn_last_progress_line_is_redone(score_runs, tmp_path):
    reference, folder = score_runs
    torn = tmp_path / "torn"
    shutil.copytree(folder, torn)
    progress = torn / "s.csv.partial-0.jsonl"
    text = progress.read_text()
    progress.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # half of the last record, no \n
    pd.testing.assert_frame_equal(_resume_score(torn, tmp_path), reference)


# --------------------------------------------------------------------------------------------------- generate
def test_generate_killed_then_resumed_equals_uninterrupted(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a {c} {s}\n" for c in ("red", "blue") for s in ("circle", "square", "triangle")))
    argv = ("generate", "--model", "demo", "--prompts", prompts, "--steps", "4", "--resolution", "32")
    run((*argv, "--out", tmp_path / "ref"))
    out = tmp_path / "run"
    killed((*argv, "--out", out), tmp_path, lambda: len(list(out.glob("0*.png"))) >= 2)
    assert len(list(out.glob("0*.png"))) < 6
    run((*argv, "--out", out))
    ref_files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert sorted(p.name for p in out.iterdir()) == ref_files  # no leftovers of the killed run
    for name in ref_files:
        if name.endswith(".png"):
            a, b = (np.asarray(Image.open(d / name)) for d in (tmp_path / "ref", out))
            assert np.array_equal(a, b), name


# ----------------------------------------------------------------------------------------------- cache-latents
def test_cache_latents_killed_then_resumed_equals_uninterrupted(fx, tmp_path):
    argv = (
        "cache-latents", "--model", fx["demo"], "--data", fx["data"], "--resolution", "64", "--shard-size", "1",
        "--batch-size", "1", "--dtype", "fp32", "--num-workers", "0", "--device", "cpu",
    )  # fmt: skip
    run((*argv, "--out", tmp_path / "ref"))
    out = tmp_path / "run"
    killed((*argv, "--out", out), tmp_path, lambda: (out / "shard-00001.safetensors").exists())
    assert not (out / "cache.json").exists()
    run((*argv, "--out", out))
    ref = tmp_path / "ref"
    assert sorted(p.name for p in out.rglob("*")) == sorted(p.name for p in ref.rglob("*"))
    for shard in sorted(ref.glob("shard-*.safetensors")):
        a, b = load_file(str(shard)), load_file(str(out / shard.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), shard.name


# ---------------------------------------------------------------------------------------------------- distill
def test_distill_killed_then_resumed_equals_uninterrupted(fx, tmp_path):
    argv = (
        "distill", "--teacher", "demo", "--student", fx["export"], "--data", fx["data"], "--max-steps", "8",
        "--batch-size", "2", "--grad-accum", "1", "--resolution", "32", "--num-workers", "0", "--no-progress",
        "--checkpoint-every", "2",
    )  # fmt: skip
    run((*argv, "--out", tmp_path / "ref"))
    out = tmp_path / "run"
    killed((*argv, "--out", out), tmp_path, lambda: (out / "checkpoints" / "checkpoint-0000002").is_dir())
    assert not (out / "unet").exists()
    run((*argv, "--out", out, "--resume", "latest"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "losses.csv"), pd.read_csv(tmp_path / "ref" / "losses.csv"))
    a = load_file(str(tmp_path / "ref" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
