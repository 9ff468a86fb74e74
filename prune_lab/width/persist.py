"""Writing and rebuilding width-pruned U-Nets: base config + per-module widths + safetensors weights.

`prunelab width --out DIR` writes what `prunelab apply` writes, so every consumer of an `apply` folder (`report`,
`distill`, `eval`, `load_unet`) takes it:

* `DIR/unet/diffusion_pytorch_model.safetensors`: the pruned weights;
* `DIR/unet/prune_lab_pruned.json` (the export marker) with `"format": "prune_lab.width_pruned_unet"`, the base
  model's config, the widths of every layer that changed (:mod:`prune_lab.width.widths`) and how they were chosen;
  :func:`prune_lab.load_pruned` dispatches on the format to :func:`load_width` (registered in
  :data:`prune_lab.formats.READERS`);
* `DIR/plan.json`: the plan that keeps every block (width pruning removes none), so distillation pairs every stage
  with its teacher stage; `DIR/unit_map.json`: the identity map;
* the other pipeline parts, when the pruned model came from a pipeline folder.

Never a pickled module: a rebuilt model is a fresh diffusers U-Net whose layers are resized, then loaded strictly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from ..backbones import backbone_for, instantiate, make_plan, model_class, walk
from ..formats import (
    PRUNED_MARKER,
    READERS,
    WIDTH_FORMAT,
    Reader,
    base_config,
    export_format,
    load_weights,
    model_dir,
    read_marker,
    save_weights,
    write_export,
)
from ..runtime.loading import LoadedModel
from ..runtime.validate import need
from .widths import changed_widths, resize

WIDTH_VERSION = 1


def is_width_pruned(path: str | os.PathLike) -> bool:
    """Whether `path` (an output folder or its `unet/`) holds a `prunelab width` model."""
    return export_format(path) == WIDTH_FORMAT


def _identity_plan(unet: nn.Module, info: dict, source: str):
    """The plan keeping every unit (width pruning removes none), recorded with how the widths were chosen."""
    skeleton = instantiate(type(unet), {k: v for k, v in info["base_config"].items() if k != "_class_name"})
    names = [u.name for u in walk(skeleton).units]
    return make_plan(skeleton, names, source=source, meta={"width_pruned": True, **info["width_pruning"]})


def save_width(
    unet: nn.Module,
    loaded: LoadedModel,
    out_dir: str | os.PathLike,
    *,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a width-pruned `unet` (pruned from `loaded`) to `out_dir`, atomically (see the module docstring).

    Raises:
        FileExistsError: `out_dir` exists and is not empty (and not `overwrite`).
    """
    base = base_config(unet)
    reference = instantiate(type(unet), {k: v for k, v in base.items() if k != "_class_name"})
    info = {
        "format": WIDTH_FORMAT,
        "version": WIDTH_VERSION,
        "base_config": base,
        "widths": changed_widths(unet, reference),
        "width_pruning": dict(provenance or {}),
    }
    backbone = backbone_for(unet)
    return write_export(
        out_dir,
        lambda folder: save_weights(unet, folder, info),
        plan=_identity_plan(unet, info, loaded.source),
        unit_map=backbone.unit_map(unet, identity=True),
        pipeline_root=loaded.root if loaded.is_pipeline else None,
        subfolder=backbone.subfolder,
        overwrite=overwrite,
        teacher=reference,
        student=unet,
        source=loaded.source,
    )


def load_width(path: str | os.PathLike, info: dict | None = None) -> nn.Module:
    """Rebuild a width-pruned U-Net: the base config on `meta`, layers resized to the recorded widths, weights
    loaded strictly.

    Args:
        path: the output folder or its `unet/` subfolder.
        info: the parsed marker, if the caller already read it.

    Raises:
        FileNotFoundError / ValueError: not a `prunelab width` folder, or widths and weights that disagree.
    """
    folder = model_dir(path)
    marker = folder / PRUNED_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{path} holds no {PRUNED_MARKER}; write one with `prunelab width --out DIR`")
    info = info or read_marker(folder)
    if info["format"] != WIDTH_FORMAT:
        raise ValueError(f"{marker} is a {info['format']!r} export, not a width-pruned U-Net")
    if info["version"] > WIDTH_VERSION:
        raise ValueError(
            f"{marker} has width-format version {info['version']}; this prune_lab reads up to "
            f"{WIDTH_VERSION}: upgrade prune_lab"
        )
    base = dict(need(info, "base_config", dict, str(marker)))
    name = need(base, "_class_name", str, f"{marker} base_config")
    widths = need(info, "widths", dict, str(marker))
    skeleton = resize(instantiate(model_class(name), {k: v for k, v in base.items() if k != "_class_name"}), widths)
    return load_weights(skeleton, folder).eval()


READERS.register(WIDTH_FORMAT, Reader(WIDTH_FORMAT, WIDTH_VERSION, load_width))
