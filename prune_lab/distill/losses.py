"""The BK-SDM distillation objective (Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable
Diffusion", ECCV 2024, §3.2):

    L = λ_task·‖y − ε_S(z_t, c, t)‖² + λ_out·‖ε_T(z_t, c, t) − ε_S(z_t, c, t)‖² + λ_feat·Σ_l ‖f_T^l − f_S^l‖²

with every ‖·‖² a mean squared error, y the regression target of the scheduler's prediction type (ε, v or x₀;
:func:`prune_lab.runtime.schedule.training_target`), the teacher frozen and run without gradients. Terms are
computed in fp32 whatever the autocast dtype.

With `feature_loss="normalized"` each feature term is LAPTOP-Diff's normalised feature loss (Zhang et al.,
"LAPTOP-Diff: Layer Pruning and Normalized Distillation for Compressing Diffusion Models", arXiv:2404.11098, §3.3):
the squared error of a pair divided by the teacher feature's squared L2 norm, both summed over the whole micro-batch
tensor, ‖f_T^l − f_S^l‖²_F / ‖f_T^l‖²_F, so that every layer weighs alike whatever its activation scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32 (shapes must agree; no broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return F.mse_loss(a.float(), b.float(), reduction="mean")


#: Feature-loss forms: BK-SDM's plain MSE, or LAPTOP-Diff's normalised one (see the module docstring).
FEATURE_LOSSES = ("mse", "normalized")


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """LAPTOP-Diff's normalised feature loss (arXiv:2404.11098, §3.3), in fp32.

    Args:
        student / teacher: one feature pair of equal shape, e.g. (B, C, H, W) or (B, N, C).

    Returns:
        () Σ(f_T − f_S)² / Σ f_T², sums over every element of the batch; the denominator is floored at the
        smallest positive fp32 number, so an all-zero teacher feature gives a large finite loss, not NaN.
    """
    error = mse(student, teacher)  # checks the shapes; mean = sum / numel on both sides, so the ratio is the same
    scale = teacher.float().pow(2).mean().clamp_min(torch.finfo(torch.float32).tiny)
    return error / scale


# -------------------------------------------------------------------------------------------------- losses
class FeatureLoss(nn.Module):
    """Σ_l MSE(f_T^l, f_S^l): BK-SDM's feature-level KD (§3.2), summed over the feature pairs.

    Args:
        form: `mse` (BK-SDM), or `normalized` (each pair's term is :func:`normalized_mse`, LAPTOP-Diff).
    """

    def __init__(self, form: str = "mse") -> None:
        super().__init__()
        if form not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss {form!r} is not one of {', '.join(FEATURE_LOSSES)}")
        self.form = form

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of per-pair MSEs.

        Args:
            student: L student features, the l-th of shape (B, C_l, H_l, W_l) or (B, N_l, C_l).
            teacher: L teacher features of the same shapes (no gradient needed).

        Returns:
            () the sum over l of mean((f_T^l − f_S^l)²); 0 when L = 0.
        """
        per_pair = self.per_pair(student, teacher)
        return torch.stack(per_pair).sum() if per_pair else torch.zeros(())

    def per_pair(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(student) != len(teacher):
            raise ValueError(f"{len(student)} student features but {len(teacher)} teacher features")
        term = normalized_mse if self.form == "normalized" else mse
        return [term(s, t.detach()) for s, t in zip(student, teacher)]


@dataclass
class LossTerms:
    """One evaluation of :class:`DistillationLoss`: the weighted total and each unweighted component.

    Attributes:
        total: λ_task·task + λ_out·out + λ_feat·feat, () with gradient.
        task / out / feat: the unweighted components, () each.
        per_feature: the unweighted MSE of each feature pair, in pair order (they sum to `feat`).
    """

    total: torch.Tensor
    task: torch.Tensor
    out: torch.Tensor
    feat: torch.Tensor
    per_feature: list[torch.Tensor] = field(default_factory=list)

    def components(self) -> dict[str, float]:
        """Detached floats: `loss`, `task`, `out`, `feat` (for logging)."""
        return {"loss": float(self.total), "task": float(self.task), "out": float(self.out), "feat": float(self.feat)}


class DistillationLoss(nn.Module):
    """BK-SDM's objective (§3.2): task loss + output-level KD + feature-level KD, each weighted by its λ.

    Args:
        lambda_task: weight of ‖y − ε_S‖² (the ordinary denoising loss).
        lambda_out: weight of ‖ε_T − ε_S‖² (output-level KD).
        lambda_feat: weight of Σ_l ‖f_T^l − f_S^l‖² (feature-level KD).
        feature_loss: `mse` (BK-SDM) or `normalized` (LAPTOP-Diff: each term over ‖f_T^l‖²).
    """

    def __init__(
        self, lambda_task: float = 1.0, lambda_out: float = 1.0, lambda_feat: float = 1.0, feature_loss: str = "mse"
    ) -> None:
        super().__init__()
        for name, value in (("lambda_task", lambda_task), ("lambda_out", lambda_out), ("lambda_feat", lambda_feat)):
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.lambda_task, self.lambda_out, self.lambda_feat = lambda_task, lambda_out, lambda_feat
        self.features = FeatureLoss(feature_loss)

    def forward(
        self,
        student_out: torch.Tensor,
        target: torch.Tensor,
        teacher_out: torch.Tensor,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
    ) -> LossTerms:
        """Evaluate the objective.

        Args:
            student_out: ε_S(z_t, c, t), (B, C, h, w).
            target: y, the scheduler's regression target, (B, C, h, w).
            teacher_out: ε_T(z_t, c, t), (B, C, h, w), computed without gradient.
            student_features / teacher_features: paired features f_S^l, f_T^l (see :class:`FeatureLoss`).
        """
        task = mse(student_out, target)
        out = mse(student_out, teacher_out.detach())
        per_feature = self.features.per_pair(student_features, teacher_features)
        feat = torch.stack(per_feature).sum() if per_feature else torch.zeros((), device=task.device)
        total = self.lambda_task * task + self.lambda_out * out + self.lambda_feat * feat
        return LossTerms(total, task, out, feat, per_feature)

    def extra_repr(self) -> str:
        return (
            f"lambda_task={self.lambda_task}, lambda_out={self.lambda_out}, lambda_feat={self.lambda_feat}, "
            f"feature_loss={self.features.form}"
        )
