"""Output-level ablation (LAPTOP-Diff's output loss), with prefix caching."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..backbones import backbone_for, taken_out
from .calibration import regressed
from .groups import ScoreUnit
from .options import AblationOptions
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion

#: For one unit taken out: (pruned output, full output, target) per calibration batch.
Runs = Callable[[ScoreUnit], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def _device(unet) -> torch.device:
    return next(unet.parameters()).device


def _naive_runs(inputs: ScoringInputs) -> Runs:
    """Every unit's run is a whole forward pass."""
    unet, device = inputs.unet, _device(inputs.unet)
    batches = [b.to(device) for b in inputs.batches]
    with torch.no_grad():
        full = [unet(**b.inputs).sample for b in batches]

    def runs(unit: ScoreUnit):
        for b, out in zip(batches, full):
            yield unet(**b.inputs).sample, out, b.target

    return runs


def _prefix_runs(inputs: ScoringInputs) -> Runs:
    """One staged forward per batch caches the state before every step; a unit's run resumes at its first step."""
    staged, device = backbone_for(inputs.unet).staged(inputs.unet), _device(inputs.unet)
    cached = []
    with torch.no_grad():
        for batch in inputs.batches:
            batch = batch.to(device)
            context, state = staged.prepare(**batch.inputs)
            states: list = []
            cached.append((context, states, staged.run(context, state, cache=states), batch.target))

    def runs(unit: ScoreUnit):
        start = staged.restart_index(inputs.graph, unit.members)
        for context, states, out, target in cached:
            yield staged.run(context, states[start], start), out, target

    return runs


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).pow(2).flatten(1).mean(dim=1).sum()


@register_criterion(
    "ablation",
    metric="output_mse",
    needs=("batches",),
    description="LAPTOP-Diff output loss: E||eps_pruned - eps_full||^2 with the unit taken out",
    options=AblationOptions,
)
def ablation(inputs: ScoringInputs) -> UnitScorer:
    """Output-level ablation: the one-shot output loss of LAPTOP-Diff (Zhang et al., 2024).

    The unit is taken out with analysis-mode surgery (identity or channel-interpolation substitute; a skip is
    zeroed, or dropped with :class:`AblationOptions` `skip_mode="drop"`) and the U-Net output on the calibration
    batches is compared with the unpruned output: raw = E_{x,t} mean_elements (ε_pruned − ε_full)², i.e.
    E‖ε_pruned − ε_full‖² divided by the latent size. `loss_increase` records the rise of the denoising loss against
    the true target. Higher = more important; `importance` equals the raw score.

    With `prefix_cache` (default True, for `UNet2DConditionModel` and the transformers) the unpruned forward's
    states are cached once, and each unit's run restarts at the first step it touches (a transformer's: the cached
    input of its block): equal to the naive ablation, cheaper.
    """
    unet, graph = inputs.unet, inputs.graph
    options = inputs.options_for(AblationOptions)
    skip_mode = options.skip_mode
    staged = options.prefix_cache and backbone_for(unet).staged(unet) is not None
    runs = (_prefix_runs if staged else _naive_runs)(inputs)

    def score(unit: ScoreUnit) -> UnitScore:
        out_sq = loss_p = loss_f = 0.0
        count = 0
        with torch.no_grad(), taken_out(unet, unit.members, skip_mode=skip_mode, graph=graph):
            for pruned, full, target in runs(unit):
                out_sq += float(_mse(pruned, full))
                loss_p += float(_mse(regressed(pruned, target), target))
                loss_f += float(_mse(regressed(full, target), target))
                count += pruned.shape[0]
        raw = out_sq / count
        return UnitScore(raw, raw, {"loss_increase": (loss_p - loss_f) / count})

    return score
