"""One distillation micro-step, independent of accelerate (the recipe and the benchmarks share it).

Per micro-step (BK-SDM §3.2): draw z_0 from the VAE posterior, noise it to z_t at a timestep drawn as the model's
scheduler defines training (:func:`prune_lab.runtime.schedule.noised`: DDPM's uniform t, or flow matching's σ), run
the frozen teacher without gradients and the student as their backbone calls one step
(:func:`~prune_lab.distill.encoders.model_call`: :meth:`~prune_lab.backbones.base.Backbone.denoise`, the call that
scoring's calibration batches make too), and evaluate :class:`~prune_lab.distill.losses.DistillationLoss` on the
outputs and on the feature pairs. Every random number comes from a generator seeded by (seed, micro-step,
process), so the same step draws the same noise whether or not the run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn as nn

from ..runtime.schedule import TimestepSampling, noised
from .encoders import FrozenEncoders, model_call
from .features import FeaturePair, FeatureTap
from .losses import DistillationLoss, LossTerms


def step_generator(seed: int, micro_step: int, process: int = 0, device="cpu") -> torch.Generator:
    """A generator seeded from (seed, micro-step, process) only."""
    digest = hashlib.blake2b(f"{seed}:{micro_step}:{process}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _cast(cond: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}


class DistillStep:
    """Teacher/student forward passes and the KD loss for one batch.

    Args:
        teacher: the frozen teacher U-Net or transformer (its dtype is the mixed-precision dtype).
        student: the student as called for training (possibly DDP-wrapped).
        encoders: turns batches into latents and conditioning.
        scheduler: the training noise scheduler (:func:`~prune_lab.runtime.schedule.noise_scheduler`).
        loss: the objective.
        pairs: feature pairs; hooks go on `teacher` and on `unwrapped_student`.
        unwrapped_student: the plain module inside `student` (defaults to `student`).
        autocast: context factory for the teacher's forward (accelerate's autocast under mixed precision).
        project: maps the student features to the teacher's widths before the loss (width-pruned students,
            :class:`~prune_lab.distill.projection.FeatureProjections`); None compares them as they are.
        sampling: how flow-matching timesteps are drawn (None: uniform; DDPM schedules ignore it).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        encoders: FrozenEncoders,
        scheduler,
        loss: DistillationLoss,
        pairs: Sequence[FeaturePair],
        *,
        unwrapped_student: nn.Module | None = None,
        autocast: Callable = nullcontext,
        project: Callable | None = None,
        sampling: TimestepSampling | None = None,
    ) -> None:
        self.teacher, self.student, self.encoders, self.scheduler = teacher, student, encoders, scheduler
        self.loss, self.project, self.sampling = loss, project, sampling or TimestepSampling()
        self.teacher_call, self.student_call = model_call(teacher), model_call(unwrapped_student or student)
        self.pairs, self.autocast = list(pairs), autocast
        self.teacher_tap = FeatureTap(teacher, [p.teacher for p in self.pairs])
        self.student_tap = FeatureTap(unwrapped_student or student, [p.student for p in self.pairs])

    def noisy_inputs(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(z_t, t, target, conditioning) for `batch`, drawn from `generator`."""
        latents = self.encoders.latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noisy, timesteps, target = noised(self.scheduler, latents, noise, generator, self.sampling)
        return noisy, timesteps, target, self.encoders.condition(batch)

    def __call__(self, batch: dict, generator: torch.Generator) -> LossTerms:
        noisy, timesteps, target, cond = self.noisy_inputs(batch, generator)
        dtype = self.teacher.dtype
        with torch.no_grad(), self.autocast(), self.teacher_tap.capturing():
            teacher_out = self.teacher_call(self.teacher, noisy.to(dtype), timesteps, _cast(cond, dtype))
            teacher_features = self.teacher_tap.collect()
        with self.student_tap.capturing():
            student_out = self.student_call(self.student, noisy, timesteps, _cast(cond, torch.float32))
            student_features = self.student_tap.collect()
        if self.project is not None:
            student_features = self.project(student_features)
        return self.loss(student_out, target, teacher_out, student_features, teacher_features)

    def remove_hooks(self) -> None:
        self.teacher_tap.remove()
        self.student_tap.remove()
