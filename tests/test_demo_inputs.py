"""The demo world's inputs to the analyses (prune_lab/demo/inputs.py): calibration batches, prompts, drawn images
and caption-accuracy columns, checked against the library calls they compose, on the tiny pipeline of conftest."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_pipeline

from prune_lab.demo.inputs import accuracy_columns, caption_images, caption_prompts, world_batches
from prune_lab.demo.quality import Accuracy, generate, image_seed
from prune_lab.demo.world import World, write_folder
from prune_lab.scoring import calibration_from_folder, denoising_batches, noise_scheduler


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_world_batches_are_the_folder_calibration_of_the_scenes(pipe, tmp_path):
    world = World(3)
    batches = world_batches(pipe, world, 3, timesteps=2, batch_size=4, seed=1)
    folder = write_folder(world, "train", 0, 3, tmp_path / "scenes")
    calib = calibration_from_folder(pipe, folder, samples=3, seed=1, batch_size=4)
    reference = denoising_batches(calib, noise_scheduler(pipe), timesteps=2, batch_size=4, seed=1)
    assert [b.target.shape[0] for b in batches] == [4, 2]
    for got, ref in zip(batches, reference, strict=True):
        assert torch.equal(got.inputs["sample"], ref.inputs["sample"])
        assert torch.equal(got.inputs["encoder_hidden_states"], ref.inputs["encoder_hidden_states"])
        assert torch.equal(got.target, ref.target)


def test_caption_prompts_are_the_held_out_captions():
    assert caption_prompts(World(0), 3) == [s.caption for s in World(0).scenes("heldout", 0, 3)]


def test_caption_images_draw_from_the_seeded_noise_every_call(pipe):
    prompts = ["a red circle", "a blue square"]
    draw = caption_images(prompts, steps=2, guidance=3.0, seed=5)
    images = draw(pipe)
    assert images.shape == (2, 3, 32, 32)
    assert torch.equal(images, generate(pipe, prompts, [image_seed(5, i) for i in range(2)], steps=2, guidance=3.0))
    assert torch.equal(draw(pipe), images)


def test_accuracy_columns():
    acc = Accuracy(4, {"colour": np.array([1, 1, 0, 0], bool), "shape": np.array([1, 0, 1, 1], bool)})
    assert accuracy_columns(acc) == pytest.approx(
        {
            "colour_accuracy": 0.5,
            "colour_stderr": 0.25,
            "shape_accuracy": 0.75,
            "shape_stderr": math.sqrt(0.75 * 0.25 / 4),
            "joint_accuracy": 0.25,
            "joint_stderr": math.sqrt(0.25 * 0.75 / 4),
        }
    )
