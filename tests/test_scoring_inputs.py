"""From settings to scoring inputs (`prune_lab.scoring.inputs`): one calibration choice for `score` and `width`,
and only what the chosen criteria need is loaded."""

from __future__ import annotations

import pytest
import torch

from prune_lab.models import load_unet
from prune_lab.scoring import (
    AblationOptions,
    CalibrationSource,
    build_scoring_inputs,
    calibrate,
    denoising_batches,
    noise_scheduler,
    save_calibration,
    synthetic_calibration,
)


@pytest.fixture(scope="module")
def loaded(tiny_unet_dir):
    return load_unet(tiny_unet_dir)


def test_the_first_source_set_wins(loaded, tmp_path):
    cache = tmp_path / "calib.safetensors"
    save_calibration(synthetic_calibration(loaded.unet, samples=3, seed=5), cache)
    assert CalibrationSource().kind is None
    assert CalibrationSource(cache=cache, folder="imgs", synthetic=True, prompts="p.txt").kind == "cache"
    assert CalibrationSource(folder="imgs", synthetic=True, prompts="p.txt").kind == "folder"
    assert CalibrationSource(synthetic=True, prompts="p.txt").kind == "synthetic"
    assert CalibrationSource(prompts="p.txt").needs_pipeline and not CalibrationSource(synthetic=True).needs_pipeline
    calib, _ = calibrate(loaded, CalibrationSource(cache=cache, synthetic=True, samples=2))
    assert calib.latents.shape[0] == 3  # the cache, not 2 synthetic samples
    synthetic, scheduler = calibrate(loaded, CalibrationSource(synthetic=True, samples=2, seed=1, save=tmp_path / "s"))
    assert torch.equal(synthetic.latents, synthetic_calibration(loaded.unet, samples=2, seed=1).latents)
    assert (tmp_path / "s").is_file() and scheduler.config.num_train_timesteps == 1000


def test_missing_calibration_names_who_needs_it(loaded):
    with pytest.raises(ValueError, match="--criterion taylor needs calibration data: pass --calib-dir"):
        calibrate(loaded, CalibrationSource(), needed_by="--criterion taylor")
    with pytest.raises(ValueError, match="scoring with taylor needs calibration data"):
        build_scoring_inputs(loaded, ["magnitude", "taylor"])


def test_inputs_hold_only_what_the_criteria_need(loaded):
    plain = build_scoring_inputs(loaded, ["magnitude"], calibration=CalibrationSource(synthetic=True))
    assert plain.batches is None and plain.pipeline is None and plain.calibration is None
    source = CalibrationSource(synthetic=True, samples=2, seed=3, batch_size=2)
    inputs = build_scoring_inputs(loaded, ["ablation"], calibration=source, timesteps=1, options={"skip_mode": "drop"})
    calib = synthetic_calibration(loaded.unet, samples=2, seed=3)
    expected = denoising_batches(calib, noise_scheduler(loaded.root), timesteps=1, batch_size=2, seed=3)
    assert [torch.equal(a.target, b.target) for a, b in zip(inputs.batches, expected, strict=True)] == [True]
    assert inputs.options_for(AblationOptions).skip_mode == "drop" and inputs.seed == 3
    assert inputs.calibration == calib.source and inputs.unet is loaded.unet
