"""Models in: built-in architectures, local folders, hub ids.

Every entry point that takes `--model` goes through :func:`load_unet`, so the rules live here:

* a built-in architecture name (any backbone's, :func:`prune_lab.backbones.architectures`): the public config,
  random or `meta` weights;
* a built-in trained pipeline (:data:`BUILTIN_PIPELINES`: `demo` and `demo-dit`, the miniature world of
  :mod:`prune_lab.demo`);
* a local diffusers pipeline folder (has `unet/` or `transformer/`: any backbone's subfolder), a local model
  folder (has `config.json`), or a folder
  written by `prunelab apply` (:func:`prune_lab.formats.load_pruned`);
* anything else that looks like a hub id (`org/name`) goes to plain `from_pretrained`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .backbones import BACKBONES, architectures, build_architecture
from .formats import PRUNED_MARKER, load_model_folder, load_pruned
from .runtime.loading import LoadedModel, looks_like_hub_id

#: Trained pipelines shipped in the package, by built-in name (loaded as pipeline folders: `apply` writes a pipeline).
BUILTIN_PIPELINES: dict[str, Path] = {
    "demo": Path(__file__).resolve().parent / "demo" / "pipeline",
    "demo-dit": Path(__file__).resolve().parent / "demo" / "pipeline-dit",
}


def resolve_model(model: str | os.PathLike) -> str:
    """The folder of a :data:`BUILTIN_PIPELINES` name, else `model` unchanged (for loaders that take a path)."""
    return str(BUILTIN_PIPELINES.get(str(model), model))


def load_unet(model: str | os.PathLike, *, meta: bool = False, dtype=None) -> LoadedModel:
    """Load the backbone model named by `model` (see the module docstring for what is accepted).

    Args:
        model: built-in name, local folder or hub id.
        meta: for built-ins, build on the `meta` device (structure only, no memory).
        dtype: weights dtype for loaded checkpoints (fp32 by default).

    Raises:
        FileNotFoundError: a local path that does not exist or holds no model.
        ValueError: a folder with a model class prune_lab has no backbone for.
    """
    import torch

    if not isinstance(model, (str, os.PathLike)) or isinstance(model, bytes):
        raise TypeError(f"load_unet: model must be a name, folder or hub id (str or os.PathLike), got {model!r:.80}")
    model, dtype = str(model), dtype or torch.float32
    if model in architectures():
        return LoadedModel(build_architecture(model, meta=meta), model, "builtin")
    if model in BUILTIN_PIPELINES:
        if not any((BUILTIN_PIPELINES[model] / sub).is_dir() for sub in _subfolders()):
            backbone = " --backbone sd3" if model == "demo-dit" else ""
            raise FileNotFoundError(
                f"the {model!r} pipeline's trained weights are not in this installation; train them with "
                f"`prunelab demo-train{backbone}` or pass a pipeline folder"
            )
        return _load_local(BUILTIN_PIPELINES[model], model, dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        return _load_local(path, model, dtype)
    if path.exists() or not looks_like_hub_id(model):
        raise FileNotFoundError(
            f"model {model!r} is neither a built-in ({', '.join([*architectures(), *BUILTIN_PIPELINES])}), an "
            "existing diffusers folder, nor a hub id of the form org/name"
        )
    return LoadedModel(_from_hub(model, dtype), model, "hub")


def _from_hub(model: str, dtype):
    from diffusers import UNet2DConditionModel

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else "it is not in the hub cache and could not be downloaded"
    try:  # a pipeline repository first, then a bare U-Net repository
        try:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)
        except OSError:
            unet = UNet2DConditionModel.from_pretrained(model, torch_dtype=dtype)
    except OSError as e:  # diffusers' "not found / cannot connect"; a real network or disk error keeps its cause
        raise FileNotFoundError(
            f"model {model!r} is not a local folder, and the hub id could not be loaded ({why}; HF_HUB_OFFLINE=1 "
            "means cached models only): download it once with network access (`huggingface-cli download "
            f"{model} --local-dir DIR`) and pass the local folder, --model DIR"
        ) from e
    return unet.eval()


def _subfolders() -> list[str]:
    """The model folders a pipeline may hold (`unet`, `transformer`): every backbone's."""
    return list(dict.fromkeys(b.subfolder for _, b in BACKBONES.items()))


def _load_local(path: Path, source: str, dtype) -> LoadedModel:
    for sub in _subfolders():
        inner = path / sub
        if inner.is_dir():
            unet = load_pruned(inner) if (inner / PRUNED_MARKER).exists() else _from_folder(inner, dtype)
            return LoadedModel(unet.eval(), source, "pipeline", path)
    if (path / PRUNED_MARKER).exists():
        return LoadedModel(load_pruned(path).eval(), source, "pruned", path)
    if (path / "config.json").exists():
        return LoadedModel(_from_folder(path, dtype).eval(), source, "unet", path)
    subfolders = " or ".join(f"{s}/" for s in _subfolders())
    raise FileNotFoundError(
        f"{path} holds no U-Net or transformer: expected a pipeline folder with {subfolders}, or a model folder "
        "with config.json"
    )


def _from_folder(path: Path, dtype):
    """A diffusers model folder, by the class its config names, config and weights checked first."""
    return load_model_folder(path, dtype)
