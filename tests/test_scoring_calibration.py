"""Calibration inputs: image-text folders, prompts (data-free), caches, and the noisy denoising batches."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from prune_lab.models import load_unet
from prune_lab.runtime.readers import read_image_text, read_prompt_lines
from prune_lab.runtime.schedule import noise_scheduler
from prune_lab.scoring import (
    Calibration,
    calibration_from_folder,
    calibration_from_prompts,
    denoising_batches,
    load_calibration,
    save_calibration,
    synthetic_calibration,
)
from prune_lab.scoring.calibration import load_pipeline


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(load_unet(tiny_pipeline_dir))


def _image_folder(folder, fmt: str):
    folder.mkdir()
    rows = [{"file_name": f"{i}.png", "text": text} for i, text in enumerate(["a red cat", "a green tree", "sky"])]
    for i, row in enumerate(rows):
        Image.new("RGB", (40, 36), (60 * i, 100, 200)).save(folder / row["file_name"])
    if fmt == "csv":
        lines = ["file_name,text"] + [f"{r['file_name']},{r['text']}" for r in rows]
        (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_image_folder_is_encoded_with_the_vae_and_text_encoder(pipe, tmp_path, fmt):
    folder = _image_folder(tmp_path / "data", fmt)
    calib = calibration_from_folder(pipe, folder, samples=2, seed=0)
    assert calib.latents.shape == (2, 4, 16, 16) and calib.embeddings.shape == (2, 77, 32)
    with torch.no_grad():
        text = pipe.text_encoder(pipe.tokenizer(["a red cat"], padding="max_length", return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(calib.embeddings[:1], text)
    again = calibration_from_folder(pipe, folder, samples=2, seed=0)
    assert torch.equal(calib.latents, again.latents)


def test_bad_folders_and_prompt_files(tmp_path):
    (tmp_path / "bare").mkdir()
    with pytest.raises(ValueError, match="has no captions: add metadata.csv or metadata.jsonl"):
        read_image_text(tmp_path / "bare")
    folder = _image_folder(tmp_path / "data", "csv")
    (folder / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match="lists 1.png"):
        read_image_text(folder)
    (tmp_path / "p.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="is empty; put one prompt per line"):
        read_prompt_lines(tmp_path / "p.txt")
    (tmp_path / "p.txt").write_text(" a cat \n\nsky\n")
    assert read_prompt_lines(tmp_path / "p.txt") == ["a cat", "sky"]


def test_data_free_calibration_generates_latents_with_the_model(pipe):
    calib = calibration_from_prompts(pipe, ["a red cat", "sky"], steps=2, seed=1)
    assert calib.latents.shape == (2, 4, 16, 16) and calib.embeddings.shape == (2, 77, 32)
    again = calibration_from_prompts(pipe, ["a red cat", "sky"], steps=2, seed=1)
    assert torch.equal(calib.latents, again.latents)
    assert not torch.equal(
        calib.latents, calibration_from_prompts(pipe, ["a red cat", "sky"], steps=2, seed=2).latents
    )


def test_cache_round_trip_and_mismatch(sd_unet, sdxl_unet, tmp_path):
    calib = synthetic_calibration(sdxl_unet, samples=3, seed=0, tokens=5)
    path = save_calibration(calib, tmp_path / "c.safetensors")
    back = load_calibration(path, sdxl_unet)
    assert torch.equal(back.latents, calib.latents) and torch.equal(back.embeddings, calib.embeddings)
    assert torch.equal(back.added["time_ids"], calib.added["time_ids"]) and back.source == calib.source
    with pytest.raises(ValueError, match="added conditions"):
        load_calibration(path, sd_unet)
    wide = Calibration(torch.zeros(1, 4, 8, 8), torch.zeros(1, 5, 64))
    with pytest.raises(ValueError, match="64-wide embeddings"):
        load_calibration(save_calibration(wide, tmp_path / "w.safetensors"), sd_unet)
    with pytest.raises(FileNotFoundError, match="--save-calib"):
        load_calibration(tmp_path / "missing.safetensors", sd_unet)


def test_denoising_batches_follow_the_forward_process(sd_unet):
    calib = synthetic_calibration(sd_unet, samples=3, seed=0, tokens=5)
    scheduler = noise_scheduler()
    batches = denoising_batches(calib, scheduler, timesteps=2, batch_size=4, seed=0)
    assert [b.target.shape[0] for b in batches] == [4, 2]
    first = batches[0]
    t = int(first.inputs["timestep"][1])
    alpha = scheduler.alphas_cumprod[t]
    expected = alpha.sqrt() * calib.latents[0] + (1 - alpha).sqrt() * first.target[1]  # epsilon target = noise
    torch.testing.assert_close(first.inputs["sample"][1], expected)
    assert torch.equal(first.inputs["encoder_hidden_states"][1], calib.embeddings[0])  # sample-major repeats
    assert torch.equal(batches[1].inputs["encoder_hidden_states"][0], calib.embeddings[2])
    again = denoising_batches(calib, scheduler, timesteps=2, batch_size=4, seed=0)
    assert torch.equal(again[1].inputs["sample"], batches[1].inputs["sample"])
    v_scheduler = type(scheduler).from_config(scheduler.config, prediction_type="v_prediction")
    v = denoising_batches(calib, v_scheduler, timesteps=2, batch_size=4, seed=0)[0]
    noise = first.target[1]
    torch.testing.assert_close(v.target[1], alpha.sqrt() * noise - (1 - alpha).sqrt() * calib.latents[0])
