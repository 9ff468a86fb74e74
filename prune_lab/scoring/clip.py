"""Generation-level importance: the CLIP score of images generated with the unit taken out (BK-SDM Fig 5)."""

from __future__ import annotations

from pathlib import Path

from ..backbones import taken_out
from ..runtime import samplers
from ..runtime.atomic import atomic_path
from ..runtime.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, load_clip
from ..runtime.generation import generate, initial_latents
from .groups import ScoreUnit
from .options import ClipOptions
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion


def _save(images: list, folder: Path) -> None:
    for i, image in enumerate(images):
        with atomic_path(folder / f"{i:04d}.png", suffix=".tmp") as tmp:
            image.save(tmp, format="PNG")


@register_criterion(
    "clip",
    metric="clip_score",
    needs=("pipeline",),
    requires=("generation",),
    description="BK-SDM Fig 5: CLIP score of images generated without the unit (drop = importance)",
    options=ClipOptions,
)
def clip(inputs: ScoringInputs) -> UnitScorer:
    """Generation-level criterion of BK-SDM (Kim et al., 2023, Fig 5; CLIP score of Hessel et al., 2021).

    With the unit taken out, images are generated through the model's own pipeline (a U-Net's, or a text-to-image
    transformer's: SD3, Flux, PixArt, Sana) for the prompts (default sampler: PNDM for DDPM-style pipelines as
    BK-SDM, the flow sampler for flow-matching ones; 25 steps, guidance 7.5) from the same seeded initial latents as
    the unpruned run, and scored by an open_clip model: raw = mean cosine similarity
    between image and prompt embeddings (the unpruned `clip_baseline` in the extras). Importance = baseline − raw
    (the drop in CLIP score); higher = more important.

    Options: :class:`~prune_lab.scoring.options.ClipOptions`.
    """
    opt, unet, graph = inputs.options_for(ClipOptions), inputs.unet, inputs.graph
    if not inputs.prompts:
        raise ValueError("the clip criterion needs prompts: pass --prompts FILE")
    name = samplers.resolve(opt.scheduler, inputs.pipeline.scheduler.config)
    samplers.check_steps(name, opt.steps)
    scorer = opt.scorer or load_clip(
        opt.clip_model or DEFAULT_CLIP_MODEL,
        opt.clip_pretrained or DEFAULT_CLIP_PRETRAINED,
        opt.clip_checkpoint,
        inputs.pipeline.device,
    )
    # config_only: this criterion has always built its sampler from the pipeline's config alone (see
    # prune_lab.runtime.samplers), so its scores stay what they were
    pipe = samplers.with_sampler(inputs.pipeline, name, config_only=True)
    latents = initial_latents(pipe, len(inputs.prompts), inputs.seed)
    kwargs = dict(steps=opt.steps, guidance=opt.guidance, batch_size=opt.batch_size)
    image_dir = Path(opt.image_dir) if opt.image_dir else None

    def measure(folder: str) -> float:
        images = generate(pipe, inputs.prompts, latents, **kwargs)
        if image_dir is not None:
            _save(images, image_dir / folder.replace(":", "_"))
        return float(scorer(images, inputs.prompts).double().mean())

    baseline = measure("unpruned")

    def score(unit: ScoreUnit) -> UnitScore:
        with taken_out(unet, unit.members, skip_mode=opt.skip_mode, graph=graph):
            raw = measure(unit.name)
        return UnitScore(raw, baseline - raw, {"clip_baseline": baseline})

    return score
