"""Prompt files, COCO caption sampling and generation (prune_lab/evaluation/prompts.py, generate.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_sdxl_pipeline
from PIL import Image

from prune_lab.evaluation.generate import (
    GenerationConfig,
    generate_images,
    load_pipeline,
    pending,
    prompt_seed,
    record_settings,
)
from prune_lab.evaluation.prompts import coco_captions, read_prompts, write_prompts
from prune_lab.runtime.samplers import SAMPLERS, build_sampler

PROMPTS = pd.DataFrame(
    {
        "file_name": [f"{i:06d}" for i in range(5)],
        "text": ["a cat", "a dog on grass", "a red car", "blue sky", "two birds"],
    }
)
FAST = dict(steps=2, resolution=32)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


# ------------------------------------------------------------------------------------------------------- prompts
def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    txt = read_prompts(tmp_path / "p.txt")
    assert txt.to_dict("list") == {"file_name": ["000000", "000001"], "text": ["a cat", "a dog"]}

    meta = {"file_name": ["x.jpg", "y.jpg"], "text": ["one", "two"]}  # BK-SDM's metadata.csv layout
    pd.DataFrame(meta).to_csv(tmp_path / "m.csv", index=False)
    assert read_prompts(tmp_path / "m.csv").to_dict("list") == meta
    pd.DataFrame({"text": ["one", "two"]}).to_csv(tmp_path / "t.csv", index=False)
    assert read_prompts(tmp_path / "t.csv")["file_name"].tolist() == ["000000", "000001"]


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"caption": ["a"]}), "no 'text' column"),
        (pd.DataFrame({"file_name": ["a.jpg", "a.png"], "text": ["x", "y"]}), "twice"),
        (pd.DataFrame({"text": ["x", None]}), "empty prompts"),
    ],
)
def test_read_prompts_rejects(tmp_path, frame, message):
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=message):
        read_prompts(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="coco-prompts"):
        read_prompts(tmp_path / "missing.csv")


def coco_file(path, n_images=8, captions_per_image=3):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(n_images + 1)]
    anns = [
        {"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": f" image {i}\n caption {j} "}
        for i in range(n_images)
        for j in range(captions_per_image)
    ]  # the last image has no caption
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def test_coco_captions_sampling(tmp_path):
    path = coco_file(tmp_path / "captions.json")
    df = coco_captions(path, n=5, seed=3)
    assert len(df) == 5 and df["image_id"].is_monotonic_increasing and df["image_id"].is_unique
    assert set(df["image_id"]) <= set(range(100, 108))  # never the caption-less image
    for row in df.itertuples():
        i, j = row.image_id - 100, row.caption_id - 1000 - 10 * (row.image_id - 100)
        assert 0 <= j < 3 and row.text == f"image {i} caption {j}"
        assert row.file_name == f"COCO_val2014_{row.image_id:012d}.jpg"
    # the documented procedure, by hand
    rng = np.random.default_rng(3)
    chosen = np.sort(rng.choice(np.arange(100, 108), size=5, replace=False))
    assert df["image_id"].tolist() == chosen.tolist()
    assert df["caption_id"].tolist() == [1000 + 10 * (i - 100) + int(rng.integers(3)) for i in chosen]
    pd.testing.assert_frame_equal(df, coco_captions(path, n=5, seed=3))
    assert coco_captions(path, n=None)["image_id"].tolist() == list(range(100, 108))
    with pytest.raises(ValueError, match="8 captioned images"):
        coco_captions(path, n=9)


def test_write_prompts_round_trip(tmp_path):
    df = coco_captions(coco_file(tmp_path / "c.json"), n=4, seed=0)
    write_prompts(df, tmp_path / "p.csv")
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == ["file_name", "text", "image_id", "caption_id"]
    pd.testing.assert_frame_equal(read_prompts(tmp_path / "p.csv"), df[["file_name", "text"]])


# ---------------------------------------------------------------------------------------------------- generation
def test_prompt_seed_depends_on_seed_and_index():
    seeds = {prompt_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and prompt_seed(0, 7) == prompt_seed(0, 7)
    assert prompt_seed(1, 0) != prompt_seed(0, 1)


def test_generate_deterministic_across_batch_sizes_and_processes(pipe, tmp_path):
    one = generate_images(pipe, PROMPTS, tmp_path / "one", GenerationConfig(batch_size=1, **FAST))
    batched = generate_images(pipe, PROMPTS, tmp_path / "batched", GenerationConfig(batch_size=3, **FAST))
    assert (one.written, one.skipped, batched.written) == (5, 0, 5)
    for shard in [(1, 2), (0, 2)]:  # two processes, in either order; a second run of the same images
        part = generate_images(pipe, PROMPTS, tmp_path / "sharded", GenerationConfig(**FAST), shard=shard)
        assert part.written == len(range(shard[0], 5, 2))
    for i in range(5):
        name = f"{i:06d}.png"
        ref = pixels(tmp_path / "one" / name)
        assert ref.shape == (32, 32, 3) and ref.std() > 1
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
        # batched matrix products may differ in the last bit, which can move a pixel by one level at most
        assert np.abs(pixels(tmp_path / "batched" / name) - ref).max() <= 1
    assert not (pixels(tmp_path / "one" / "000000.png") == pixels(tmp_path / "one" / "000001.png")).all()


def test_generate_resumes(pipe, tmp_path):
    config = GenerationConfig(**FAST)
    generate_images(pipe, PROMPTS, tmp_path, config)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.png")}
    (tmp_path / "000003.png").unlink()
    (tmp_path / ".000001.png.123.tmp").write_bytes(b"half-written")  # a killed run's leftovers are not images
    assert pending(PROMPTS, tmp_path) == [3]
    result = generate_images(pipe, PROMPTS, tmp_path, config)
    assert (result.written, result.skipped) == (1, 4)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.png")}
    assert after == before or {k for k in after if after[k][0] != before[k][0]} == {"000003.png"}
    assert after["000003.png"][1] == before["000003.png"][1]


def test_generation_json_guards_resume(tmp_path):
    settings = {
        "model": "m",
        "steps": 25,
        "guidance": 7.5,
        "scheduler": "pndm",
        "resolution": 512,
        "seed": 0,
        "dtype": "float16",
        "ext": "png",
    }
    record_settings(tmp_path, settings)
    record_settings(tmp_path, dict(settings, prompts="other.csv"))  # not a pixel setting
    with pytest.raises(ValueError, match="steps 25 -> 50"):
        record_settings(tmp_path, dict(settings, steps=50))


@pytest.mark.parametrize("name", [n for n in SAMPLERS.names() if not SAMPLERS.get(n).flow])
def test_scheduler_registry(tiny_pipeline_dir, name, tmp_path):
    spec = SAMPLERS.get(name)
    cls, overrides = spec.scheduler_class(), spec.overrides
    sampler = load_pipeline(tiny_pipeline_dir, scheduler=name)
    assert type(sampler.scheduler) is cls and all(sampler.scheduler.config[k] == v for k, v in overrides.items())
    assert type(build_sampler(name, sampler.scheduler.config)) is cls
    assert generate_images(sampler, PROMPTS[:1], tmp_path, GenerationConfig(scheduler=name, **FAST)).written == 1
    with pytest.raises(ValueError, match="choose from: pndm, ddim, euler, dpm, flow-euler"):
        GenerationConfig(scheduler="heun")


def test_pruned_export_loads_through_load_pruned(tiny_pipeline_dir, tmp_path):
    from prune_lab import apply_plan, load_pruned, load_unet, make_plan, walk
    from prune_lab.formats import PRUNED_MARKER

    loaded = load_unet(tiny_pipeline_dir)
    graph = walk(loaded.unet)
    cut = "down_blocks.1.attentions.0"  # one attention of a two-layer stage: not a plain diffusers config
    keep = [u.name for u in graph.units if u.name != cut and u.name not in graph.descendants(cut)]
    apply_plan(loaded, make_plan(loaded.unet, keep, source=str(tiny_pipeline_dir)), tmp_path / "pruned")
    assert (tmp_path / "pruned" / "unet" / PRUNED_MARKER).exists()
    pruned = load_pipeline(tmp_path / "pruned")
    reference = load_pruned(tmp_path / "pruned")
    assert pruned.unet.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, reference.state_dict()[k]) for k, a in pruned.unet.state_dict().items())
    result = generate_images(pruned, PROMPTS[:1], tmp_path / "imgs", GenerationConfig(**FAST))
    assert result.written == 1 and pixels(tmp_path / "imgs" / "000000.png").shape == (32, 32, 3)


def test_sdxl_folder_loads_the_sdxl_pipeline(tmp_path):
    from diffusers import PNDMScheduler, StableDiffusionXLPipeline

    build_tiny_sdxl_pipeline().save_pretrained(tmp_path / "sdxl")
    pipe = load_pipeline(tmp_path / "sdxl", scheduler="pndm")
    assert type(pipe) is StableDiffusionXLPipeline and type(pipe.scheduler) is PNDMScheduler
    generate_images(pipe, PROMPTS[:2], tmp_path / "imgs", GenerationConfig(steps=1, resolution=32, batch_size=2))
    first = pixels(tmp_path / "imgs" / "000000.png")
    generate_images(pipe, PROMPTS[:1], tmp_path / "again", GenerationConfig(steps=1, resolution=32))
    assert np.abs(pixels(tmp_path / "again" / "000000.png") - first).max() <= 1


def test_load_pipeline_needs_a_pipeline(tiny_unet_dir):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tiny_unet_dir)


def test_generate_refuses_a_pipeline_without_prompts(tmp_path):
    from conftest import tiny_ldm_unet
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=tiny_ldm_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ldm")
    with pytest.raises(ValueError, match="DDPMPipeline, which takes no prompt"):
        load_pipeline(tmp_path / "ldm")
