"""Export formats: writing a student folder and reading any of them back with :func:`load_pruned`.

An export folder is what `prunelab apply` (and `prunelab width`) write: `DIR/<subfolder>/` holds the model (`unet/`
for U-Nets; plain diffusers, or weights + the marker file :data:`PRUNED_MARKER`), `DIR/plan.json`, `DIR/unit_map.json`
(student module -> teacher module) and, when the teacher was a pipeline, its other parts. :func:`write_export` writes
one atomically. The marker names a `format` and `version`; :func:`load_pruned` dispatches on them to the reader
registered in :data:`READERS` (block-pruned: :mod:`.block`; width-pruned: :mod:`prune_lab.width.persist`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..runtime.atomic import atomic_folder, write_json
from ..runtime.registry import Registry

PRUNED_MARKER = "prune_lab_pruned.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: Marker formats: a plan's compact student (:mod:`.block`), a width-pruned model (:mod:`prune_lab.width.persist`).
BLOCK_FORMAT = "prune_lab.pruned_unet"
WIDTH_FORMAT = "prune_lab.width_pruned_unet"
#: Modules whose import registers the built-in readers (a string list, so this layer imports none of them).
BUILTIN_READERS = ("prune_lab.formats.block", "prune_lab.width.persist")


@dataclass(frozen=True)
class Reader:
    """How to rebuild one export format: `load(model_dir, marker) -> model`, for versions up to `version`."""

    format: str
    version: int
    load: Callable[[Path, dict], object]


def _load_builtin() -> None:
    for module in BUILTIN_READERS:
        importlib.import_module(module)


#: Registered export readers, by marker `format`.
READERS: Registry[Reader] = Registry("export format", loader=_load_builtin)


def model_dir(path: str | os.PathLike) -> Path:
    """The folder holding the model: `path` itself, or its `unet/` / `transformer/` subfolder."""
    path = Path(path)
    for sub in ("unet", "transformer"):
        if (path / sub).is_dir():
            return path / sub
    return path


def read_marker(folder: Path) -> dict | None:
    """The parsed export marker in `folder`, or None if there is none."""
    marker = folder / PRUNED_MARKER
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    if not isinstance(info, dict):
        raise ValueError(f"{marker} is not a JSON object; re-export with `prunelab apply`")
    return info


def export_format(path: str | os.PathLike) -> str | None:
    """The marker `format` of the export at `path` (folder or model subfolder), None for a plain diffusers model."""
    info = read_marker(model_dir(path))
    return None if info is None else info.get("format")


def load_pruned(path: str | os.PathLike):
    """Rebuild any model prune_lab exported (or a plain diffusers model folder).

    Args:
        path: the export folder, or its model subfolder.

    Raises:
        FileNotFoundError: neither an export marker nor a diffusers config.
        ValueError: an unknown format, or a version newer than this prune_lab reads.
    """
    folder = model_dir(path)
    info = read_marker(folder)
    if info is None:
        if (folder / "config.json").exists():
            from ..backbones import model_class

            name = json.loads((folder / "config.json").read_text()).get("_class_name", "UNet2DConditionModel")
            return model_class(name).from_pretrained(folder).eval()
        raise FileNotFoundError(f"{folder} holds neither a prune_lab export ({PRUNED_MARKER}) nor a diffusers config")
    marker = folder / PRUNED_MARKER
    reader = READERS.get(info.get("format")) if info.get("format") in READERS else None
    if reader is None:
        raise ValueError(
            f"{marker} has format {info.get('format')!r}; this prune_lab reads: {', '.join(READERS.names())}"
        )
    if not isinstance(info.get("version"), int) or info["version"] > reader.version:
        raise ValueError(
            f"{marker} has {reader.format} version {info.get('version')!r}; this prune_lab reads up to "
            f"{reader.version}: upgrade prune_lab"
        )
    return reader.load(folder, info).eval()


def write_export(
    out_dir: str | os.PathLike,
    write_model: Callable[[Path], None],
    *,
    plan,
    unit_map: dict[str, str],
    pipeline_root: Path | None = None,
    subfolder: str = "unet",
    overwrite: bool = False,
) -> Path:
    """Write an export folder atomically: pipeline parts, `write_model(DIR/subfolder)`, plan.json, unit_map.json.

    Raises:
        FileExistsError: `out_dir` exists and is not empty (and not `overwrite`).
    """
    out_dir = Path(out_dir)
    inputs = [pipeline_root] if pipeline_root is not None else []  # never replace the teacher
    with atomic_folder(out_dir, overwrite=overwrite, inputs=inputs) as tmp:
        if pipeline_root is not None:
            shutil.copytree(pipeline_root, tmp, ignore=shutil.ignore_patterns(subfolder), dirs_exist_ok=True)
        write_model(tmp / subfolder)
        plan.save(tmp / "plan.json")
        write_json(tmp / "unit_map.json", unit_map)
    return out_dir


def save_weights(model, folder: Path, marker: dict) -> None:
    """Write `model`'s weights (safetensors) and the export `marker` into `folder` (created)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    write_json(folder / PRUNED_MARKER, marker, default=list)


def load_weights(skeleton, folder: Path):
    """Load the weights in `folder` strictly into a `meta` `skeleton`; ValueError when they do not fit."""
    from safetensors.torch import load_file

    state = load_file(str(folder / WEIGHTS_NAME))
    try:
        skeleton.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"the weights in {folder} do not match its recorded structure ({str(e)[:200]})") from None
    return skeleton


def base_config(model) -> dict:
    """`model`'s config with its class name, as export markers record it."""
    return {
        "_class_name": type(model).__name__,
        **{k: v for k, v in dict(model.config).items() if not k.startswith("_")},
    }
