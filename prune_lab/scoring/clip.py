"""Generation-level importance: the CLIP score of images generated with the unit taken out (BK-SDM Fig 5)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..surgery import taken_out
from .calibration import initial_latents
from .groups import ScoreUnit
from .options import ClipOptions
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion

DEFAULT_CLIP_MODEL = "ViT-g-14"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b88k"

#: `--scheduler` choices: name -> diffusers scheduler class name.
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


@dataclass
class ClipScorer:
    """An open_clip model with its image preprocessing and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device | str = "cpu"

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity (N,) between each image's and its prompt's CLIP embeddings."""
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text = F.normalize(self.model.encode_text(self.tokenizer(prompts).to(self.device)).float(), dim=-1)
        return (image * text).sum(dim=-1)


def _model_name(name: str) -> str:
    import open_clip

    from ..demo.clip import register_builtin

    register_builtin(name)  # the demo world's scorer, demo-clip
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--clip-model config {path} does not exist")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown --clip-model {name!r}; pass an open_clip model name (e.g. {DEFAULT_CLIP_MODEL}) "
            "or a model config .json"
        )
    return name


def load_clip(
    name: str = DEFAULT_CLIP_MODEL,
    pretrained: str = DEFAULT_CLIP_PRETRAINED,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> ClipScorer:
    """An open_clip model from a local checkpoint, or from its pretrained tag (downloaded or cached).

    Args:
        name: open_clip model name, or a model config `.json` (registered with `open_clip.add_model_config`).
        pretrained: pretrained tag, used when no `checkpoint` is given.
        checkpoint: a local open_clip checkpoint (state dict) for `name`.

    Raises:
        FileNotFoundError: `checkpoint` does not exist.
        ValueError: unknown model, or weights that cannot be had (offline without a checkpoint).
    """
    import open_clip

    name = _model_name(name)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--clip-checkpoint {checkpoint} does not exist")
    source = str(checkpoint) if checkpoint is not None else pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=source, device=device)
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"cannot load CLIP weights {name}/{source} (offline or not cached: "
            f"{type(e).__name__}); pass --clip-checkpoint PATH to a local open_clip checkpoint"
        ) from e
    return ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer(name), device)


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
    options=ClipOptions,
)
def clip(inputs: ScoringInputs) -> UnitScorer:
    """Generation-level criterion of BK-SDM (Kim et al., 2023, Fig 5; CLIP score of Hessel et al., 2021).

    With the unit taken out, images are generated for the prompts (default PNDM, 25 steps, guidance 7.5) from the
    same seeded initial latents as the unpruned run, and scored by an open_clip model: raw = mean cosine similarity
    between image and prompt embeddings (the unpruned `clip_baseline` in the extras). Importance = baseline − raw
    (the drop in CLIP score); higher = more important.

    Options: :class:`~prune_lab.scoring.options.ClipOptions`.
    """
    opt, unet, graph = inputs.options_for(ClipOptions), inputs.unet, inputs.graph
    if not inputs.prompts:
        raise ValueError("the clip criterion needs prompts: pass --prompts FILE")
    scorer = opt.scorer or load_clip(
        opt.clip_model or DEFAULT_CLIP_MODEL,
        opt.clip_pretrained or DEFAULT_CLIP_PRETRAINED,
        opt.clip_checkpoint,
        inputs.pipeline.device,
    )
    pipe = with_scheduler(inputs.pipeline, opt.scheduler)
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
