"""Validation images: a few fixed prompts rendered by the student every N steps (main process only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class ValidationSampler:
    """Renders `cfg.validation_prompts` with the current student (EMA weights if enabled) into `samples/step-N/`.

    The pipeline is the teacher's (or the student folder's) with the student U-Net swapped in; it is built on first
    use. The generator is reseeded for each prompt, so images of different steps are comparable.
    """

    def __init__(self, recipe, cfg) -> None:
        if recipe.pipeline_root is None:
            raise ValueError(
                "validation images need a pipeline (--teacher or the student folder must have "
                "model_index.json); drop --validation-prompts"
            )
        self.recipe, self.cfg, self.pipe = recipe, cfg, None

    def _pipeline(self):
        from diffusers import DiffusionPipeline

        from ..runtime.loading import denoiser_name

        root: Path = self.recipe.pipeline_root
        index = json.loads((root / "model_index.json").read_text())
        extra = {k: None for k in ("safety_checker", "feature_extractor", "image_encoder") if k in index}
        extra[denoiser_name(index)] = self.recipe.unwrapped  # the student as the pipeline's U-Net or transformer
        pipe = DiffusionPipeline.from_pretrained(root, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.recipe.accelerator.device)

    @torch.no_grad()
    def sample(self, step: int) -> list[Path]:
        acc = self.recipe.accelerator
        paths: list[Path] = []
        if acc.is_main_process:
            self.pipe = self.pipe or self._pipeline()
            folder = self.recipe.out / "samples" / f"step-{step:07d}"
            folder.mkdir(parents=True, exist_ok=True)
            was_training = self.recipe.unwrapped.training
            self.recipe.unwrapped.eval()
            with self.recipe.ema_weights(), acc.autocast():
                for i, prompt in enumerate(self.cfg.validation_prompts):
                    generator = torch.Generator(acc.device).manual_seed(self.cfg.seed)
                    image = self.pipe(
                        prompt,
                        num_inference_steps=self.cfg.validation_steps,
                        generator=generator,
                        height=self.cfg.resolution,
                        width=self.cfg.resolution,
                    ).images[0]
                    paths.append(folder / f"{i:02d}.png")
                    image.save(paths[-1])
            self.recipe.unwrapped.train(was_training)
        acc.wait_for_everyone()
        return paths
