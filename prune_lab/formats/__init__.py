"""Export formats: writing a student folder and reading any of them back with :func:`load_pruned`.

An export folder is what `prunelab apply` (and `prunelab width`) write: `DIR/<subfolder>/` holds the model (`unet/`
for U-Nets; plain diffusers, or weights + the marker file :data:`PRUNED_MARKER`), `DIR/plan.json`, `DIR/unit_map.json`
(student module -> teacher module) and, when the teacher was a pipeline, its other parts. :func:`write_export` writes
one atomically. The marker names a `format` and `version`; :func:`load_pruned` dispatches on them to the reader
registered in :data:`READERS` (block-pruned: :mod:`.block`; width-pruned: :mod:`prune_lab.width.persist`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..runtime.atomic import atomic_folder, write_json
from ..runtime.registry import Registry
from ..runtime.validate import as_path, json_type, need, read_json

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
    """The parsed export marker in `folder` (`format` a string, `version` an integer), or None if there is none."""
    marker = folder / PRUNED_MARKER
    if not marker.exists():
        return None
    fix = "re-export with `prunelab apply`"
    info = read_json(marker, "export marker", fix=fix)
    need(info, "format", str, str(marker))
    need(info, "version", int, str(marker))
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
        TypeError: `path` is not a str or os.PathLike.
        FileNotFoundError: neither an export marker nor a diffusers config.
        ValueError: an unknown format, a version newer than this prune_lab reads, a marker, config or weights file
            of the wrong shape.
    """
    folder = model_dir(as_path(path, "path"))
    info = read_marker(folder)
    if info is None:
        if (folder / "config.json").exists():
            return load_model_folder(folder).eval()
        raise FileNotFoundError(f"{folder} holds neither a prune_lab export ({PRUNED_MARKER}) nor a diffusers config")
    marker = folder / PRUNED_MARKER
    reader = READERS.get(info["format"]) if info["format"] in READERS else None
    if reader is None:
        raise ValueError(f"{marker} has format {info['format']!r}; this prune_lab reads: {', '.join(READERS.names())}")
    if info["version"] > reader.version:
        raise ValueError(
            f"{marker} has {reader.format} version {info['version']!r}; this prune_lab reads up to "
            f"{reader.version}: upgrade prune_lab"
        )
    return reader.load(folder, info).eval()


def read_config(folder: Path) -> tuple[type, dict]:
    """The model class and config of a diffusers model folder, the config's keys checked against the class.

    A key the class's constructor takes must have the type of its default (a list where the default is a tuple, a
    number or a list of numbers where it is a number, ...): the check every backbone gets from its classes.

    Raises:
        ValueError: `config.json` is not a JSON object, names no class prune_lab handles, or a key of a wrong type.
    """
    from ..backbones import model_class

    path = folder / "config.json"
    config = read_json(path, "model config", fix="is this a diffusers model folder?")
    name = need(config, "_class_name", str, str(path), default="UNet2DConditionModel")
    try:
        cls = model_class(name)
    except ValueError as e:
        raise ValueError(f"{path} describes a {name}; {str(e).split('; ', 1)[-1]}") from None
    for key, default in inspect.signature(cls.__init__).parameters.items():
        if key in config and config[key] is not None and not _fits(config[key], default.default):
            raise ValueError(
                f'{path}: "{key}" is {json_type(config[key])} ({config[key]!r:.60}), which a {name} cannot take'
            )
    return cls, config


def _fits(value, default) -> bool:
    """`value` (from JSON) has the kind of the constructor default `default` (None / no default: anything); a
    scalar default also takes a list of such scalars (per-block values)."""
    if default is None or default is inspect.Parameter.empty:
        return True
    if isinstance(default, (tuple, list)):
        return isinstance(value, list)
    kinds = (bool,) if isinstance(default, bool) else (int, float) if isinstance(default, (int, float)) else (str,)
    if not isinstance(default, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_fits(v, default) for v in value)
    return isinstance(value, kinds) and (kinds == (bool,) or not isinstance(value, bool))


def check_weights(folder: Path, model, *, strict: bool) -> None:
    """Refuse a weights file in `folder` that is missing, not safetensors, or does not fit `model` (a `meta` one).

    Args:
        strict: also refuse tensors `model` has no place for (compact exports); plain diffusers folders may hold
            some (diffusers skips them).

    Raises:
        FileNotFoundError / ValueError: naming the file and the first tensor that does not fit.
    """
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        others = [f.name for f in folder.glob("diffusion_pytorch_model*") if f.is_file()]
        if others and not strict:  # sharded, .bin or variant weights: diffusers reads them
            return
        raise FileNotFoundError(f"{folder} has no weights ({WEIGHTS_NAME}); copy them there, or re-export the model")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); copy the weights again") from None
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(wanted) - set(shapes))
    extra = sorted(set(shapes) - set(wanted)) if strict else []
    wrong = sorted(k for k in set(wanted) & set(shapes) if wanted[k] != shapes[k])
    if missing or extra or wrong:
        what = (
            f"lacks the tensor {missing[0]}"
            if missing
            else f"holds {wrong[0]} of shape {shapes[wrong[0]]}, the model needs {wanted[wrong[0]]}"
            if wrong
            else f"holds {extra[0]}, which the model does not have"
        )
        count = len(missing) + len(extra) + len(wrong)
        raise ValueError(f"{path} does not fit its config: it {what} ({count} tensor(s) differ)")


def load_model_folder(folder: Path, dtype=None):
    """A plain diffusers model folder, its config and weights checked first (:func:`read_config`,
    :func:`check_weights`)."""
    from ..backbones import instantiate

    cls, config = read_config(folder)
    check_weights(folder, instantiate(cls, config), strict=False)
    return cls.from_pretrained(folder, torch_dtype=dtype)


def write_export(
    out_dir: str | os.PathLike,
    write_model: Callable[[Path], None],
    *,
    plan,
    unit_map: dict[str, str],
    pipeline_root: Path | None = None,
    subfolder: str = "unet",
    overwrite: bool = False,
    teacher=None,
    student=None,
    source: str | None = None,
) -> Path:
    """Write an export folder atomically: pipeline parts, `write_model(DIR/subfolder)`, plan.json, unit_map.json,
    and, given the `teacher` and `student` models (real or `meta`) and the teacher's `source`, the model card
    `README.md` (:mod:`.card`).

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
        if teacher is not None and student is not None:
            from .card import card_facts, write_card

            marker = read_marker(tmp / subfolder)
            fmt = None if marker is None else marker["format"]
            write_card(tmp, card_facts(tmp, plan, teacher, student, source or plan.base.get("source", "?"), fmt))
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

    check_weights(folder, skeleton, strict=True)
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
