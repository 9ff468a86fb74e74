"""Generation-level importance: the CLIP score of images generated with the unit taken out (BK-SDM Fig 5)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones import taken_out
from ..runtime.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, load_clip
from .calibration import initial_latents
from .groups import ScoreUnit
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion

#: `--scheduler` choices: name -> diffusers scheduler class name.
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def with_scheduler(pipe, scheduler: str):
    """A pipeline sharing `pipe`'s modules, with the named sampler (configured from `pipe`'s scheduler)."""
    import diffusers

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown --scheduler {scheduler!r}; choose from: {', '.join(SCHEDULERS)}")
    sampler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    copy = type(pipe)(**{**pipe.components, "scheduler": sampler})
    copy.set_progress_bar_config(disable=True)
    return copy


@torch.no_grad()
def generate(
    pipe, prompts: list[str], latents: torch.Tensor, *, steps: int, guidance: float, batch_size: int = 4
) -> list:
    """PIL images for `prompts`, starting from the given initial `latents` (N, C, h, w)."""
    images = []
    for i in range(0, len(prompts), batch_size):
        images += pipe(
            prompt=prompts[i : i + batch_size],
            latents=latents[i : i + batch_size].to(pipe.device),
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="pil",
        ).images
    return images


def _save(images: list, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:04d}.png")


@register_criterion(
    "clip",
    metric="clip_score",
    needs=("pipeline",),
    description="BK-SDM Fig 5: CLIP score of images generated without the unit (drop = importance)",
)
def clip(inputs: ScoringInputs) -> UnitScorer:
    """Generation-level criterion of BK-SDM (Kim et al., 2023, Fig 5; CLIP score of Hessel et al., 2021).

    With the unit taken out, images are generated for the prompts (default PNDM, 25 steps, guidance 7.5) from the
    same seeded initial latents as the unpruned run, and scored by an open_clip model: raw = mean cosine similarity
    between image and prompt embeddings (the unpruned `clip_baseline` in the extras). Importance = baseline − raw
    (the drop in CLIP score); higher = more important.

    Options: `clip_model`, `clip_pretrained`, `clip_checkpoint` (:func:`prune_lab.runtime.clip.load_clip`'s; or
    `clip_scorer`, a loaded :class:`~prune_lab.runtime.clip.ClipScorer`), `scheduler`, `steps`, `guidance`,
    `batch_size`, `image_dir` (keep every unit's images on disk).
    """
    opt, unet, graph = inputs.options, inputs.unet, inputs.graph
    if not inputs.prompts:
        raise ValueError("the clip criterion needs prompts: pass --prompts FILE")
    scorer = opt.get("clip_scorer") or load_clip(
        opt.get("clip_model", DEFAULT_CLIP_MODEL),
        opt.get("clip_pretrained", DEFAULT_CLIP_PRETRAINED),
        opt.get("clip_checkpoint"),
        inputs.pipeline.device,
    )
    pipe = with_scheduler(inputs.pipeline, opt.get("scheduler", "pndm"))
    latents = initial_latents(pipe, len(inputs.prompts), inputs.seed)
    kwargs = dict(steps=opt.get("steps", 25), guidance=opt.get("guidance", 7.5), batch_size=opt.get("batch_size", 4))
    image_dir = Path(opt["image_dir"]) if opt.get("image_dir") else None

    def measure(folder: str) -> float:
        images = generate(pipe, inputs.prompts, latents, **kwargs)
        if image_dir is not None:
            _save(images, image_dir / folder.replace(":", "_"))
        return float(scorer(images, inputs.prompts).double().mean())

    baseline = measure("unpruned")

    def score(unit: ScoreUnit) -> UnitScore:
        with taken_out(unet, unit.members, skip_mode=opt.get("skip_mode", "zero"), graph=graph):
            raw = measure(unit.name)
        return UnitScore(raw, baseline - raw, {"clip_baseline": baseline})

    return score
