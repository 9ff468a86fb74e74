"""Writing and rebuilding width-pruned U-Nets: base config + per-module widths + safetensors weights.

`prunelab width --out DIR` writes what `prunelab apply` writes, so every consumer of an `apply` folder (`report`,
`distill`, `eval`, `load_unet`) takes it:

* `DIR/unet/diffusion_pytorch_model.safetensors`: the pruned weights;
* `DIR/unet/prune_lab_pruned.json` (the export marker) with `"format": "prune_lab.width_pruned_unet"`, the base
  model's config, the widths of every layer that changed (:mod:`prune_lab.width.widths`) and how they were chosen;
  :func:`prune_lab.load_pruned` dispatches on the format to :func:`load_width`;
* `DIR/plan.json`: the plan that keeps every block (width pruning removes none), so distillation pairs every stage
  with its teacher stage; `DIR/unit_map.json`: the identity map;
* the other pipeline parts, when the pruned model came from a pipeline folder.

Never a pickled module: a rebuilt model is a fresh diffusers U-Net whose layers are resized, then loaded strictly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch.nn as nn
from diffusers import UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file, save_file

from ..export import PRUNED_MARKER, WEIGHTS_NAME, instantiate
from ..graph import walk
from ..models import LoadedModel
from ..presets import make_plan
from .widths import changed_widths, resize

WIDTH_FORMAT = "prune_lab.width_pruned_unet"
WIDTH_VERSION = 1
_CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}
_MAPPED_LISTS = ("resnets", "attentions", "transformer_blocks", "upsamplers", "downsamplers")


def _marker(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "unet" / PRUNED_MARKER if (path / "unet").is_dir() else path / PRUNED_MARKER


def is_width_pruned(path: str | os.PathLike) -> bool:
    """Whether `path` (an output folder or its `unet/`) holds a `prunelab width` model."""
    marker = _marker(path)
    return marker.is_file() and json.loads(marker.read_text()).get("format") == WIDTH_FORMAT


def _base_config(unet: nn.Module) -> dict:
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return {"_class_name": type(unet).__name__, **config}


def _identity_map(unet: nn.Module) -> dict[str, str]:
    """Every resnet, attention block, transformer layer and sampler maps to itself (no block was moved)."""
    return {
        name: name
        for name, _ in unet.named_modules()
        if len(name.split(".")) >= 2 and name.split(".")[-2] in _MAPPED_LISTS
    }


def _write(unet: nn.Module, info: dict, loaded: LoadedModel, tmp: Path) -> None:
    if loaded.is_pipeline:
        shutil.copytree(loaded.root, tmp, ignore=shutil.ignore_patterns("unet"), dirs_exist_ok=True)
    (tmp / "unet").mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(tmp / "unet" / WEIGHTS_NAME))
    (tmp / "unet" / PRUNED_MARKER).write_text(json.dumps(info, indent=2, default=list) + "\n")
    skeleton = instantiate(type(unet), {k: v for k, v in info["base_config"].items() if k != "_class_name"})
    plan = make_plan(
        skeleton,
        [u.name for u in walk(skeleton).units],
        source=loaded.source,
        meta={"width_pruned": True, **info["width_pruning"]},
    )
    plan.save(tmp / "plan.json")
    (tmp / "unit_map.json").write_text(json.dumps(_identity_map(unet), indent=2) + "\n")


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
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out_dir} exists and is not empty; pass --overwrite or another --out")
    base = _base_config(unet)
    reference = instantiate(type(unet), {k: v for k, v in base.items() if k != "_class_name"})
    info = {
        "format": WIDTH_FORMAT,
        "version": WIDTH_VERSION,
        "base_config": base,
        "widths": changed_widths(unet, reference),
        "width_pruning": dict(provenance or {}),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        _write(unet, info, loaded, tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_width(path: str | os.PathLike, info: dict | None = None) -> nn.Module:
    """Rebuild a width-pruned U-Net: the base config on `meta`, layers resized to the recorded widths, weights
    loaded strictly.

    Args:
        path: the output folder or its `unet/` subfolder.
        info: the parsed marker, if the caller already read it.

    Raises:
        FileNotFoundError / ValueError: not a `prunelab width` folder, or widths and weights that disagree.
    """
    marker = _marker(path)
    if not marker.is_file():
        raise FileNotFoundError(f"{path} holds no {PRUNED_MARKER}; write one with `prunelab width --out DIR`")
    info = info or json.loads(marker.read_text())
    if info.get("format") != WIDTH_FORMAT:
        raise ValueError(f"{marker} is a {info.get('format')!r} export, not a width-pruned U-Net")
    if info.get("version", 0) > WIDTH_VERSION:
        raise ValueError(
            f"{marker} has width-format version {info['version']}; this prune_lab reads up to "
            f"{WIDTH_VERSION}: upgrade prune_lab"
        )
    base = dict(info["base_config"])
    cls = _CLASSES.get(base.pop("_class_name"), UNet2DConditionModel)
    skeleton = resize(instantiate(cls, base, meta=True), info["widths"])
    state = load_file(str(marker.parent / WEIGHTS_NAME))
    try:
        skeleton.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"the weights in {marker.parent} do not match its recorded widths ({str(e)[:200]})") from None
    return skeleton.eval()
