"""Learnable 1x1 projections for feature KD between layers of different widths (width-pruned students only).

A block-pruned student keeps the teacher's widths, so its features are compared as they are. A width-pruned
student (`prunelab width`) has narrower stages, so each student feature goes through a learnable 1x1 projection to
the teacher's channel count before the MSE: FitNets' regressor (Romero et al., "FitNets: Hints for Thin Deep Nets",
ICLR 2015), trained with the student and discarded afterwards. Pairs whose widths already agree get no projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..report.steps import unet_call
from .features import FeaturePair, FeatureTap


class ChannelProjection(nn.Module):
    """A 1x1 convolution over the channel axis: axis 1 of (B, C, H, W) features, the last axis of (B, N, C) tokens.

    Args:
        student_channels: C_s, the student feature's width.
        teacher_channels: C_t, the teacher feature's width.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(student_channels, teacher_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_s, H, W) -> (B, C_t, H, W), or (B, N, C_s) -> (B, N, C_t)."""
        if x.dim() == 4:
            return F.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)
        return self.linear(x)


class FeatureProjections(nn.Module):
    """One optional :class:`ChannelProjection` per feature pair (identity where the widths agree).

    Args:
        widths: per pair, (C_s, C_t), or None when no projection is needed.
    """

    def __init__(self, widths: Sequence[tuple[int, int] | None]) -> None:
        super().__init__()
        self.widths = list(widths)
        self.projections = nn.ModuleDict({str(i): ChannelProjection(*w) for i, w in enumerate(widths) if w})

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The student features, each projected to its teacher's width where needed (same order)."""
        return [self.projections[str(i)](f) if str(i) in self.projections else f for i, f in enumerate(features)]


def _channel_axis(x: torch.Tensor) -> int:
    return 1 if x.dim() == 4 else -1


@torch.no_grad()
def _probe(model: nn.Module, points) -> list[torch.Tensor]:
    tap = FeatureTap(model, points)
    try:
        param = next(model.parameters())
        fn, args = unet_call(model, 2 ** (len(model.config.block_out_channels) - 1), param.device, param.dtype)
        with tap.capturing():
            fn(model, *args)
            return tap.collect()
    finally:
        tap.remove()


def feature_projections(
    teacher: nn.Module, student: nn.Module, pairs: Sequence[FeaturePair]
) -> FeatureProjections | None:
    """Projections for the pairs whose channel counts differ (one probing forward of each model on zeros).

    Returns:
        None when every pair already has matching shapes.

    Raises:
        ValueError: a pair that differs in anything but its channel count.
    """
    if not pairs:
        return None
    s_feats = _probe(student, [p.student for p in pairs])
    t_feats = _probe(teacher, [p.teacher for p in pairs])
    widths = []
    for pair, s, t in zip(pairs, s_feats, t_feats):
        axis = _channel_axis(s)
        s_rest, t_rest = list(s.shape), list(t.shape)
        s_rest.pop(axis)
        t_rest.pop(axis)
        if s.dim() != t.dim() or s_rest != t_rest:
            raise ValueError(
                f"feature pair {pair.name}: student {tuple(s.shape)} vs teacher {tuple(t.shape)} differ "
                "beyond the channel count; is the student from this teacher?"
            )
        widths.append(None if s.shape[axis] == t.shape[axis] else (s.shape[axis], t.shape[axis]))
    return FeatureProjections(widths) if any(widths) else None
