"""`prunelab coco-prompts`, `generate`, `eval` end to end on the tiny pipeline, with a random-weight Inception file
in the published layout and a tiny open_clip model (prune_lab/cli/evaluate.py)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluation_generate import coco_file
from test_evaluation_metrics import linear_features, save_tiny_clip

from prune_lab.cli import main
from prune_lab.evaluation.metrics import FID_MODES, FidMode, load_fid_extractor, load_is_classifier
from prune_lab.evaluation.protocol import RESULT_KEYS
from prune_lab.evaluation.weights import INCEPTION


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    """Random weights with the keys and shapes of pt_inception-2015-12-05-6726825d.pth (1008 classes, no aux)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in net.modules():  # He init keeps activations O(1) through the 94 convolutions (BN is identity)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_one_inception_file_serves_fid_and_is(fake_inception):
    fid_net = load_fid_extractor("legacy_pytorch", fake_inception)  # clean-fid's copy of pytorch-fid's network
    is_net = load_is_classifier(fake_inception)  # torch-fidelity's network
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    fc = torch.load(fake_inception)["fc.weight"]
    # pytorch-fid maps pixels to [-1, 1] as 2 x / 255 - 1, torch-fidelity as the TF graph does, (x - 128) / 128
    same_input = (x.float() - 128) / 128 * 127.5 + 127.5
    with torch.no_grad():
        pool = fid_net(same_input)
        assert pool.shape == (2, 2048) and pool.std() > 0.1
        torch.testing.assert_close(is_net(x), pool @ fc.T)  # IS uses the logits without the bias


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_fid_mode(monkeypatch):
    """A registered FID mode with a 3-feature network: the Fréchet distance of 2048 Inception features (scipy's
    sqrtm) takes about a minute on one core, too long for the suite. The --inception file is still required."""
    mode = FidMode(INCEPTION, lambda weights, device: linear_features, "legacy_pytorch", "test")
    monkeypatch.setitem(FID_MODES, "tiny", mode)
    return "tiny"


def test_cli_end_to_end(tmp_path, tiny_pipeline_dir, fake_inception, tiny_fid_mode, capsys):
    prompts, imgs = tmp_path / "prompts.csv", tmp_path / "imgs"
    code, out, _ = run(
        capsys, "coco-prompts", "--annotations", coco_file(tmp_path / "captions.json"), "--n", 4, "-o", prompts
    )
    assert code == 0 and "4 prompts" in out

    generate = [
        "generate",
        "--model",
        tiny_pipeline_dir,
        "--prompts",
        prompts,
        "--out",
        imgs,
        "--steps",
        2,
        "--resolution",
        32,
        "--batch-size",
        3,
    ]
    code, out, _ = run(capsys, *generate)
    assert code == 0 and "4/4 images; 4 written, 0 were there" in out
    assert run(capsys, *generate)[1].startswith(f"{imgs}: 4/4 images; 0 written, 4 were there")
    code, _, err = run(capsys, *generate[:-4], "--steps", 3)
    assert code == 2 and "steps 2 -> 3" in err and len(err.strip().splitlines()) == 1

    shutil.copytree(imgs, tmp_path / "copy")
    (tmp_path / "real").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "real" / f"r{i}.jpg")
    common = [
        "--prompts",
        prompts,
        "--resize",
        24,
        "--inception",
        fake_inception,
        "--fid-mode",
        tiny_fid_mode,
        "--is-splits",
        2,
        "--clip-model",
        save_tiny_clip(tmp_path / "clip"),
        "--num-workers",
        0,
        "--device",
        "cpu",
        "--batch-size",
        3,
    ]
    code, out, err = run(
        capsys,
        "eval",
        "--images",
        imgs,
        "--compare",
        tmp_path / "copy",
        "--real",
        tmp_path / "real",
        "--real-stats",
        tmp_path / "real.npz",
        *common,
        "--format",
        "json",
    )
    assert code == 0, err
    results = json.loads(out)
    assert [r["images"] for r in results] == [str(imgs), str(tmp_path / "copy")]
    for r in results:
        assert tuple(r) == RESULT_KEYS and r == json.loads((tmp_path / r["images"] / "eval.json").read_text())
        assert all(math.isfinite(r[k]) for k in ("fid", "is_mean", "is_std", "clip_score"))
        assert r["num_images"] == 4 and r["model"] == str(tiny_pipeline_dir.resolve())
        assert r["generation"]["steps"] == 2 and r["settings"]["real_count"] == 5
        assert -1 <= r["clip_score"] <= 1 and r["is_mean"] >= 1
    assert {k: results[0][k] for k in ("fid", "is_mean", "clip_score")} == {
        k: results[1][k] for k in ("fid", "is_mean", "clip_score")
    }

    code, out, err = run(
        capsys,
        "eval",
        "--images",
        imgs,
        "--real-stats",
        tmp_path / "real.npz",
        *common,
        "--metrics",
        "fid,clip",
        "--format",
        "csv",
    )
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert header == "model,images,num_images,fid,is_mean,is_std,clip_score"
    assert row.split(",")[3] == str(round(results[0]["fid"], 2)) and row.split(",")[4] == ""


def test_cli_eval_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    code, _, err = run(capsys, "eval", "--images", tmp_path / "imgs", "--metrics", "fid")
    assert code == 2 and "--real DIR" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "eval", "--images", tmp_path / "imgs", "--metrics", "clip")
    assert code == 2 and "clip needs --prompts" in err
    code, _, err = run(capsys, "eval", "--images", tmp_path / "missing", "--metrics", "is")
    assert code == 2 and "does not exist" in err
