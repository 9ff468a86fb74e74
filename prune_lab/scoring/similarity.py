"""Block influence from one forward: ShortGPT's 1 - cos(input, output) and Flux.1 Lite's input/output MSE.

ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect", Eq. 1)
scores a residual block by how much it turns its input: BI = 1 - E_tokens[cos(x_in, x_out)], the cosine taken over
the feature axis of every token. SANA-1.5 prunes its depth by the same block input/output similarity; Freepik's
Flux.1 Lite ranks Flux blocks by the MSE between a block's input and output. Both come from hooks on every block in
the same single forward per calibration batch (no unit is taken out), so a full sweep costs one pass per batch.

The stream compared is the image stream: a block's `hidden_states` in, and its output (the last element of an
`(encoder_hidden_states, hidden_states)` pair for MMDiT / Flux blocks). Importance = BI; the MSE is an extra column.
It applies to backbones whose blocks keep their input shape (capability `block_streams`: the transformers, not the
U-Net), and scores blocks (`--units blocks`), not the branches inside them.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .groups import ScoreUnit
from .registry import ScoringInputs, UnitScore, UnitScorer, register_criterion


def _image(value) -> torch.Tensor:
    return value[-1] if isinstance(value, (tuple, list)) else value


def _hook(sums: dict, name: str):
    def hook(module, args, kwargs, output):
        x_in = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).double()
        x_out = _image(output).double()
        if x_in.shape != x_out.shape:
            raise ValueError(f"similarity compares a unit's input and output, but {name} changes the shape")
        cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)
        sums[name]["influence"] += float((1 - cos).sum())
        sums[name]["mse"] += float((x_out - x_in).pow(2).mean(dim=-1).sum())
        sums[name]["tokens"] += cos.numel()

    return hook


def block_statistics(model, batches, names: list[str]) -> dict[str, dict[str, float]]:
    """`name -> {"influence": 1 - mean cos, "mse": mean squared change}` of every module in `names`, from one
    forward per batch (`model(**batch.inputs)`), averaged over every token of every batch."""
    sums: dict = defaultdict(lambda: defaultdict(float))
    handles = [model.get_submodule(n).register_forward_hook(_hook(sums, n), with_kwargs=True) for n in names]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            for batch in batches:
                model(**batch.to(device).inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {n: {k: sums[n][k] / sums[n]["tokens"] for k in ("influence", "mse")} for n in names}


@register_criterion(
    "similarity",
    metric="block_influence",
    needs=("batches",),
    requires=("block_streams",),
    description="ShortGPT block influence 1 - cos(block input, output), with Flux.1 Lite's in/out MSE; one forward",
)
def similarity(inputs: ScoringInputs) -> UnitScorer:
    """Block influence of every block from one forward per batch (ShortGPT, Men et al., 2024, Eq. 1; see the module
    docstring). Higher = more important; `importance` equals the raw score, `mse` is an extra column."""
    blocks = [u.name for u in inputs.graph.units if u.kind == "block"]
    stats = block_statistics(inputs.unet, inputs.batches, blocks)

    def score(unit: ScoreUnit) -> UnitScore:
        missing = [m for m in unit.members if m not in stats]
        if missing:
            raise ValueError(f"similarity scores blocks (--units blocks); {missing[0]} is a {unit.kind}")
        influence = sum(stats[m]["influence"] for m in unit.members)
        return UnitScore(influence, influence, {"mse": sum(stats[m]["mse"] for m in unit.members)})

    return score
