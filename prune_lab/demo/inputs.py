"""The demo world's side of the analyses of :mod:`prune_lab.analysis` (what the notebooks feed them): calibration
batches and prompts from its scenes, images drawn for its captions, and caption accuracy as a quality measure.

The analyses know nothing of the demo; these functions turn the demo world into their arguments.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..scoring import DenoisingBatch, calibration_from_folder, denoising_batches, noise_scheduler
from .quality import Accuracy, Classifier, generate, generation_accuracy, image_seed
from .world import World, write_folder


def world_batches(
    pipe, world: World, samples: int, *, timesteps: int = 2, batch_size: int = 8, split: str = "train", seed: int = 0
) -> list[DenoisingBatch]:
    """Denoising batches from `samples` real scenes of the demo world (what ``score --calib-dir`` reads).

    The scenes are written as an image-text folder (:func:`prune_lab.demo.world.write_folder`) and encoded by
    :func:`prune_lab.scoring.calibration_from_folder` with the pipeline's VAE and text encoder; ``timesteps`` noise
    levels per scene are drawn from the pipeline's training schedule.

    Returns:
        ceil(samples · timesteps / batch_size) batches (latents ``[B, C, h, w]``, embeddings ``[B, L, D]``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(world, split, 0, samples, Path(tmp) / "scenes")
        calib = calibration_from_folder(pipe, folder, samples=samples, seed=seed, batch_size=batch_size)
    return denoising_batches(calib, noise_scheduler(pipe), timesteps=timesteps, batch_size=batch_size, seed=seed)


def caption_prompts(world: World, count: int, split: str = "heldout") -> list[str]:
    """The captions of the first `count` scenes of `split` (held-out captions, as the quality figures use)."""
    return [scene.caption for scene in world.scenes(split, 0, count)]


def caption_images(
    prompts: list[str], *, steps: int, guidance: float, seed: int = 0
) -> Callable[[object], torch.Tensor]:
    """How :func:`prune_lab.analysis.removal_images` draws a row: images ``[N, 3, H, W]`` in [0, 1] of a pipeline for
    `prompts` (:func:`prune_lab.demo.quality.generate`), image i from the noise seeded by ``image_seed(seed, i)``."""
    seeds = [image_seed(seed, i) for i in range(len(prompts))]

    def draw(pipe) -> torch.Tensor:
        return generate(pipe, prompts, seeds, steps=steps, guidance=guidance)

    return draw


def accuracy_columns(accuracy: Accuracy) -> dict[str, float]:
    """``<attribute>_accuracy`` and ``<attribute>_stderr`` per attribute; colour and shape together is `joint`."""
    out = {}
    for row in accuracy.to_frame().itertuples():
        name = "joint" if row.attribute == "colour+shape" else row.attribute
        out.update({f"{name}_accuracy": row.accuracy, f"{name}_stderr": row.stderr})
    return out


def caption_accuracy(
    classifier: Classifier, world: World, n: int, *, steps: int, guidance: float, seed: int = 0, batch_size: int = 50
) -> Callable[[object], dict[str, float]]:
    """A quality measure for :func:`prune_lab.analysis.plan_tradeoffs`: how often a pipeline draws what `n` held-out
    captions say (:func:`prune_lab.demo.quality.generation_accuracy`), as :func:`accuracy_columns`."""

    def measure(pipe) -> dict[str, float]:
        acc = generation_accuracy(
            classifier, pipe, world, n, steps=steps, guidance=guidance, seed=seed, batch_size=batch_size
        )
        return accuracy_columns(acc)

    return measure
