"""What a check is run on: an export folder opened once (its student, whether `unet/` is plain diffusers, its
pipeline class), and the tiny seeded inputs every check feeds it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

#: Latent height = width of every check's U-Net call and pipeline run (divisible by any U-Net's downsampling).
LATENT = 16
#: Denoising steps of a check's pipeline run.
STEPS = 2
PROMPT = "a red square"


@dataclass(eq=False)
class Export:
    """An export folder, opened.

    Attributes:
        folder: the export folder (or a plain U-Net / pipeline folder).
        unet: the student, rebuilt by :func:`prune_lab.load_pruned` (eval mode, fp32, CPU).
        plain: `unet/` loads with diffusers' `from_pretrained` alone (no prune_lab marker).
        pipeline_class: `model_index.json`'s `_class_name`, None for a bare U-Net export.
    """

    folder: Path
    unet: object
    plain: bool
    pipeline_class: str | None
    _loaded: object = field(default=None, repr=False)

    def pipeline(self):
        """A fresh pipeline of the export, on the CPU in fp32, progress bar off: loaded from disk once, then each
        call returns an independent copy (a check may add adapters, cast or compile it)."""
        from ..pipelines import load_pipeline

        if self._loaded is None:
            self._loaded = load_pipeline(str(self.folder))
        return copy.deepcopy(self._loaded)

    def unet_folder(self) -> Path:
        from ..formats import model_dir

        return model_dir(self.folder)


def open_export(path: str | os.PathLike) -> Export:
    """Open an export of `prunelab apply` (or any diffusers U-Net or pipeline folder) for the checks.

    Raises:
        FileNotFoundError: no such folder, or neither an export marker nor a diffusers config in it.
        ValueError: a marker, config or weights file of the wrong shape.
    """
    from ..formats import export_format, load_pruned, model_dir
    from ..runtime.validate import as_path, need, read_json

    folder = as_path(path, "path")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass an export folder written by `prunelab apply`")
    unet = load_pruned(folder)
    index = folder / "model_index.json"
    pipeline_class = None
    if index.is_file() and model_dir(folder) != folder:
        info = read_json(index, "pipeline index", fix="re-export with `prunelab apply`")
        pipeline_class = need(info, "_class_name", str, str(index))
    return Export(folder, unet, export_format(folder) is None, pipeline_class)


def unet_inputs(unet, seed: int = 0, batch: int = 1) -> dict:
    """Seeded random inputs for `unet(**inputs)`: the backbone's example call's shapes, at :data:`LATENT`."""
    import torch

    from ..backbones import backbone_for

    _, args = backbone_for(unet).example_call(unet, LATENT, device="cpu")
    g = torch.Generator().manual_seed(seed)
    sample, _, *rest = (torch.randn((batch, *a.shape[1:]), generator=g) for a in args)
    inputs = {"sample": sample, "timestep": torch.full((batch,), 500), "encoder_hidden_states": rest[0]}
    if len(rest) == 3:
        inputs["added_cond_kwargs"] = {"text_embeds": rest[1], "time_ids": rest[2]}
    return inputs


def forward(unet, inputs: dict, **extra):
    """`unet(**inputs, **extra).sample` without gradients."""
    import torch

    with torch.no_grad():
        return unet(**inputs, **extra).sample


def pipeline_call(pipe, **kwargs):
    """A tiny seeded pipeline run (:data:`STEPS` steps at :data:`LATENT`): the images as a float array (N, H, W, 3)."""
    import torch

    size = LATENT * pipe.vae_scale_factor
    pipe.set_progress_bar_config(disable=True)  # a derived pipeline (from_pipe) has its own setting
    call = dict(prompt=PROMPT, num_inference_steps=STEPS, height=size, width=size, output_type="np")
    call["generator"] = torch.Generator().manual_seed(0)
    return pipe(**{**call, **kwargs}).images


def same(a, b, what: str, atol: float = 0.0) -> None:
    """Raise AssertionError unless tensors (or arrays) `a` and `b` agree within `atol` (exactly by default)."""
    import torch

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    diff = (a.float() - b.float()).abs().max().item()
    if not diff <= atol:
        raise AssertionError(f"{what}: outputs differ by {diff:.3g} (allowed {atol:g})")


def finite_images(images, pipe, what: str) -> None:
    """Raise AssertionError unless `images` are one finite (1, H, W, 3) image at the check's size."""
    import numpy as np

    size = LATENT * pipe.vae_scale_factor
    if images.shape != (1, size, size, 3) or not np.isfinite(images).all():
        raise AssertionError(f"{what}: expected one finite {size}x{size} RGB image, got shape {images.shape}")
