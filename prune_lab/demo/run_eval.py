"""The demo job's evaluation step: teacher, pruned and distilled students drawn on held-out captions, read by the
demo scorer (caption accuracy with standard errors, FID in its embedding space), with params and MACs.

Each model's images are kept in the run folder (``eval/<model>.pt``) as soon as they are drawn, so a killed
evaluation redoes only the models it had not finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..runtime.atomic import write_with
from .job import MODELS, Job, write_text

BATCH = 32  # images per pipeline call


def _generated(job: Job, name: str, model: str | Path) -> torch.Tensor:
    """Images ``[n, 3, 32, 32]`` in [0, 1] of `model` for the captions of the first n held-out scenes, with the
    seeds of :func:`prune_lab.demo.quality.generation_accuracy` (kept in ``eval/<name>.pt``, so a killed
    evaluation redoes only the models it had not finished)."""
    from ..evaluation.generate import load_pipeline
    from .quality import generate, image_seed
    from .world import World

    path, c = job.path("eval", f"{name}.pt"), job.config
    if not path.exists():
        pipe = load_pipeline(str(model), scheduler=c.scheduler)
        scenes = World(c.seed).scenes("heldout", 0, c.eval_samples)
        images = []
        with tqdm(total=len(scenes), desc=f"generate {name}", unit="image", disable=not job.progress) as bar:
            for start in range(0, len(scenes), BATCH):
                part = scenes[start : start + BATCH]
                seeds = [image_seed(c.seed, start + i) for i in range(len(part))]
                images.append(generate(pipe, [s.caption for s in part], seeds, steps=c.steps, guidance=c.guidance))
                bar.update(len(part))
        write_with(path, lambda tmp: torch.save(torch.cat(images), tmp))
    return torch.load(path, weights_only=True)


def caption_accuracy(classifier, images: torch.Tensor, scenes) -> pd.DataFrame:
    """Accuracy with standard errors (:meth:`prune_lab.demo.quality.Accuracy.to_frame`) of images ``[n, 3, H, W]``
    meant to show `scenes`, read by the scorer as :func:`~prune_lab.demo.quality.generation_accuracy` reads them."""
    from .quality import Accuracy

    predicted = classifier.classify(images)
    correct = {
        a: np.array([p == s.attributes()[a] for p, s in zip(values, scenes)]) for a, values in predicted.items()
    }
    return Accuracy(len(scenes), correct).to_frame()


def fid(model, images: torch.Tensor, real: torch.Tensor) -> float:
    """FID between two image sets ``[n, 3, H, W]`` in [0, 1] in the demo scorer's embedding space."""
    from ..evaluation.metrics import FIDStats, frechet_distance
    from ..runtime.clip import fid_extractor

    extract = fid_extractor(model)
    a, b = (FIDStats.from_features(extract(x * 255).numpy()) for x in (images, real))
    return frechet_distance(a, b)


def _costs(folders: dict[str, str | Path]) -> pd.DataFrame:
    """Denoiser (U-Net or transformer, its backbone's subfolder names the columns) params and MACs per model, and
    MACs of a whole generation (:mod:`prune_lab.report`), one row per model; the first model is the reference."""
    from ..backbones import backbone_for
    from ..models import load_unet
    from ..report import compare, comparison_frame

    names = list(folders)
    teacher = load_unet(str(folders[names[0]]))
    frame = comparison_frame(compare(teacher, [str(folders[n]) for n in names[1:]]))
    part = backbone_for(teacher.unet).subfolder
    keep = [f"{part}_params_M", f"{part}_macs_G", "whole_macs_G"]
    return frame[[k for k in keep if k in frame]].assign(model=names)


def cost_columns(table: pd.DataFrame, *, whole: bool = True) -> list[str]:
    """The params / MACs columns of an evaluation table (``unet_*`` or ``transformer_*``, then ``whole_macs_G``)."""
    costs = [c for c in table if c.endswith(("_params_M", "_macs_G"))]
    return costs if whole else [c for c in costs if not c.startswith("whole_")]


def _row(name: str, classifier, images: torch.Tensor, scenes, reference: torch.Tensor | None) -> dict:
    """One table row: accuracy and standard error per attribute, and FID against `reference` (NaN without)."""
    row = {"model": name, "n": len(scenes)}
    for attribute, a in caption_accuracy(classifier, images, scenes).set_index("attribute").iterrows():
        row[attribute], row[f"{attribute}_se"] = a["accuracy"], a["stderr"]
    row["fid"] = fid(classifier.model, images, reference) if reference is not None else float("nan")
    return row


def evaluate(job: Job, folders: dict[str, str | Path]) -> pd.DataFrame:
    """Caption accuracy (colour, shape, both; binomial standard errors), FID against the real held-out scenes in
    the scorer's space (when `fid`), and denoiser params / MACs of each model in `folders` (``eval.csv``).

    A last row, ``real``, reads the real scenes themselves (the scorer's accuracy: the ceiling) and gives the FID of
    the next n real held-out scenes (the floor at this sample size).
    """
    from .quality import Classifier
    from .scorer import load_scorer
    from .world import World

    path, c = job.path("eval.csv"), job.config

    def compute() -> None:
        model, _, tokenizer = load_scorer()
        classifier = Classifier(model, tokenizer)
        world, n = World(c.seed), c.eval_samples
        real, scenes = world.batch("heldout", 0, n)
        reference = real if c.fid else None
        rows = [_row(name, classifier, _generated(job, name, f), scenes, reference) for name, f in folders.items()]
        floor = _row("real", classifier, real, scenes, None)
        floor["fid"] = fid(model, world.batch("heldout", n, n)[0], real) if c.fid else float("nan")
        table = pd.DataFrame([*rows, floor]).merge(_costs(folders), on="model", how="left")
        write_text(path, table.to_csv(index=False))

    job.once("evaluate", [path], compute, inputs=[Path(f) if Path(f).is_dir() else str(f) for f in folders.values()])
    return pd.read_csv(path)


def sample_images(job: Job, count: int = 8) -> dict[str, torch.Tensor]:
    """The first `count` evaluation images of every model (``[count, 3, H, W]``), for the report's figure."""
    return {name: torch.load(job.path("eval", f"{name}.pt"), weights_only=True)[:count] for name in MODELS}
