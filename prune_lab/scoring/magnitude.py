"""Weight-magnitude importance (BK-SDM §5.4), no forward pass."""

from __future__ import annotations

from .groups import ScoreUnit
from .reductions import neuron_mean, unit_weights
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion


@register_criterion(
    "magnitude",
    metric="mean_abs_weight",
    description="BK-SDM §5.4: E over weight layers and output neurons of the L1 norm of the weights",
)
def magnitude(inputs: ScoringInputs) -> UnitScorer:
    """Magnitude criterion of BK-SDM (Kim et al., 2023, §5.4 and its footnote).

    For unit b with weight layers l (convolutions flattened to (out, in·kh·kw), linear layers including the
    attention projections) S_b = E_{l,i} Σ_j |W^{l,b}_ij|: the L1 norm of each output neuron's weights, averaged
    over all output neurons of all the unit's layers (Li et al., 2017, per-filter L1). A skip owns the consumer
    weights that read its channels. Higher = more important; `importance` equals the raw score.
    """

    def score(unit: ScoreUnit) -> UnitScore:
        value = neuron_mean(
            w.weight.detach()[:, w.in_slice].abs() for w in unit_weights(inputs.unet, inputs.graph, unit)
        )
        return UnitScore(value, value)

    return score
