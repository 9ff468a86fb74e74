"""prune_lab.distill: the loss, plan-derived feature pairs, data and cache (recipe runs: test_distill_recipe.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SD, TINY_SDXL, tiny_unet, unet_inputs
from diffusers import DDPMScheduler
from PIL import Image

from prune_lab.backbones import build_student, create_plan, walk
from prune_lab.backbones.unet.compaction import unit_map
from prune_lab.distill.data import ImageTextFolder, LatentCache, collate, flip_for, write_latent_cache
from prune_lab.distill.encoders import FrozenEncoders, SDXLConditioner, load_encoders
from prune_lab.distill.features import FeaturePoint, FeatureTap, feature_pairs
from prune_lab.distill.losses import DistillationLoss, FeatureLoss
from prune_lab.distill.step import DistillStep, step_generator
from prune_lab.runtime.schedule import training_target


def write_image_folder(folder, n: int = 8, corrupt: bool = True, size=(40, 36)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,a photo number {i}")
    if corrupt:
        (folder / "broken.png").write_bytes(b"not a png")
        rows.insert(3, "broken.png,a broken file")
    (folder / "metadata.csv").write_text("file_name,text\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "images")


# ----------------------------------------------------------------------------------------------- the loss
def test_loss_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    s_out, target, t_out = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    s_feats = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 5, 16, generator=g)]
    t_feats = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 5, 16, generator=g)]
    terms = DistillationLoss(lambda_task=0.5, lambda_out=2.0, lambda_feat=3.0)(s_out, target, t_out, s_feats, t_feats)

    def by_hand(a, b):
        return ((a - b) ** 2).sum() / a.numel()

    feat = by_hand(s_feats[0], t_feats[0]) + by_hand(s_feats[1], t_feats[1])
    expected = 0.5 * by_hand(s_out, target) + 2.0 * by_hand(s_out, t_out) + 3.0 * feat
    torch.testing.assert_close(terms.total, expected)
    torch.testing.assert_close(terms.feat, feat)
    torch.testing.assert_close(FeatureLoss()(s_feats, t_feats), feat)
    assert terms.components()["task"] == pytest.approx(float(by_hand(s_out, target)))


def test_loss_gradients_reach_only_the_student():
    s_out = torch.randn(1, 4, 2, 2, requires_grad=True)
    t_out = torch.randn(1, 4, 2, 2, requires_grad=True)
    DistillationLoss()(s_out, torch.zeros(1, 4, 2, 2), t_out).total.backward()
    assert s_out.grad is not None and t_out.grad is None


def test_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="lambda_out"):
        DistillationLoss(lambda_out=-1)
    with pytest.raises(ValueError, match="shapes"):
        DistillationLoss()(
            torch.zeros(1, 4, 2, 2),
            torch.zeros(1, 4, 2, 2),
            torch.zeros(1, 4, 2, 2),
            [torch.zeros(1, 3)],
            [torch.zeros(1, 4)],
        )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_regression_target_by_prediction_type(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    latents, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 700])
    alpha = scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    expected = {
        "epsilon": noise,
        "sample": latents,
        "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents,
    }[prediction_type]
    torch.testing.assert_close(training_target(scheduler, latents, noise, t), expected)


# ------------------------------------------------------------------------------------------ feature pairs
def _student(config, preset):
    teacher = tiny_unet(config)
    compacted = build_student(teacher, create_plan(teacher, preset, source="tiny"))
    return teacher, compacted


def _features(model, points, inputs):
    tap = FeatureTap(model, points)
    with torch.no_grad(), tap.capturing():
        model(**inputs)
        values = tap.collect()
    tap.remove()
    return values


STAGE_COUNTS = {"bk-base": 9, "bk-small": 8, "bk-tiny": 6, "vega": 7}


@pytest.mark.parametrize(
    "config,preset", [(TINY_SD, "bk-base"), (TINY_SD, "bk-small"), (TINY_SD, "bk-tiny"), (TINY_SDXL, "vega")]
)
@pytest.mark.parametrize("layers", ["stages", "units"])
def test_feature_pairs_have_matching_shapes(config, preset, layers):
    teacher, compacted = _student(config, preset)
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), layers)
    inputs = unet_inputs(teacher)
    t_feats = _features(teacher, [p.teacher for p in pairs], inputs)
    s_feats = _features(compacted.student, [p.student for p in pairs], inputs)
    assert [tuple(f.shape) for f in s_feats] == [tuple(f.shape) for f in t_feats]
    if layers == "stages":
        assert len(pairs) == STAGE_COUNTS[preset]
    else:  # every kept resnet, attention block and transformer layer
        kinds = [p.student.module.split(".")[-2] for p in pairs]
        n_layers = sum(
            len(a.transformer_blocks)
            for n, a in compacted.student.named_modules()
            if n.endswith(tuple(f"attentions.{i}" for i in range(3))) and hasattr(a, "transformer_blocks")
        )
        assert kinds.count("transformer_blocks") == n_layers > 0


def test_sdxl_layer_pairs_follow_the_kept_layers():
    teacher = tiny_unet(TINY_SDXL)
    scores = {f"down_blocks.2.attentions.0.transformer_blocks.{k}": float(k) for k in range(10)}
    scores.update({n: 0.0 for n in _all_layer_names(teacher) if n not in scores})
    compacted = build_student(teacher, create_plan(teacher, "vega", source="tiny", scores=scores))
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), "units")
    layer_pairs = {p.student.module: p.teacher.module for p in pairs if "down_blocks.2.attentions.0.trans" in p.name}
    # vega keeps 2 of 10 layers there; with these scores the two last ones (8, 9), renumbered 0, 1 in the student
    prefix = "down_blocks.2.attentions.0.transformer_blocks"
    assert layer_pairs == {f"{prefix}.0": f"{prefix}.8", f"{prefix}.1": f"{prefix}.9"}


def _all_layer_names(unet):
    return [u.name for u in walk(unet).of_kind("transformer_layer")]


def test_bk_tiny_reads_the_teacher_before_the_downsampler_it_lost():
    """BK-SDM-Tiny: student down_blocks.2 (no downsampler) <-> teacher down_blocks.2 before its downsampler."""
    teacher, compacted = _student(TINY_SD, "bk-tiny")
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student))
    pair = next(p for p in pairs if p.name == "down_blocks.2")
    assert pair.teacher == FeaturePoint("down_blocks.2.downsamplers.0", "input")
    assert [p.teacher.module for p in pairs if p.name.startswith("up_blocks")] == [f"up_blocks.{i}" for i in (1, 2, 3)]
    inputs = unet_inputs(teacher)
    before, last_attention = _features(teacher, [pair.teacher, FeaturePoint("down_blocks.2.attentions.1")], inputs)
    torch.testing.assert_close(before, last_attention, rtol=0, atol=0)


def test_tap_records_only_while_capturing():
    unet = tiny_unet(TINY_SD)
    tap = FeatureTap(unet, [FeaturePoint("down_blocks.0")])
    inputs = unet_inputs(unet)
    with torch.no_grad():
        unet(**inputs)
        assert not tap._values
        with tap.capturing():
            unet(**inputs)
        assert tap.collect()[0].shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="module.down_blocks.0"):
        FeatureTap(unet, [FeaturePoint("module.down_blocks.0")])  # DDP's prefix: hooks go on the unwrapped model
    tap.remove()


def test_gradient_checkpointing_keeps_feature_gradients():
    teacher, compacted = _student(TINY_SD, "bk-small")
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), "units")
    inputs = unet_inputs(teacher)
    t_feats = _features(teacher, [p.teacher for p in pairs], inputs)
    grads = []
    for checkpointing in (False, True):
        student = compacted.student.train()
        student.zero_grad()
        if checkpointing:
            student.enable_gradient_checkpointing()
        tap = FeatureTap(student, [p.student for p in pairs])
        with tap.capturing():
            student(**inputs)
            FeatureLoss()(tap.collect(), t_feats).backward()
        tap.remove()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------------- data
def test_image_folder_crops_flips_and_skips_corrupt_images(image_folder):
    data = ImageTextFolder(image_folder, resolution=16, seed=3)
    assert len(data) == 9
    item = data[(0, 0)]
    assert item["pixel_values"].shape == (3, 16, 16) and item["text"] == "a photo number 0"
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    plain = data.load(0)["pixel_values"]
    torch.testing.assert_close(item["pixel_values"], plain.flip(-1) if flip_for(3, 0, 0) else plain)
    flips = [flip_for(3, epoch, 1) for epoch in range(20)]
    assert 0 < sum(flips) < 20  # flips vary by epoch, deterministically
    assert [flip_for(3, epoch, 1) for epoch in range(20)] == flips
    broken = data[(0, 3)]  # the corrupt image is replaced by the next one and reported
    assert broken["bad"] == ["broken.png"] and broken["text"] == "a photo number 3"
    batch = collate([data[(0, 2)], broken])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["bad"] == ["broken.png"]
    assert batch["index"].tolist() == [2, 4]


def test_image_folder_bad_input(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no captions"):
        ImageTextFolder(tmp_path / "a")
    (tmp_path / "a" / "metadata.csv").write_text("file_name,caption\nx.png,hello\n")
    with pytest.raises(ValueError, match="text"):
        ImageTextFolder(tmp_path / "a")
    (tmp_path / "a" / "metadata.csv").write_text("file_name,text\nx.png,hello\n")
    with pytest.raises(FileNotFoundError, match="missing image"):
        ImageTextFolder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageTextFolder(tmp_path / "nope")


def _image_batch(data, keys):
    return collate([data[k] for k in keys])


def test_cache_gives_the_same_loss_as_encoding_on_the_fly(tiny_pipeline_dir, image_folder, tmp_path):
    encoders = load_encoders(tiny_pipeline_dir)
    summary = write_latent_cache(
        encoders, image_folder, tmp_path / "cache", resolution=32, batch_size=3, shard_size=4, dtype=torch.float32
    )
    assert (summary.count, summary.shards, summary.skipped) == (8, 3, ["broken.png"])
    cache = LatentCache(tmp_path / "cache", seed=5)
    assert cache.meta["cond"] == ["encoder_hidden_states"] and len(cache) == 8

    teacher = tiny_unet(TINY_SD)
    compacted = build_student(teacher, create_plan(teacher, "bk-small", source="tiny"))
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student))
    scheduler = DDPMScheduler.from_pretrained(tiny_pipeline_dir / "scheduler")
    step = DistillStep(teacher, compacted.student, encoders, scheduler, DistillationLoss(), pairs)
    images = ImageTextFolder(image_folder, resolution=32, seed=5)
    # cache rows skip the corrupt file: row 3 is image "3.png", which is folder index 4
    on_the_fly = step(_image_batch(images, [(1, 0), (1, 4)]), step_generator(0, 7))
    cached_batch = collate([cache[(1, 0)], cache[(1, 3)]])
    from_cache = DistillStep(
        teacher,
        compacted.student,
        FrozenEncoders(None, None, encoders.scaling_factor),
        scheduler,
        DistillationLoss(),
        pairs,
    )(cached_batch, step_generator(0, 7))
    torch.testing.assert_close(from_cache.total, on_the_fly.total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.stack(from_cache.per_feature), torch.stack(on_the_fly.per_feature), rtol=1e-5, atol=1e-6
    )


def test_cache_writing_resumes_and_refuses_to_overwrite(tiny_pipeline_dir, image_folder, tmp_path):
    encoders = load_encoders(tiny_pipeline_dir)
    out = tmp_path / "cache"
    write_latent_cache(encoders, image_folder, out, resolution=32, shard_size=5)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_latent_cache(encoders, image_folder, out, resolution=32, shard_size=5)
    first = LatentCache(out)[6]["moments"].clone()
    (out / "cache.json").unlink()  # as if killed before finishing
    (out / "shard-00001.safetensors").unlink()
    summary = write_latent_cache(encoders, image_folder, out, resolution=32, shard_size=5)
    assert summary.resumed_shards == 1 and summary.count == 8
    torch.testing.assert_close(LatentCache(out)[6]["moments"], first)
    assert json.loads((out / "cache.json").read_text())["dtype"] == "float16"
    (out / "cache.json").unlink()
    with pytest.raises(ValueError, match="other settings"):  # never mixes shards of different settings
        write_latent_cache(encoders, image_folder, out, resolution=16, shard_size=5)


# -------------------------------------------------------------------------------------------- optimisation
def test_thirty_steps_on_a_fixed_batch_lower_the_kd_loss(tiny_pipeline_dir, image_folder):
    encoders = load_encoders(tiny_pipeline_dir)
    teacher = tiny_unet(TINY_SD).requires_grad_(False)
    compacted = build_student(teacher, create_plan(teacher, "bk-tiny", source="tiny"))
    student = compacted.student.train()
    pairs = feature_pairs(teacher, student, compacted.resolution, unit_map(student))
    scheduler = DDPMScheduler.from_pretrained(tiny_pipeline_dir / "scheduler")
    step = DistillStep(teacher, student, encoders, scheduler, DistillationLoss(), pairs)
    batch = _image_batch(ImageTextFolder(image_folder, resolution=32), [(0, 0)])
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    kd = []
    for _ in range(30):
        terms = step(batch, step_generator(0, 0))  # same batch, same noise every step
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        kd.append(float((terms.out + terms.feat).detach()))
    assert kd[-1] < 0.5 * kd[0]
    assert all(np.isfinite(kd))


# ---------------------------------------------------------------------------------------------------- SDXL
@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    from conftest import build_tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    build_tiny_sdxl_pipeline().save_pretrained(path)
    return path


def test_sdxl_conditioning_from_images_and_from_the_cache(tiny_sdxl_dir, image_folder, tmp_path):
    encoders = load_encoders(tiny_sdxl_dir)
    assert isinstance(encoders.conditioner, SDXLConditioner)
    images = ImageTextFolder(image_folder, resolution=32, seed=1)
    batch = _image_batch(images, [(0, 0), (0, 1)])
    cond = encoders.condition(batch)
    assert cond["encoder_hidden_states"].shape == (2, 77, 32) and cond["text_embeds"].shape == (2, 32)
    # 40x36 images: smaller edge 36 -> 32 makes them 35x32, center crop top 1, left 0; target 32x32
    assert cond["time_ids"].tolist() == [[40, 36, 1, 0, 32, 32]] * 2

    teacher = tiny_unet(TINY_SDXL)
    compacted = build_student(teacher, create_plan(teacher, "ssd-1b", source="tiny"))
    pairs = feature_pairs(teacher, compacted.student, compacted.resolution, unit_map(compacted.student), "units")
    scheduler = DDPMScheduler.from_pretrained(tiny_sdxl_dir / "scheduler")
    on_the_fly = DistillStep(teacher, compacted.student, encoders, scheduler, DistillationLoss(), pairs)(
        batch, step_generator(0, 1)
    )
    write_latent_cache(encoders, image_folder, tmp_path / "cache", resolution=32, dtype=torch.float32)
    cache = LatentCache(tmp_path / "cache", seed=1)
    assert cache.meta["cond"] == ["encoder_hidden_states", "text_embeds", "time_ids"]
    from_cache = DistillStep(
        teacher,
        compacted.student,
        FrozenEncoders(None, None, encoders.scaling_factor),
        scheduler,
        DistillationLoss(),
        pairs,
    )(collate([cache[(0, 0)], cache[(0, 1)]]), step_generator(0, 1))
    torch.testing.assert_close(from_cache.total, on_the_fly.total, rtol=1e-5, atol=1e-6)


def test_random_init_is_seeded_and_leaves_the_teacher_weights():
    from prune_lab.distill.recipe import reinitialize

    a, b, teacher = tiny_unet(TINY_SD), tiny_unet(TINY_SD), tiny_unet(TINY_SD)
    reinitialize(a, seed=3)
    reinitialize(b, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv_in.weight, teacher.conv_in.weight)
