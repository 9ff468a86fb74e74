"""The one pipeline loader: a loaded model, a pipeline folder (or hub id), or a built-in pipeline, on a device.

The pipeline class comes from the folder's `model_index.json` (`_class_name`) through diffusers'
`DiffusionPipeline.from_pretrained`, so every family diffusers knows (SD, SDXL, unconditional, transformer
pipelines) loads the same way; nothing here names a family. Loading options that depend on the folder are read from
the same `model_index.json` (a `safety_checker` component can be left out, whatever the class).

A prune_lab export whose `unet/` is in the compact format is rebuilt by :func:`prune_lab.formats.load_pruned` and
handed to the pipeline as its U-Net.
"""

from __future__ import annotations

import os
from pathlib import Path


def _is_loaded_model(model) -> bool:
    """A :class:`prune_lab.models.LoadedModel` (duck-typed: the runtime imports no model family)."""
    return hasattr(model, "unet") and hasattr(model, "root") and hasattr(model, "is_pipeline")


def pipeline_config(folder: str | os.PathLike) -> dict:
    """The `model_index.json` of a pipeline folder (or hub id), as a dict with `_class_name`.

    Raises:
        FileNotFoundError: no diffusers pipeline there.
    """
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(folder))
    except OSError as e:
        raise FileNotFoundError(
            f"{folder}: no diffusers pipeline there (model_index.json); pass a pipeline folder (with unet/, vae/, "
            f"text_encoder/ ...), e.g. one written by prunelab apply from a pipeline ({e})"
        ) from None


def _without_safety_checker(config: dict) -> dict:
    """Loading arguments that leave a pipeline's safety checker out (none if it has no such component)."""
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in config else {}


def _pruned_unet(folder: Path):
    """The rebuilt U-Net of a prune_lab export's `unet/` in the compact format, else None."""
    from .formats import PRUNED_MARKER, load_pruned

    return load_pruned(folder) if (folder / "unet" / PRUNED_MARKER).exists() else None


def _source(model, dtype) -> tuple:
    """(folder or hub id, U-Net to pass in or None, dtype) for a loaded model or a folder / hub id / built-in name."""
    import torch

    if _is_loaded_model(model):
        if not model.is_pipeline:
            raise ValueError(
                f"{model.source} is not a pipeline folder (a {model.kind} U-Net): this needs the whole pipeline "
                "(model_index.json with unet/, vae/, text_encoder/ ...); pass a pipeline folder"
            )
        return Path(model.root), model.unet, dtype or model.unet.dtype
    from .models import resolve_model

    folder = resolve_model(model)  # a built-in pipeline name (`demo`) -> its folder; a hub id stays a string
    return folder, _pruned_unet(Path(folder)), dtype or torch.float32


def load_pipeline(
    model,
    device=None,
    *,
    dtype=None,
    sampler: str | None = None,
    safety_checker: bool = True,
):
    """Load a diffusers pipeline, its class dispatched on `model_index.json`.

    Args:
        model: a :class:`~prune_lab.models.LoadedModel` of a pipeline folder (the pipeline is built around its
            `unet`, so surgery on one is surgery on both), a pipeline folder or hub id, or a built-in pipeline
            name (`demo`).
        device: where to move the pipeline; None leaves it on the CPU.
        dtype: weights dtype (a `torch.dtype`); None is the loaded model's U-Net dtype, or fp32 for a folder.
        sampler: a :mod:`~prune_lab.runtime.samplers` name replacing the pipeline's scheduler; None keeps it.
        safety_checker: False leaves out a safety checker component, so no image is replaced by a black one
            (BK-SDM's benchmark runs).

    Raises:
        FileNotFoundError: no `model_index.json` there.
        ValueError: a loaded model that is a bare U-Net, or an unknown sampler.
    """
    from diffusers import DiffusionPipeline

    from .runtime.samplers import build_sampler

    folder, unet, dtype = _source(model, dtype)
    config = pipeline_config(folder)
    kwargs = {"torch_dtype": dtype, **({} if safety_checker else _without_safety_checker(config))}
    if unet is not None:
        kwargs["unet"] = unet.to(dtype)
    pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
    if sampler is not None:
        pipe.scheduler = build_sampler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe
