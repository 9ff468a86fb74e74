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
