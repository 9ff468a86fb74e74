"""From settings to scoring inputs: the calibration set, the pipeline, the prompts and the typed options.

One place for `prunelab score`, `prunelab width` (its Taylor pass), the demo run and the analysis notebooks:

* :class:`CalibrationSource` says where calibration comes from (a cache, an image-text folder, synthetic data or a
  prompts file: the first one set wins) and :func:`calibrate` reads it, with the model's noise schedule;
* :func:`build_scoring_inputs` loads what the chosen criteria need (batches, a pipeline, prompts) into a
  :class:`~prune_lab.scoring.registry.ScoringInputs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..runtime.loading import denoiser
from ..runtime.readers import check_images, read_image_text, read_prompt_lines
from ..runtime.schedule import noise_scheduler
from .calibration import (
    Calibration,
    DenoisingBatch,
    calibration_from_folder,
    calibration_from_prompts,
    denoising_batches,
    encode_images,
    load_calibration,
    load_pipeline,
    save_calibration,
    synthetic_calibration,
)
from .registry import ScoringInputs, criterion_options, get_criterion


@dataclass(frozen=True)
class CalibrationSource:
    """Where calibration data comes from: the first of `cache`, `folder`, `synthetic`, `prompts` that is set.

    Attributes:
        cache: a calibration cache file (written through `save`, `--save-calib`).
        folder: an image-text folder (images + metadata.csv/.jsonl: file_name,text).
        synthetic: Gaussian latents and embeddings shaped for the model (smoke tests, random weights).
        prompts: a prompts file: data-free calibration, clean latents the model generates itself. Generation-based
            criteria (`clip`) read their prompts from it too.
        samples: calibration samples (and prompts) used.
        seed: seed of every draw (samples, noise, timesteps).
        batch_size: encoding / generation batch, and the denoising batch size.
        steps / guidance: generation settings for `prompts` (None: the calibration module's defaults).
        save: also write the calibration set to this cache file.
    """

    cache: str | os.PathLike | None = None
    folder: str | os.PathLike | None = None
    synthetic: bool = False
    prompts: str | os.PathLike | None = None
    samples: int = 8
    seed: int = 0
    batch_size: int = 4
    steps: int | None = None
    guidance: float | None = None
    save: str | os.PathLike | None = None

    @property
    def kind(self) -> str | None:
        """`cache`, `folder`, `synthetic`, `prompts`, or None when nothing is set."""
        if self.cache:
            return "cache"
        if self.folder:
            return "folder"
        if self.synthetic:
            return "synthetic"
        return "prompts" if self.prompts else None

    @property
    def needs_pipeline(self) -> bool:
        """Reading it encodes images or generates latents (a pipeline folder is needed)."""
        return self.kind in ("folder", "prompts")


def read_source(source: CalibrationSource) -> list | None:
    """The rows (image folder) or prompts (prompts file) `source` names, read before any pipeline is loaded, so a
    bad file fails first; None for the other sources."""
    if source.kind == "folder":
        rows = read_image_text(source.folder)[: source.samples]
        check_images([r.path for r in rows])  # a calibration image that does not decode is an error, not skipped
        return rows
    if source.kind == "prompts":
        return read_prompt_lines(source.prompts)[: source.samples]
    return None


def _read(loaded, source: CalibrationSource, pipeline, rows: list | None) -> Calibration:
    unet, kind = loaded.unet, source.kind
    if kind == "cache":
        return load_calibration(source.cache, unet)
    if kind == "synthetic":
        return synthetic_calibration(unet, samples=source.samples, seed=source.seed)
    common = dict(seed=source.seed, batch_size=source.batch_size)
    if kind == "folder":
        return calibration_from_folder(pipeline, source.folder, samples=source.samples, rows=rows, **common)
    generation = {k: v for k, v in (("steps", source.steps), ("guidance", source.guidance)) if v is not None}
    return calibration_from_prompts(pipeline, rows, **common, **generation)


def calibrate(
    loaded, source: CalibrationSource, *, pipeline=None, needed_by: str = "this command", rows: list | None = None
):
    """The calibration set `source` names, and the model's training noise schedule.

    Args:
        loaded: a :class:`~prune_lab.models.LoadedModel` (a pipeline folder for image folders and prompts).
        source: where the data comes from.
        pipeline: the model's pipeline, when already loaded (else loaded here if the source needs one).
        needed_by: who asks, for the error message (`criterion 'taylor'`).
        rows: what :func:`read_source` read, when already read (else read here, before any pipeline loads).

    Returns:
        `(calibration, scheduler)`.

    Raises:
        ValueError: no source set, or a source the model cannot read (see :mod:`prune_lab.scoring.calibration`).
    """
    if source.kind is None:
        raise ValueError(
            f"{needed_by} needs calibration data: pass --calib-dir DIR, --prompts FILE, --calib-cache FILE or "
            "--synthetic"
        )
    rows = rows if rows is not None else read_source(source)
    if source.needs_pipeline and pipeline is None:
        pipeline = load_pipeline(loaded, loaded.unet.device)
    calib = _read(loaded, source, pipeline, rows)
    if source.save:
        save_calibration(calib, source.save)
    return calib, noise_scheduler(pipeline if pipeline is not None else loaded.root)


def check_own_source(backbone, source: CalibrationSource) -> None:
    """Refuse the sources :func:`own_batches` does not read (caches), before anything is read."""
    if source.kind == "cache":
        raise ValueError(
            f"--calib-cache is not read for {backbone.name} models yet: pass --calib-dir DIR or --prompts FILE with "
            "a pipeline folder, or --synthetic (or nothing) for the backbone's example inputs"
        )


def own_batches(loaded, source: CalibrationSource, *, pipeline=None, rows=None, timesteps: int = 2):
    """Calibration of a backbone that draws its own (:attr:`~prune_lab.backbones.Backbone.calibration` `own`: the
    transformers): the images of `--calib-dir` through the pipeline's VAE with their captions through its own
    `encode_prompt`; Gaussian latents of the model's size with the text of `--prompts`; else Gaussian latents and
    random text states shaped as the backbone's example inputs.

    Returns:
        `(batches, where)`: the denoising batches and what they are (recorded with the scores, shown by the CLI).

    Raises:
        ValueError: a cache (not read for these backbones yet).
    """
    from ..backbones import backbone_for

    model, backbone = loaded.unet, backbone_for(loaded.unet)
    check_own_source(backbone, source)
    rows = rows if rows is not None else read_source(source)
    conditioning, latents, samples = None, None, source.samples
    where = (
        f"synthetic:{samples} (random latents and text states shaped as the {backbone.name} backbone's example inputs)"
    )
    if source.kind == "prompts":
        conditioning, samples = backbone.encode_prompts(pipeline, rows, source.batch_size), len(rows)
        where = f"prompts:{samples} (text from the pipeline's encode_prompt, random latents)"
    elif source.kind == "folder":
        side = backbone.latent_size(model) * pipeline.vae_scale_factor
        latents = encode_images(pipeline, rows, side, seed=source.seed, batch_size=source.batch_size)
        conditioning = backbone.encode_prompts(pipeline, [r.text for r in rows], source.batch_size)
        where = (
            f"images:{source.folder} ({len(rows)} images through the pipeline's VAE, captions through encode_prompt)"
        )
    pairs = backbone.calibration_batches(
        model,
        samples=samples,
        timesteps=timesteps,
        batch_size=source.batch_size,
        seed=source.seed,
        conditioning=conditioning,
        scheduler=noise_scheduler(pipeline if pipeline is not None else loaded.root),
        latents=latents,
    )
    return [DenoisingBatch(kwargs, target) for kwargs, target in pairs], where


def _needs(criteria: Iterable[str]) -> set[str]:
    return {need for name in criteria for need in get_criterion(name).needs}


def build_scoring_inputs(
    loaded=None,
    criteria: Sequence[str] = (),
    *,
    pipeline=None,
    calibration: CalibrationSource | None = None,
    batches: list | None = None,
    timesteps: int = 2,
    prompts: Sequence[str] | None = None,
    options: Mapping[str, Any] | Sequence = (),
    seed: int | None = None,
    graph=None,
) -> ScoringInputs:
    """Everything `criteria` need to score the model, loaded once.

    Args:
        loaded: the model (:class:`~prune_lab.models.LoadedModel`); may be None when `pipeline` is given.
        criteria: registered criterion names: what to load follows their `needs` (denoising batches from
            `calibration`, a pipeline, prompts).
        pipeline: a loaded pipeline whose `.unet` is the model (else loaded from the model folder when needed).
        calibration: where the denoising batches come from (and the prompts of generation-based criteria).
        batches: ready denoising batches (then `calibration` is not read).
        timesteps: sampled timesteps per calibration sample.
        prompts: prompts of generation-based criteria (default: the first `samples` of `calibration.prompts`).
        options: typed criterion options, or flat settings (:func:`~prune_lab.scoring.registry.criterion_options`).
        seed: the criteria's seed (default: the calibration's, else 0).
        graph: the model's walk, when already made.

    Raises:
        ValueError: unknown criterion or option, missing calibration data, a model that is not a pipeline folder
            where one is needed.
    """
    from ..backbones import backbone_for, walk

    if loaded is None and pipeline is None:
        raise ValueError("build_scoring_inputs needs the model (`loaded`) or its pipeline")
    unet = loaded.unet if loaded is not None else denoiser(pipeline)
    needs, source = _needs(criteria), calibration or CalibrationSource()
    wants_batches = "batches" in needs and batches is None
    own = backbone_for(unet).calibration == "own"
    if wants_batches and own:
        check_own_source(backbone_for(unet), source)
    rows = read_source(source) if wants_batches or "pipeline" in needs else None  # files fail before loading
    if prompts is None and "pipeline" in needs and source.prompts:
        prompts = rows if source.kind == "prompts" else read_prompt_lines(source.prompts)[: source.samples]
    if pipeline is None and ("pipeline" in needs or (wants_batches and source.needs_pipeline)):
        pipeline = load_pipeline(loaded, unet.device)
    where = None
    if wants_batches and own:
        batches, where = own_batches(loaded, source, pipeline=pipeline, rows=rows, timesteps=timesteps)
    elif wants_batches:
        asking = [c for c in criteria if "batches" in get_criterion(c).needs]
        who = f"scoring with {' and '.join(asking)}"
        calib, scheduler = calibrate(loaded, source, pipeline=pipeline, needed_by=who, rows=rows)
        batches = denoising_batches(
            calib, scheduler, timesteps=timesteps, batch_size=source.batch_size, seed=source.seed
        )
        where = calib.source
    if isinstance(options, Mapping):
        options = criterion_options(options, criteria or None)
    seed = source.seed if seed is None else seed
    graph = graph if graph is not None else walk(unet)
    prompts = list(prompts) if prompts is not None else None
    return ScoringInputs(unet, graph, batches, pipeline, prompts, tuple(options), seed, where)
