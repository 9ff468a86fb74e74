"""The one pipeline loader: a loaded model, a pipeline folder (or hub id), or a built-in pipeline, on a device.

The pipeline class comes from the folder's `model_index.json` (`_class_name`) through diffusers'
`DiffusionPipeline.from_pretrained`, so every family diffusers knows (SD, SDXL, unconditional, transformer
pipelines) loads the same way; nothing here names a family. Loading options that depend on the folder are read from
the same `model_index.json` (a `safety_checker` component can be left out, whatever the class).

A prune_lab export whose denoiser (`unet/` or `transformer/`, :data:`DENOISERS`) is in the compact format is rebuilt
by :func:`prune_lab.formats.load_pruned` and handed to the pipeline as that component; a stock-config one loads as
it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from .runtime.loading import DENOISERS, absent_components, denoiser_name


def _is_loaded_model(model) -> bool:
    """A :class:`prune_lab.models.LoadedModel` (duck-typed: the runtime imports no model family)."""
    return hasattr(model, "unet") and hasattr(model, "root") and hasattr(model, "is_pipeline")


def pipeline_config(folder: str | os.PathLike) -> dict:
    """The `model_index.json` of a pipeline folder (or hub id), as a dict with `_class_name`.

    Raises:
        FileNotFoundError: no diffusers pipeline there.
    """
    from diffusers import DiffusionPipeline

    if not Path(folder).exists() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise FileNotFoundError(offline_message(folder))
    try:
        return dict(DiffusionPipeline.load_config(folder))
    except OSError as e:
        raise FileNotFoundError(
            f"{folder}: no diffusers pipeline there (model_index.json); pass a pipeline folder (with unet/, vae/, "
            f"text_encoder/ ...), e.g. one written by prunelab apply from a pipeline ({_first_line(e)})"
        ) from None
    except ValueError as e:  # diffusers' own message for a model_index.json that is not JSON
        raise ValueError(f"{folder}/model_index.json is not a valid pipeline index ({_first_line(e)})") from None


def offline_message(model) -> str:
    """The error for a hub id while `HF_HUB_OFFLINE` is set: name the switch and the local-folder alternative."""
    return (
        f"{model} is neither a local folder nor a built-in name, and HF_HUB_OFFLINE is set, so it cannot be "
        "fetched from the Hugging Face hub; pass a local pipeline folder (or `demo`), or unset HF_HUB_OFFLINE"
    )


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


def check_weights(folder) -> None:
    """Refuse a local model folder (or a pipeline's model component) that has a `config.json` but no weights file,
    before diffusers logs its own errors.

    Raises:
        FileNotFoundError: naming the folder without weights.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for config in [folder / "config.json", *folder.glob("*/config.json")]:
        if config.is_file() and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in config.parent.iterdir()):
            raise FileNotFoundError(
                f"{config.parent} has a config.json but no weights file (*.safetensors); copy or re-export the "
                "complete model folder"
            )


def from_pretrained(cls, folder, **kwargs):
    """`cls.from_pretrained(folder, ...)`, with missing, empty or corrupt weights reported as one error naming the
    folder (a component's folder in a pipeline) instead of diffusers' multi-line `OSError`.

    Raises:
        FileNotFoundError: no weights (or no config) there.
        ValueError: weights that cannot be read (not safetensors, truncated) or do not fit the config.
    """
    from safetensors import SafetensorError

    check_weights(folder)
    try:
        return cls.from_pretrained(folder, **kwargs)
    except OSError as e:
        raise FileNotFoundError(
            f"{folder}: cannot load the weights ({_first_line(e)}); pass a complete model folder"
        ) from None
    except SafetensorError as e:
        raise ValueError(
            f"{folder}: a weights file is not readable safetensors ({_first_line(e)}); re-export or re-download it"
        ) from None


def _without_safety_checker(config: dict) -> dict:
    """Loading arguments that leave a pipeline's safety checker out (none if it has no such component)."""
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in config else {}


def _pruned_unet(folder: Path):
    """The rebuilt denoiser of a prune_lab export whose `unet/` (or `transformer/`) is in the compact format, else
    None."""
    from .formats import PRUNED_MARKER, load_pruned

    for name in DENOISERS:
        if (folder / name / PRUNED_MARKER).exists():
            return load_pruned(folder / name)
    return None


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

    from .runtime.dtypes import cast_model
    from .runtime.samplers import build_sampler

    folder, unet, dtype = _source(model, dtype)
    config = pipeline_config(folder)
    kwargs = {"torch_dtype": dtype, **absent_components(config)}
    kwargs.update({} if safety_checker else _without_safety_checker(config))
    if unet is not None:
        kwargs[denoiser_name(config)] = cast_model(unet, dtype)
    pipe = from_pretrained(DiffusionPipeline, folder, **kwargs)
    if sampler is not None:
        pipe.scheduler = build_sampler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe
