"""Cost of a full ablation sweep over a DiT stack, with and without prefix caching (issue 17).

Prefix caching (:mod:`prune_lab.backbones.transformer.staged`) runs the unpruned forward once per calibration batch,
caching every block's output, and each block's removal restarts from its cached input: a sweep over N blocks runs
N + N(N-1)/2 block calls per batch instead of N + N(N-1). This script scores every block of a small random DiT
(`--layers` blocks, DiT-XL/2's layout at a smaller width) with the `ablation` criterion both ways, checks the two score
lists are identical, and prints the measured ratios of block forward calls and of wall time (best of `--runs`).

Usage: python benchmarks/ablation_prefix_cache.py [--layers 12] [--width 256] [--latent 16] [--samples 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DiTTransformer2DModel

from prune_lab.backbones import backbone_for, walk
from prune_lab.backbones.transformer.staged import block_paths
from prune_lab.scoring import DenoisingBatch, ScoringInputs, criterion_options, get_criterion, score_units
from prune_lab.scoring.registry import UnitScore


def dit(layers: int, width: int, latent: int) -> DiTTransformer2DModel:
    """A seeded random DiT: DiT-XL/2's block layout (patch 2, ada-norm-zero, learned sigma) at `width`."""
    torch.manual_seed(0)
    heads = width // 64
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=64, num_layers=layers, sample_size=latent, in_channels=4
    )
    with torch.no_grad():  # DiT zero-initialises its modulations: give every block something to do
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.eval()


def sweep(model, batches, cached: bool) -> tuple[list[UnitScore], int, float]:
    """Every block's ablation score; the block forward calls and the wall seconds it took."""
    calls: list[int] = []
    handles = [
        model.get_submodule(p).register_forward_pre_hook(lambda m, a: calls.append(1)) for p in block_paths(model)
    ]
    graph = walk(model)
    inputs = ScoringInputs(model, graph, batches, options=criterion_options({"prefix_cache": cached}))
    start = time.perf_counter()
    with torch.no_grad():
        scorer = get_criterion("ablation").build(inputs)
        scores = [scorer(u) for u in score_units(graph, "blocks")]
    seconds = time.perf_counter() - start
    for h in handles:
        h.remove()
    return scores, len(calls), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=256, help="residual width (heads of 64)")
    p.add_argument("--latent", type=int, default=16, help="latent side (patch 2: (latent/2)^2 tokens)")
    p.add_argument("--samples", type=int, default=4, help="calibration samples (one timestep each, batches of 4)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    model = dit(args.layers, args.width, args.latent)
    pairs = backbone_for(model).calibration_batches(
        model, samples=args.samples, timesteps=1, batch_size=4, seed=0, latent=args.latent
    )
    batches = [DenoisingBatch(kwargs, target) for kwargs, target in pairs]
    results = {}
    for cached in (False, True):
        runs = [sweep(model, batches, cached) for _ in range(args.runs)]
        results[cached] = (runs[0][0], runs[0][1], min(r[2] for r in runs))
    assert results[True][0] == results[False][0], "prefix-cached scores differ from the naive ones"
    n, b = args.layers, len(batches)
    print(f"DiT stack: {n} blocks, width {args.width}, {(args.latent // 2) ** 2} tokens, {b} calibration batch(es)")
    for cached, label in ((False, "naive"), (True, "prefix-cached")):
        _, calls, seconds = results[cached]
        print(f"  {label:>13}: {calls:4d} block calls, {seconds:7.3f} s (best of {args.runs})")
    print(f"  expected calls: naive {b * (n + n * (n - 1))}, prefix-cached {b * (n + n * (n - 1) // 2)}")
    print(
        f"  cost ratio (prefix-cached / naive): block calls {results[True][1] / results[False][1]:.3f}, "
        f"wall time {results[True][2] / results[False][2]:.3f}; scores identical"
    )


if __name__ == "__main__":
    main()
