"""Depth-pruned transformers as presets: Flux.1 Lite, Flux-Mini and TinyFusion.

* `flux-lite` (Freepik's Flux.1 Lite, 12B -> 8B): Flux-dev keeping 8 of its 19 double blocks and all 38 single ones.
* `flux-mini` (Flux-Mini, 3.2B): 5 double + 10 single blocks.
* `tinyfusion` (Fang et al., 2024, "TinyFusion: Diffusion Transformers Learned Shallow"): DiT-XL/2 keeping 14 of 28.
* `depth-half` (any transformer family): every stack keeps half its blocks, rounded up: uniform depth pruning, the
  Flux-Mini-style baseline a scored block choice is compared with at equal params.

Which blocks: by default evenly spaced over the stack with the first and last kept (block round(j (n-1) / (k-1)) for
j = 0..k-1), a documented stand-in for each paper's learned or measured choice; with `--scores` (a table scored at
`--units blocks`, e.g. by `similarity`) the k highest-scoring blocks of each stack, in order.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..unet.presets import register_preset
from .graph import TransformerGraph


def evenly_spaced(n: int, k: int) -> list[int]:
    """k of n indices, evenly spaced, first and last included (k = 1: the first)."""
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} blocks")
    return [0] if k == 1 else sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})


def choose_blocks(graph: TransformerGraph, stack: str, k: int, scores: Mapping[str, float] | None) -> list[str]:
    """The k blocks of `stack` to keep: evenly spaced, or the highest-scoring ones."""
    blocks = [u.name for u in graph.blocks(stack)]
    if k > len(blocks):
        raise ValueError(f"{stack} has {len(blocks)} blocks, the preset keeps {k}")
    if scores is None:
        return [blocks[i] for i in evenly_spaced(len(blocks), k)]
    missing = [n for n in blocks if n not in scores]
    if missing:
        raise ValueError(f"--scores has no score for {missing[0]}; score with --units blocks")
    best = set(sorted(blocks, key=lambda n: -scores[n])[:k])
    return [n for n in blocks if n in best]


def _keep(graph: TransformerGraph, counts: dict[str, int | None], scores) -> set[str]:
    keep: set[str] = set()
    for stack, k in counts.items():
        chosen = choose_blocks(graph, stack, len(graph.blocks(stack)) if k is None else k, scores)
        for name in chosen:  # a plan lists every kept atom: the block and its branches
            keep.update((name, *graph.descendants(name)))
    return keep


@register_preset("flux-lite", ("flux",), "Flux.1 Lite: 8 of 19 double blocks, all single blocks (Freepik, 2024)")
def _flux_lite(graph: TransformerGraph, scores=None) -> set[str]:
    return _keep(graph, {"transformer_blocks": 8, "single_transformer_blocks": None}, scores)


@register_preset("flux-mini", ("flux",), "Flux-Mini: 5 double + 10 single blocks (3.2B)")
def _flux_mini(graph: TransformerGraph, scores=None) -> set[str]:
    return _keep(graph, {"transformer_blocks": 5, "single_transformer_blocks": 10}, scores)


@register_preset("tinyfusion", ("dit",), "TinyFusion: DiT-XL/2 keeping 14 of 28 layers (Fang et al., 2024)")
def _tinyfusion(graph: TransformerGraph, scores=None) -> set[str]:
    return _keep(graph, {"transformer_blocks": 14}, scores)


@register_preset(
    "depth-half",
    ("dit", "pixart", "sd3", "flux", "sana"),
    "every stack keeps half its blocks, rounded up (uniform depth pruning, Flux-Mini-style)",
)
def _depth_half(graph: TransformerGraph, scores=None) -> set[str]:
    stacks = dict.fromkeys(u.stage for u in graph.blocks())
    return _keep(graph, {s: -(-len(graph.blocks(s)) // 2) for s in stacks}, scores)
