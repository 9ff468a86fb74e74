"""FID / IS / CLIP score on synthetic images with tiny networks (prune_lab/evaluation/metrics.py, protocol.py,
weights.py). Nothing is downloaded: every network is built here."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prune_lab.evaluation.metrics import (
    FID_MODES,
    FIDStats,
    class_logits,
    clip_scores,
    frechet_distance,
    inception_features,
    inception_score,
    load_fid_extractor,
)
from prune_lab.evaluation.protocol import EvalSettings, Evaluator
from prune_lab.evaluation.weights import INCEPTION, locate
from prune_lab.runtime.clip import load_clip

W = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [0.3, 0.0, 1.5]])
B = torch.tensor([1.0, -2.0, 0.5])


def linear_features(x: torch.Tensor) -> torch.Tensor:
    """A tiny FID 'network': features ``[B, 3]`` = W @ (mean colour of ``[B, 3, H, W]``) + b."""
    return x.double().mean((2, 3)) @ W.double().T + B.double()


def write_colours(folder, colours, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(colours):
        Image.new("RGB", (size, size), tuple(int(v) for v in c)).save(folder / f"{i:06d}.png")
    return sorted(folder.glob("*.png"))


# ----------------------------------------------------------------------------------------------------------- FID
@pytest.mark.parametrize("mode", list(FID_MODES))
def test_fid_equals_closed_form_frechet_distance(tmp_path, mode):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, size=(12, 3))
    t = np.array([10, 20, 5])
    files_a = write_colours(tmp_path / "a", a)
    files_b = write_colours(tmp_path / "b", 2 * a + t)  # features of b: 2 W a + W t + b, covariance 4x that of a
    feats_a = inception_features(files_a, linear_features, mode=mode, size=8, batch_size=5)
    feats_b = inception_features(files_b, linear_features, mode=mode, size=8, batch_size=5)
    np.testing.assert_allclose(feats_a, a @ W.double().numpy().T + B.numpy(), rtol=1e-5, atol=1e-4)
    stats_a, stats_b = FIDStats.from_features(feats_a), FIDStats.from_features(feats_b)
    # Frechet distance with S_b = c^2 S_a: |mu_a - mu_b|^2 + (1 - c)^2 Tr(S_a), here c = 2
    w = W.double().numpy()
    expected = np.sum((w @ (a.mean(0) + t)) ** 2) + np.trace(w @ np.cov(a, rowvar=False) @ w.T)
    assert frechet_distance(stats_a, stats_b) == pytest.approx(expected, rel=1e-4)
    assert abs(frechet_distance(stats_a, stats_a)) < 1e-6 * expected


def test_fid_through_evaluator_and_reference_cache(tmp_path):
    rng = np.random.default_rng(1)
    write_colours(tmp_path / "real", rng.integers(0, 255, size=(10, 3)))
    write_colours(tmp_path / "gen", rng.integers(0, 255, size=(8, 3)))
    cache = tmp_path / "real.npz"
    settings = EvalSettings(metrics=("fid",), real=str(tmp_path / "real"), real_stats=str(cache), resize=8)
    first = Evaluator(settings, {"fid": linear_features}).evaluate(tmp_path / "gen")
    stats = FIDStats.load(cache)  # written on first use
    assert stats.count == 10 and stats.meta == {
        "source": str(tmp_path / "real"),
        "fid_mode": "legacy_pytorch",
        "resize": 8,
    }
    gen = FIDStats.from_features(inception_features(sorted((tmp_path / "gen").glob("*.png")), linear_features))
    assert first["fid"] == pytest.approx(frechet_distance(gen, stats), rel=1e-9)
    reused = EvalSettings(metrics=("fid",), real_stats=str(cache), resize=8)
    assert Evaluator(reused, {"fid": linear_features}).evaluate(tmp_path / "gen")["fid"] == first["fid"]
    clean = EvalSettings(metrics=("fid",), real_stats=str(cache), resize=8, fid_mode="clean")
    with pytest.raises(ValueError, match="fid_mode=legacy_pytorch"):
        Evaluator(clean, {"fid": linear_features}).evaluate(tmp_path / "gen")


def test_fid_stats_files(tmp_path):
    feats = np.random.default_rng(2).normal(size=(20, 4))
    stats = FIDStats.from_features(feats, note="x")
    back = FIDStats.load(stats.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.mu, feats.mean(0))
    np.testing.assert_array_equal(back.sigma, np.cov(feats, rowvar=False))
    assert (back.count, back.meta) == (20, {"note": "x"})
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # pytorch-fid / BK-SDM real_im256.npz
    plain = FIDStats.load(tmp_path / "pytorch_fid.npz")
    assert plain.count is None and plain.meta == {} and frechet_distance(plain, back) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 images"):
        FIDStats.from_features(feats[:1])


def test_clean_mode_loads_a_local_torchscript_file(tmp_path):
    class Net(torch.nn.Module):  # the interface of NVIDIA's inception-2015-12-05.pt that clean-fid uses
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2048)
            )

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    net = Net()
    torch.jit.script(net).save(str(tmp_path / "my-inception.pt"))
    extractor = load_fid_extractor("clean", tmp_path / "my-inception.pt")
    x = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), net.layers((x - 128) / 128))


# ------------------------------------------------------------------------------------------------------------ IS
def test_inception_score_closed_forms():
    assert inception_score(torch.zeros(40, 1008)) == pytest.approx((1.0, 0.0), abs=1e-12)  # uniform p(y|x)
    confident = 50.0 * torch.eye(4).repeat(5, 1)  # 20 sure predictions spread evenly over 4 classes
    assert inception_score(confident, splits=1)[0] == pytest.approx(4.0, rel=1e-9)
    logits = torch.randn(30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = logits.softmax(1).numpy()
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1)
    assert inception_score(logits, splits=1)[0] == pytest.approx(float(np.exp(kl.mean())), rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(torch.zeros(5, 3))


def test_inception_score_of_images(tmp_path):
    files = write_colours(tmp_path, [(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 2)

    def classifier(images):  # uint8 [B, 3, H, W] -> logits [B, 3]: "which channel is on"
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 12, 12)
        return 40.0 * images.double().mean((2, 3)) / 255

    logits = class_logits(files, classifier, batch_size=4)
    torch.testing.assert_close(logits, 40.0 * torch.eye(3, dtype=torch.float64).repeat(2, 1))
    result = Evaluator(EvalSettings(metrics=("is",), is_splits=1), {"is": classifier}).evaluate(tmp_path)
    assert result["is_mean"] == pytest.approx(3.0, rel=1e-9) and result["num_images"] == 6


# ---------------------------------------------------------------------------------------------------------- CLIP
def save_tiny_clip(folder):
    """A random open_clip model in a ``local-dir:`` folder (config + weights), no download."""
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


def test_clip_score_equals_manual_open_clip_cosine(tmp_path):
    import open_clip

    rng = np.random.default_rng(3)
    files = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    texts = ["a red cat", "two dogs", "a photo of a tree", "blue", "an astronaut riding a horse"]
    name = save_tiny_clip(tmp_path / "clip")
    scores = clip_scores(files, texts, load_clip(name), size=24, batch_size=2)

    model, _, preprocess = open_clip.create_model_and_transforms(name)  # BK-SDM's eval_clip_score.py, by hand
    tokenizer = open_clip.get_tokenizer(name)
    manual = []
    with torch.no_grad():
        for f, text in zip(files, texts):
            image = preprocess(Image.open(f).resize((24, 24), Image.Resampling.BICUBIC)).unsqueeze(0)
            img, txt = model.encode_image(image), model.encode_text(tokenizer([text]))
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            manual.append((txt @ img.T).item())
    np.testing.assert_allclose(scores, manual, atol=1e-6)
    assert len(set(np.round(scores, 6))) == 5


# ------------------------------------------------------------------------------------------- weights and errors
@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tmp_path
    torch.hub.set_dir(old)


def test_missing_weights_name_the_flag(empty_caches):
    with pytest.raises(FileNotFoundError, match=r"pass --inception PATH .*pt_inception-2015-12-05-6726825d\.pth"):
        locate(INCEPTION)
    with pytest.raises(FileNotFoundError, match="--inception .*no such file"):
        locate(INCEPTION, empty_caches / "nope.pth")
    with pytest.raises(FileNotFoundError, match="--inception-torchscript"):
        load_fid_extractor("clean")
    with pytest.raises(FileNotFoundError, match="--clip-checkpoint PATH"):
        load_clip("ViT-g-14", "laion2b_s34b_b88k")
    with pytest.raises(ValueError, match="known: laion2b_s12b_b42k, laion2b_s34b_b88k"):
        load_clip("ViT-g-14", "laion400m")
    cached = empty_caches / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert locate(INCEPTION) == cached


def test_eval_input_errors(tmp_path):
    write_colours(tmp_path / "imgs", [(1, 2, 3)] * 3)
    prompts = pd.DataFrame({"file_name": ["000000", "000001", "000005"], "text": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="clip needs --prompts"):
        Evaluator(EvalSettings(metrics=("clip",))).evaluate(tmp_path / "imgs")
    with pytest.raises(ValueError, match="fid needs reference images"):
        Evaluator(EvalSettings(metrics=("fid",))).evaluate(tmp_path / "imgs")
    with pytest.raises(ValueError, match="unknown metrics kid"):
        Evaluator(EvalSettings(metrics=("kid",))).evaluate(tmp_path / "imgs")
    with pytest.raises(FileNotFoundError, match="1 of 3 images .* missing .*first: 000005"):
        Evaluator(EvalSettings(metrics=("is",)), {"is": None}).evaluate(tmp_path / "imgs", prompts)
