"""The demo world and its shipped models: deterministic world, SD-v1-layout pipeline loading offline under the
built-in name `demo`, the open_clip scorer `demo-clip`, a small-sample quality check, and the training recipe's
exact resumption."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from prune_lab.demo import PIPELINE_DIR
from prune_lab.demo.architecture import build_tokenizer, train_bpe
from prune_lab.demo.world import ATTRIBUTES, COLOURS, SPLITS, World, caption, vocabulary


@pytest.fixture(scope="module")
def scorer():
    from prune_lab.demo.scorer import load_scorer

    return load_scorer()


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(PIPELINE_DIR, local_files_only=True)


# ------------------------------------------------------------------------------------------------------------ world
def test_world_is_deterministic_per_seed():
    a, scenes = World(0).batch("train", 7, 5)
    b, _ = World(0).batch("train", 7, 5)
    assert torch.equal(a, b)
    assert scenes == [World(0).scene("train", i) for i in range(7, 12)]
    assert not torch.equal(a, World(1).batch("train", 7, 5)[0])
    assert a.shape == (5, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_heldout_split_is_disjoint_from_training():
    world = World(0)
    train = world.render(world.scenes("train", 0, 300))
    held = world.render(world.scenes("heldout", 0, 300))
    seen = {x.numpy().tobytes() for x in train}
    assert not any(x.numpy().tobytes() in seen for x in held)
    entropy = {(0, SPLITS[s], i) for s in SPLITS for i in range(300)}
    assert len(entropy) == 2 * 300  # the scene seeds themselves never coincide


def test_scenes_show_their_ground_truth():
    world = World(0)
    scenes = world.scenes("heldout", 0, 200)
    images = world.render(scenes)
    for scene, image in zip(scenes, images):
        centre = image[:, round(scene.cy), round(scene.cx)]  # inside every shape
        expected = (torch.tensor(COLOURS[scene.colour]) + torch.tensor(scene.tint)).clamp(0, 1)
        torch.testing.assert_close(centre, expected)
        for corner in (image[:, 0, 0], image[:, -1, -1]):  # outside every shape
            torch.testing.assert_close(corner, torch.full((3,), scene.background))
        assert scene.caption == caption(scene.colour, scene.shape) == f"a {scene.colour} {scene.shape}"
    counts = Counter((s.colour, s.shape) for s in scenes)
    assert len(counts) == len(ATTRIBUTES["colour"]) * len(ATTRIBUTES["shape"])  # every combination occurs


def test_shapes_cover_their_geometric_area():
    # one scene of each shape, radius r: circle pi r^2, square (2 * 0.886 r)^2, triangle (3 sqrt(3) / 4) (1.4 r)^2
    from prune_lab.demo.world import Scene, shape_coverage

    r = 9.0
    scenes = [Scene("red", shape, 16.0, 16.0, r, 0.3, (0.0, 0.0, 0.0)) for shape in ("circle", "square", "triangle")]
    area = shape_coverage(scenes, 32).sum(dim=(1, 2, 3))
    expected = torch.tensor([np.pi * r**2, (2 * 0.886 * r) ** 2, 3 * 3**0.5 / 4 * (1.4 * r) ** 2])
    torch.testing.assert_close(area, expected, rtol=0.01, atol=0)


def test_demo_data_writes_an_image_text_folder(tmp_path):
    from prune_lab.cli import main
    from prune_lab.distill.data import ImageTextFolder

    out = tmp_path / "data"
    assert main(["demo-data", "--out", str(out), "-n", "5", "--start", "3", "--split", "heldout"]) == 0
    rows = pd.read_csv(out / "metadata.csv")
    scenes = World(0).scenes("heldout", 3, 5)
    assert rows.text.tolist() == [s.caption for s in scenes]
    assert rows[["colour", "shape"]].to_dict("records") == [s.attributes() for s in scenes]
    data = ImageTextFolder(out, resolution=32, flip=False)
    pixels = torch.stack([data.load(i)["pixel_values"] for i in range(5)])
    torch.testing.assert_close((pixels + 1) / 2, World(0).render(scenes), atol=1 / 255, rtol=0)  # 8-bit PNGs
    assert main(["demo-data", "--out", str(out), "-n", "2"]) == 2  # exists: refused, nothing touched
    assert len(pd.read_csv(out / "metadata.csv")) == 5


def test_train_bpe_on_a_hand_example():
    # pairs in "low</w>", "lower</w>": (l,o) and (o,w) twice -> (l,o) first (first seen), then (lo,w) ...
    assert train_bpe(["low", "lower"]) == [("l", "o"), ("lo", "w</w>"), ("lo", "w"), ("low", "e"), ("lowe", "r</w>")]


def test_tokenizer_has_one_token_per_word(tmp_path):
    tok = build_tokenizer()
    for word in vocabulary():
        ids = tok(word).input_ids
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == word + "</w>"
    assert tok.eos_token_id == len(tok) - 1  # highest id, as in CLIP
    tok.save_pretrained(tmp_path)
    again = type(tok).from_pretrained(tmp_path)
    text = "a yellow triangle"
    assert (
        again(text).input_ids
        == tok(text).input_ids
        == [0] + [tok.convert_tokens_to_ids(w + "</w>") for w in text.split()] + [tok.eos_token_id]
    )


# ---------------------------------------------------------------------------------------------- shipped pipeline
def test_demo_pipeline_loads_offline_with_sd_v1_topology(pipe):
    from prune_lab import load_unet, walk

    loaded = load_unet("demo")
    assert loaded.kind == "pipeline" and loaded.is_pipeline and loaded.root == PIPELINE_DIR
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4
    demo, sd = walk(loaded.unet), walk(load_unet("sd-v1", meta=True).unet)
    assert Counter(u.kind for u in demo.units) == Counter(u.kind for u in sd.units)
    assert [u.name for u in demo.units] == [u.name for u in sd.units]
    files = {p.name for p in PIPELINE_DIR.rglob("*") if p.is_file()}
    assert "diffusion_pytorch_model.safetensors" in files and "model.safetensors" in files
    assert not any(name.endswith(".bin") for name in files)


def test_shipped_weights_are_within_budget():
    from prune_lab.demo.quality import shipped_sizes

    sizes = shipped_sizes()
    assert set(sizes.file) >= {"pipeline/unet/diffusion_pytorch_model.safetensors", "clip/demo-clip.safetensors"}
    dit = sizes.file.str.startswith("pipeline-dit/")
    assert sizes.size_MB[~dit].sum() <= 25  # the U-Net demo: pipeline + scorer
    assert 0 < sizes.size_MB[dit].sum() <= 15  # demo-dit (its issue's budget)


# ---------------------------------------------------------------------------------------------------- the scorer
def test_quality_report_is_written_from_measurements_alone(tmp_path):
    from prune_lab.demo.quality import QualityRun, write_quality_report

    frame = pd.DataFrame({"attribute": ["colour", "shape"], "accuracy": [0.96, 0.5], "stderr": [0.01, 0.05]})
    settings = dict(model="demo", n=4, world_seed=0, scheduler="dpm", steps=3, guidance=2.0, seed=0, threads=1)
    run = QualityRun({**settings, "machine": "x86_64, 2 CPUs", "scorer_s": 60.0, "generation_s": 120.0}, frame, frame)
    report, record = write_quality_report(run, tmp_path / "quality.md", "prunelab demo-quality -n 4")
    text = report.read_text()
    assert "Regenerate with `prunelab demo-quality -n 4` (took 1.0 + 2.0 min on x86_64, 2 CPUs" in text
    assert "| colour | 96.0% | 1.0% |" in text and "## Shipped weights" in text and text.endswith("\n")
    assert record == tmp_path / "quality.json"
    import json

    assert json.loads(record.read_text())["generation"][1] == {"attribute": "shape", "accuracy": 0.5, "stderr": 0.05}


def test_scorer_loads_through_open_clip():
    import open_clip
    from safetensors.torch import load_file

    from prune_lab.demo.scorer import CLIP_CHECKPOINT, register

    name = register()
    assert name == "demo-clip" and name in open_clip.list_models()
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(CLIP_CHECKPOINT))
    state = load_file(CLIP_CHECKPOINT)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    text = "a red circle"
    tokens = open_clip.get_tokenizer(name)([text])
    assert tokens.shape == (1, 16) and tokens[0, :5].tolist() == build_tokenizer()(text).input_ids


def test_scorer_is_a_fid_feature_extractor(scorer):
    from prune_lab.runtime.clip import fid_extractor, normalize_images

    model = scorer[0]
    images, _ = World(0).batch("heldout", 0, 4)
    big = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 255
    features = fid_extractor(model)(big)
    assert features.shape == (4, model.visual.output_dim) and torch.isfinite(features).all()
    with torch.no_grad():  # 299 -> 32 is (nearly) the identity on the original images
        direct = model.encode_image(normalize_images(model, images))
    assert torch.nn.functional.cosine_similarity(features, direct).min() > 0.95


def test_scorer_reads_held_out_scenes(scorer):
    from prune_lab.demo.quality import Classifier, scorer_accuracy

    model, _, tokenizer = scorer
    acc = scorer_accuracy(Classifier(model, tokenizer), World(0), 64)
    assert acc.rate("colour") >= 0.9 and acc.rate("shape") >= 0.9
    frame = acc.to_frame().set_index("attribute")
    assert frame.loc["colour+shape", "accuracy"] == pytest.approx(np.mean(acc.joint))


def test_teacher_draws_its_captions(scorer, pipe):
    from prune_lab.demo.quality import Classifier, generation_accuracy

    model, _, tokenizer = scorer
    acc = generation_accuracy(Classifier(model, tokenizer), pipe, World(0), 16, steps=10, batch_size=16)
    assert acc.rate("colour") >= 0.6 and acc.rate("shape") >= 0.6


# -------------------------------------------------------------------------------------------------- the recipe
def test_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from prune_lab.demo.train import StageConfig, TrainConfig, VaeStage, train_stage

    config = TrainConfig(vae=StageConfig(steps=3, batch=4, lr=1e-3, warmup=1), checkpoint_every=10)
    straight = train_stage(VaeStage(config, tmp_path / "a"), progress=False)
    assert train_stage(VaeStage(config, tmp_path / "b"), progress=False, stop_after=2) is None  # interrupted
    assert not (tmp_path / "b" / "vae" / "result.json").exists()
    resumed = train_stage(VaeStage(config, tmp_path / "b"), progress=False)  # a new process picks it up
    assert resumed.steps == straight.steps == 3 and resumed.loss == straight.loss
    wa = load_file(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
