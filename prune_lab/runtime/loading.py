"""What a loaded model is (:class:`LoadedModel`) and the rules for telling a hub id from a path.

The loader itself (:func:`prune_lab.models.load_unet`) sits above the backbones and export formats, since it
rebuilds exports; everything that only carries a loaded model (formats, reports, evaluation) uses this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    """A backbone model plus where it came from.

    Attributes:
        unet: the model (eval mode): a U-Net, or a transformer backbone.
        source: what was passed as `--model`.
        kind: `builtin`, `pipeline`, `unet`, `pruned` or `hub`.
        root: the folder of a local pipeline / model, else None.
    """

    unet: Any
    source: str
    kind: str
    root: Path | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.kind == "pipeline"


def looks_like_hub_id(model: str) -> bool:
    """`org/name` with both parts non-empty, not a relative or absolute path."""
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


#: The pipeline components a denoiser can be, by diffusers' names: U-Net pipelines and transformer pipelines.
DENOISERS = ("unet", "transformer")


def denoiser_name(components) -> str:
    """The denoiser's component name in a pipeline's `model_index.json` (or `components` dict): `unet` or
    `transformer`.

    Raises:
        ValueError: neither is there.
    """
    for name in DENOISERS:
        value = components.get(name)
        if value is not None and not (isinstance(value, (list, tuple)) and value[0] is None):
            return name
    raise ValueError(f"the pipeline has no {' or '.join(DENOISERS)} component; pass a diffusion pipeline")


def denoiser(pipe):
    """A loaded pipeline's denoiser: its U-Net or its transformer."""
    return getattr(pipe, denoiser_name(pipe.components))


def absent_components(index: dict) -> dict:
    """`{name: None}` for the components a pipeline's `model_index.json` records as absent (`[null, null]`, e.g. SD3
    saved without its T5), which diffusers' `from_pretrained` wants passed explicitly."""
    return {k: None for k, v in index.items() if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is None}
