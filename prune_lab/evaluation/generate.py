"""Generating evaluation images: deterministic per prompt, resumable, split across processes.

Determinism: prompt ``i`` starts from latents drawn by its own CPU generator seeded with
:func:`prompt_seed` ``(seed, i)`` (diffusers draws one latent per generator when given a list), so an image depends
on its prompt index only: not on the batch size, the process count, or which images were already there. The
samplers of :mod:`prune_lab.runtime.samplers` add no noise after the first step. (Batches of different sizes can
still differ in the last bit of floating point, which may move a pixel by one level.)

Resuming: images are written under a temporary name and renamed, so an image that exists is complete and is
skipped. The settings that decide the pixels go to ``OUT/generation.json``; resuming with different ones is an
error rather than a silently mixed folder.

Processes: process ``k`` of ``n`` takes prompt indices ``k, k+n, k+2n, ...`` (run the CLI under
``accelerate launch``). The BK-SDM protocol (Kim et al., 2023) is PNDM, 25 steps, guidance 7.5, 512x512; with no
sampler named, a flow-matching pipeline (SD3, Flux) takes its flow sampler and Sana its DPM-Solver on flow sigmas
(:func:`prune_lab.runtime.samplers.default_sampler`), and ``generation.json`` records the name resolved.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from .. import pipelines
from ..runtime import samplers
from ..runtime.atomic import atomic_path, write_json
from ..runtime.generation import check_resolution, native_side, sample
from ..runtime.validate import read_json
from .images import image_name

#: Image formats by extension (JPEG at PIL's default quality 75 is what BK-SDM's scripts wrote).
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}

#: `generation.json` keys that must agree when a folder is resumed.
PIXEL_KEYS = ("model", "steps", "guidance", "scheduler", "resolution", "seed", "dtype", "ext")


@dataclass(frozen=True)
class GenerationConfig:
    """How images are sampled.

    Attributes:
        steps: denoising steps.
        guidance: classifier-free guidance scale.
        scheduler: a :mod:`prune_lab.runtime.samplers` name; None: the pipeline's default
            (:func:`~prune_lab.runtime.samplers.default_sampler`, `pndm` for SD / SDXL as BK-SDM).
        resolution: square image side in pixels; None uses the model's native size.
        seed: base seed; prompt ``i`` uses :func:`prompt_seed` ``(seed, i)``.
        batch_size: prompts per pipeline call.
        ext: image file extension, a :data:`IMAGE_FORMATS` key.
    """

    steps: int = 25
    guidance: float = 7.5
    scheduler: str | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 1
    ext: str = "png"

    def __post_init__(self):
        if self.scheduler is not None and self.scheduler not in samplers.SAMPLERS:
            raise ValueError(samplers.SAMPLERS.unknown(self.scheduler))
        if self.ext not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {self.ext!r}; choose one of {', '.join(IMAGE_FORMATS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps ({self.steps}) and batch size ({self.batch_size}) must be at least 1")
        check_resolution(self.resolution)


@dataclass
class GenerationResult:
    """What one process did: images written and already present in its shard, and the wall time."""

    out_dir: Path
    written: int
    skipped: int
    seconds: float


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`: numpy's ``SeedSequence((seed, index))``, so runs with different base seeds
    share no prompt seed."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint64)[0])


def _require_text_to_image(pipe: DiffusionPipeline, model) -> None:
    if "prompt" not in inspect.signature(type(pipe).__call__).parameters:
        raise ValueError(
            f"--model {model} is a {type(pipe).__name__}, which takes no prompt; prunelab generate needs a "
            "text-to-image pipeline (e.g. StableDiffusionPipeline, StableDiffusionXLPipeline, FluxPipeline)"
        )


def load_pipeline(
    model: str | os.PathLike,
    *,
    scheduler: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DiffusionPipeline:
    """Load a text-to-image pipeline folder, hub id or built-in name with the chosen sampler, for evaluation.

    :func:`prune_lab.pipelines.load_pipeline` with evaluation's settings: the sampler `scheduler` (None: the
    pipeline's default, :func:`~prune_lab.runtime.samplers.default_sampler`) with its registered overrides (PNDM
    skips its Runge-Kutta steps), fp32 on the CPU unless asked, and no safety checker (as in
    BK-SDM's benchmark runs, so that no image is replaced by a black one). A prune_lab export in the compact format
    is rebuilt by :func:`prune_lab.load_pruned`; the pipeline class comes from ``model_index.json``.

    Raises:
        FileNotFoundError: no pipeline there.
        ValueError: unknown sampler, or a pipeline that takes no prompt.
    """
    pipe = pipelines.load_pipeline(model, dtype=dtype, safety_checker=False)
    pipe.scheduler = samplers.build_sampler(scheduler, pipe.scheduler.config)
    pipe = pipe.to(device)
    _require_text_to_image(pipe, model)
    return pipe


def native_resolution(pipe: DiffusionPipeline) -> int:
    """The image side a pipeline generates by default (U-Net or transformer sample size times the VAE scale
    factor; :func:`prune_lab.runtime.generation.native_side`)."""
    return native_side(pipe)


def check_resume(out_dir: str | os.PathLike, settings: dict) -> None:
    """Check that `settings` agree with an existing ``generation.json`` on :data:`PIXEL_KEYS` (None: not known yet).

    Raises:
        ValueError: the folder was started with other settings.
    """
    path = Path(out_dir) / "generation.json"
    if not path.exists() and not path.is_symlink():
        return
    old = read_json(path, "generation.json")
    for key in PIXEL_KEYS:
        if key in old and not isinstance(old[key], (str, int, float, type(None))):
            raise ValueError(
                f"{path}: {key!r} is a {type(old[key]).__name__}, not a setting; this is not a generate folder "
                "(use another --out, or remove the file)"
            )
    known = [k for k in PIXEL_KEYS if settings.get(k) is not None]
    diff = {k: (old.get(k), settings[k]) for k in known if old.get(k) != settings[k]}
    if diff:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{out_dir} was generated with other settings ({what}); use another --out or the same settings to resume"
        )


def record_settings(out_dir: str | os.PathLike, settings: dict) -> Path:
    """Write ``generation.json`` unless it exists, after :func:`check_resume`."""
    check_resume(out_dir, settings)
    path = Path(out_dir) / "generation.json"
    if not path.exists():
        write_json(path, settings)
    return path


def pending(
    prompts: pd.DataFrame, out_dir: str | os.PathLike, ext: str = "png", shard: tuple[int, int] = (0, 1)
) -> list[int]:
    """Prompt indices of shard ``(k, n)`` (indices ``k, k+n, ...``) whose image is not in `out_dir` yet."""
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k} of {n} does not exist")
    out_dir = Path(out_dir)
    return [i for i in range(k, len(prompts), n) if not (out_dir / image_name(prompts["file_name"][i], ext)).exists()]


def _save(img, path: Path, ext: str) -> None:
    # a `.tmp` temporary, so an image left half-written by a killed process is never listed as an image
    with atomic_path(path, suffix=".tmp") as tmp:
        img.save(tmp, format=IMAGE_FORMATS[ext])


def generate_images(
    pipe: DiffusionPipeline,
    prompts: pd.DataFrame,
    out_dir: str | os.PathLike,
    config: GenerationConfig = GenerationConfig(),
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> GenerationResult:
    """Generate the missing images of one shard of `prompts` into `out_dir` (see the module docstring).

    Args:
        pipe: a loaded pipeline (:func:`load_pipeline`).
        prompts: prompt set from :func:`prune_lab.evaluation.prompts.read_prompts`.
        out_dir: image folder; images are named by :func:`prune_lab.evaluation.images.image_name`.
        config: sampling settings.
        shard: ``(process index, process count)``.
        progress: show a tqdm bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = pending(prompts, out_dir, config.ext, shard)
    total = len(range(shard[0], len(prompts), shard[1]))
    size = config.resolution or native_resolution(pipe)
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="generate", disable=not progress) as bar:
        for b in range(0, len(todo), config.batch_size):
            batch = todo[b : b + config.batch_size]
            generators = [torch.Generator("cpu").manual_seed(prompt_seed(config.seed, i)) for i in batch]
            texts = [prompts["text"][i] for i in batch]
            images = sample(
                pipe, texts, steps=config.steps, guidance=config.guidance, generators=generators, size=size
            )
            for i, img in zip(batch, images, strict=True):
                _save(img, out_dir / image_name(prompts["file_name"][i], config.ext), config.ext)
            bar.update(len(batch))
    return GenerationResult(out_dir, len(todo), total - len(todo), time.perf_counter() - start)


def generation_settings(
    model: str,
    prompts_path: str,
    prompts: pd.DataFrame,
    config: GenerationConfig,
    dtype: torch.dtype,
    pipe: DiffusionPipeline | None = None,
) -> dict:
    """The ``generation.json`` record of a run (the native resolution and pipeline class need `pipe`)."""
    local = Path(model).is_dir()
    record = {
        "model": str(Path(model).resolve()) if local else str(model),
        "prompts": str(prompts_path),
        "count": len(prompts),
        **asdict(config),
        "dtype": str(dtype).removeprefix("torch."),
        "pipeline": type(pipe).__name__ if pipe is not None else None,
        "seed_rule": "numpy SeedSequence((seed, prompt index))",
    }
    if pipe is not None and config.resolution is None:
        record["resolution"] = native_resolution(pipe)
    if pipe is not None:  # the sampler's name (the default resolved; the pipe's scheduler is the sampler's build)
        record["scheduler"] = samplers.resolve(config.scheduler, pipe.scheduler.config)
    record.pop("batch_size")
    return record
