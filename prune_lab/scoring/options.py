"""Typed criterion options: one frozen dataclass per criterion, registered with it; every default lives here.

A criterion reads its settings with ``inputs.options_for(AblationOptions)`` — the instance given in
:attr:`~prune_lab.scoring.registry.ScoringInputs.options`, else these defaults.
:func:`~prune_lab.scoring.registry.criterion_options` builds them from flat settings (the CLI's flags), each
criterion taking the fields it declares. Import-cheap: the CLI's flag defaults come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CriterionOptions:
    """Base of every criterion's options; a criterion without settings (`magnitude`) uses it as is."""


@dataclass(frozen=True)
class TaylorOptions(CriterionOptions):
    """`taylor` settings.

    Attributes:
        gradient_checkpointing: recompute activations in the backward pass (less memory, more compute).
    """

    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class AblationOptions(CriterionOptions):
    """`ablation` settings.

    Attributes:
        skip_mode: what taking a skip out means: `zero` its channels or `drop` them.
        prefix_cache: cache the unpruned forward's states and restart each unit's run at its first step (equal to
            the naive ablation, cheaper; `UNet2DConditionModel` and the transformers).
    """

    skip_mode: str = "zero"
    prefix_cache: bool = True


@dataclass(frozen=True)
class ClipOptions(CriterionOptions):
    """`clip` settings: the CLIP model that scores, and how the images are generated.

    Attributes:
        skip_mode: what taking a skip out means (as for :class:`AblationOptions`).
        clip_model: open_clip model name or config `.json`; None: the CLIP loader's default.
        clip_pretrained: open_clip pretrained tag; None: the CLIP loader's default.
        clip_checkpoint: a local open_clip checkpoint (needed offline).
        scorer: an already loaded CLIP scorer (then the three fields above are not used).
        scheduler: the sampler generating the images (a :mod:`prune_lab.runtime.samplers` name); None: the
            pipeline's default (:func:`~prune_lab.runtime.samplers.default_sampler`: `pndm` for DDPM-style pipelines
            as BK-SDM, `flow-euler` for SD3 / Flux, `dpm` for Sana).
        steps / guidance: denoising steps and classifier-free guidance scale of every generation.
        batch_size: prompts per pipeline call.
        image_dir: keep every unit's generated images under this folder (None: keep none).
    """

    skip_mode: str = "zero"
    clip_model: str | None = None
    clip_pretrained: str | None = None
    clip_checkpoint: str | None = None
    scorer: Any = None
    scheduler: str | None = None
    steps: int = 25
    guidance: float = 7.5
    batch_size: int = 4
    image_dir: str | None = None
