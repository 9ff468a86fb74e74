"""First-order Taylor importance (BK-SDM §5.4): every unit from the same backward passes."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from .calibration import regressed
from .groups import ScoreUnit
from .options import TaylorOptions
from .reductions import neuron_mean, unit_weights
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion


@contextmanager
def _gradients_of(unet: nn.Module, weights: list[nn.Parameter], checkpointing: bool):
    """Let only `weights` take gradients (from zero); restore flags, `.grad` and checkpointing afterwards."""
    chosen = {id(w) for w in weights}
    saved = [(p, p.requires_grad, p.grad) for p in unet.parameters()]
    was_checkpointing = getattr(unet, "is_gradient_checkpointing", False)
    try:
        for p in unet.parameters():
            p.requires_grad_(id(p) in chosen)
            p.grad = None
        if checkpointing and not was_checkpointing:
            unet.enable_gradient_checkpointing()
        yield
    finally:
        if checkpointing and not was_checkpointing:
            unet.disable_gradient_checkpointing()
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


def accumulated_gradients(inputs: ScoringInputs, weights: list[nn.Parameter]) -> dict[int, torch.Tensor]:
    """∂L/∂W for `weights`, L = the denoising loss averaged over every calibration sample (one backward per batch).

    Returns:
        `id(weight) -> gradient` (zeros for weights the loss does not reach); the model is left as it was.
    """
    unet = inputs.unet
    device = next(unet.parameters()).device
    total = sum(b.target.shape[0] for b in inputs.batches)
    with _gradients_of(unet, weights, inputs.options_for(TaylorOptions).gradient_checkpointing):
        for batch in inputs.batches:
            batch = batch.to(device)
            pred = regressed(unet(**batch.inputs).sample, batch.target)
            loss = (pred.float() - batch.target.float()).pow(2).flatten(1).mean(dim=1).sum() / total
            loss.backward()
        return {id(w): (w.grad if w.grad is not None else torch.zeros_like(w)).detach() for w in weights}


@register_criterion(
    "taylor",
    metric="mean_abs_grad_weight",
    needs=("batches",),
    description="BK-SDM §5.4: E over weight layers and output neurons of sum |dL/dW * W|",
    options=TaylorOptions,
)
def taylor(inputs: ScoringInputs) -> UnitScorer:
    """First-order Taylor criterion of BK-SDM (Kim et al., 2023, §5.4; Molchanov et al., 2019).

    S_b = E_{l,i} Σ_j |∂L/∂W^{l,b}_ij · W^{l,b}_ij| over the unit's weight layers l (as for `magnitude`) and their
    output neurons i, with L the denoising loss (MSE to the scheduler's target) averaged over the calibration set.
    All units come from the same backward passes (one per batch); :class:`TaylorOptions` `gradient_checkpointing`
    trades compute for memory. Higher = more important; `importance` equals the raw score.
    """
    unet, graph = inputs.unet, inputs.graph
    weights = [m.weight for m in unet.modules() if isinstance(m, nn.Conv2d | nn.Linear) and m.weight is not None]
    grads = accumulated_gradients(inputs, weights)

    def score(unit: ScoreUnit) -> UnitScore:
        rows = (
            (grads[id(w.weight)][:, w.in_slice] * w.weight.detach()[:, w.in_slice]).abs()
            for w in unit_weights(unet, graph, unit)
        )
        value = neuron_mean(rows)
        return UnitScore(value, value)

    return score
