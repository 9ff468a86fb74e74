"""Models in: built-in architectures, local folders, hub ids.

Every entry point that takes `--model` goes through :func:`load_unet`, so the rules live here:

* a built-in architecture name (:data:`ARCHITECTURES`): the public U-Net config, random or `meta` weights;
* a built-in trained pipeline (:data:`BUILTIN_PIPELINES`: `demo`, the miniature world of :mod:`prune_lab.demo`);
* a local diffusers pipeline folder (has `unet/`), a local U-Net folder (has `config.json`), or a folder
  written by `prunelab apply` in the `load_pruned` format;
* anything else that looks like a hub id (`org/name`) goes to plain `from_pretrained`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

UNetLike = UNet2DConditionModel | UNet2DModel

_SD_V1 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
_SD_V2_BASE = dict(_SD_V1, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)

#: Public U-Net configs of the built-in architectures (diffusers `UNet2DConditionModel` keyword arguments).
ARCHITECTURES: dict[str, dict] = {
    "sd-v1": _SD_V1,
    "sd-v2-base": _SD_V2_BASE,
    "sd-v2": dict(_SD_V2_BASE, sample_size=96, upcast_attention=True),
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    ),
}

#: Which preset family each built-in belongs to (presets check it).
FAMILIES = {"sd-v1": "sd", "sd-v2-base": "sd", "sd-v2": "sd", "sdxl": "sdxl", "demo": "sd"}

#: Trained pipelines shipped in the package, by built-in name (loaded as pipeline folders: `apply` writes a pipeline).
BUILTIN_PIPELINES: dict[str, Path] = {"demo": Path(__file__).resolve().parent / "demo" / "pipeline"}


def resolve_model(model: str | os.PathLike) -> str:
    """The folder of a :data:`BUILTIN_PIPELINES` name, else `model` unchanged (for loaders that take a path)."""
    return str(BUILTIN_PIPELINES.get(str(model), model))


@dataclass
class LoadedModel:
    """A U-Net plus where it came from.

    Attributes:
        unet: the model (eval mode).
        source: what was passed as `--model`.
        kind: `builtin`, `pipeline`, `unet`, `pruned` or `hub`.
        root: the folder of a local pipeline / U-Net, else None.
    """

    unet: UNetLike
    source: str
    kind: str
    root: Path | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.kind == "pipeline"


def build_architecture(name: str, *, meta: bool = False, seed: int = 0) -> UNet2DConditionModel:
    """Instantiate a built-in architecture with random (seeded) weights, or on the `meta` device."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; built-ins are: {', '.join(ARCHITECTURES)}")
    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel(**ARCHITECTURES[name]).eval()
    torch.manual_seed(seed)
    return UNet2DConditionModel(**ARCHITECTURES[name]).eval()


def _unet_class(config_path: Path) -> type[UNetLike]:
    name = json.loads(config_path.read_text()).get("_class_name", "UNet2DConditionModel")
    classes = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}
    if name not in classes:
        raise ValueError(f"{config_path} describes a {name}; prune_lab walks {', '.join(classes)}")
    return classes[name]


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def load_unet(model: str | os.PathLike, *, meta: bool = False, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the U-Net named by `model` (see the module docstring for what is accepted).

    Args:
        model: built-in name, local folder or hub id.
        meta: for built-ins, build on the `meta` device (structure only, no memory).
        dtype: weights dtype for loaded checkpoints (fp32 by default).

    Raises:
        FileNotFoundError: a local path that does not exist or holds no U-Net.
        ValueError: a folder with a model class prune_lab cannot walk.
    """
    model = str(model)
    if model in ARCHITECTURES:
        return LoadedModel(build_architecture(model, meta=meta), model, "builtin")
    if model in BUILTIN_PIPELINES:
        if not (BUILTIN_PIPELINES[model] / "unet").is_dir():
            raise FileNotFoundError(
                f"the {model!r} pipeline's trained weights are not in this installation; train them with "
                "`python -m prune_lab.demo.train` (issue 8) or pass a pipeline folder"
            )
        return _load_local(BUILTIN_PIPELINES[model], model, dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        return _load_local(path, model, dtype)
    if path.exists() or not _looks_like_hub_id(model):
        raise FileNotFoundError(
            f"model {model!r} is neither a built-in ({', '.join([*ARCHITECTURES, *BUILTIN_PIPELINES])}), an existing "
            "diffusers folder, nor a hub id of the form org/name"
        )
    try:  # a pipeline repository first, then a bare U-Net repository
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)
    except OSError:
        unet = UNet2DConditionModel.from_pretrained(model, torch_dtype=dtype)
    return LoadedModel(unet.eval(), model, "hub")


def _load_local(path: Path, source: str, dtype: torch.dtype) -> LoadedModel:
    from .export import PRUNED_MARKER, load_pruned

    if (path / "unet").is_dir():
        inner = path / "unet"
        unet = load_pruned(inner) if (inner / PRUNED_MARKER).exists() else _from_folder(inner, dtype)
        return LoadedModel(unet.eval(), source, "pipeline", path)
    if (path / PRUNED_MARKER).exists():
        return LoadedModel(load_pruned(path).eval(), source, "pruned", path)
    if (path / "config.json").exists():
        return LoadedModel(_from_folder(path, dtype).eval(), source, "unet", path)
    raise FileNotFoundError(
        f"{path} holds no U-Net: expected a pipeline folder with unet/ or a U-Net folder with config.json"
    )


def _from_folder(path: Path, dtype: torch.dtype) -> UNetLike:
    return _unet_class(path / "config.json").from_pretrained(path, torch_dtype=dtype)
