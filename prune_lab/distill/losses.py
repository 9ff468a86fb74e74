"""The BK-SDM distillation objective (Kim et al., "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable
Diffusion", ECCV 2024, §3.2):

    L = λ_task·‖y − ε_S(z_t, c, t)‖² + λ_out·‖ε_T(z_t, c, t) − ε_S(z_t, c, t)‖² + λ_feat·Σ_l ‖f_T^l − f_S^l‖²

with every ‖·‖² a mean squared error, y the regression target of the scheduler's prediction type (ε, v or x₀;
:func:`prune_lab.runtime.schedule.training_target`), the teacher frozen and run without gradients. Terms are
computed in fp32 whatever the autocast dtype.
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


#: the task-loss target y for the scheduler's `prediction_type`: the runtime's one definition, under the name


# -------------------------------------------------------------------------------------------------- losses
class FeatureLoss(nn.Module):
    """Σ_l MSE(f_T^l, f_S^l): BK-SDM's feature-level KD (§3.2), summed over the feature pairs."""

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

    @staticmethod
    def per_pair(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(student) != len(teacher):
            raise ValueError(f"{len(student)} student features but {len(teacher)} teacher features")
        return [mse(s, t.detach()) for s, t in zip(student, teacher)]


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
    """

    def __init__(self, lambda_task: float = 1.0, lambda_out: float = 1.0, lambda_feat: float = 1.0) -> None:
        super().__init__()
        for name, value in (("lambda_task", lambda_task), ("lambda_out", lambda_out), ("lambda_feat", lambda_feat)):
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.lambda_task, self.lambda_out, self.lambda_feat = lambda_task, lambda_out, lambda_feat
        self.features = FeatureLoss()

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
        return f"lambda_task={self.lambda_task}, lambda_out={self.lambda_out}, lambda_feat={self.lambda_feat}"
