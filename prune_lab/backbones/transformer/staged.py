"""A transformer forward that resumes at any block from cached block outputs: prefix caching for output ablation.

A diffusion transformer is a stem (patch / text / time embeddings), its block stacks in order, and a head. Taking
a block (or a branch inside it) out changes nothing before that block, so the ablation sweep runs the unpruned
forward once per calibration batch, caching every block's output (the next block's input stream(s)), and runs each
unit's forward from the cached input of its first block: blocks before it become :class:`Replay` stand-ins that
return the cached stream(s) without computing. A sweep over N blocks then runs N(N-1)/2 block calls instead of
N(N-1), about half (`benchmarks/ablation_prefix_cache.py` measures it).

The model's own `forward` still runs around the blocks (stem and head are recomputed per unit: a few small layers
against the blocks), so every family's conventions — Flux's concatenated single-block stream, SD3's
`context_pre_only` last block, DiT's head reading `transformer_blocks.0.norm1.emb` (a replayed block reads its
attributes from the block it stands for) — stay the model's, and the result equals the naive forward exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

from ...runtime.modules import set_submodule
from .graph import BLOCK, TransformerGraph
from .spec import family_of
from .surgery import Bypass, expand_removal


class Replay(Bypass):
    """A block whose output is already known: returns `output` (what the block returned in the cached run).

    Args:
        output: the cached output (the hidden states, or the `(encoder_hidden_states, hidden_states)` pair).
        original: the block it stands for (read for any attribute the stand-in lacks).
    """

    def __init__(self, output, original: nn.Module) -> None:
        super().__init__((), original)
        object.__setattr__(self, "_output", output)

    def forward(self, *args, **kwargs):
        return self._output


def block_paths(model: nn.Module) -> list[str]:
    """Every block's module path, in forward order (stack by stack)."""
    return [f"{s.attr}.{i}" for s in family_of(model).stacks for i in range(len(getattr(model, s.attr)))]


class StagedTransformer:
    """`model`'s forward as resumable block steps (the interface of :meth:`~prune_lab.backbones.Backbone.staged`).

    Steps are the blocks in forward order; the state before step k is the output of block k-1 (None before
    block 0: the stem runs in every forward).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.steps = block_paths(model)

    def prepare(self, **inputs) -> tuple[dict, None]:
        """The batch's forward keyword arguments are the context; nothing is computed before the first block."""
        return inputs, None

    @contextmanager
    def _replaying(self, state, start: int):
        swaps = [(path, self.model.get_submodule(path)) for path in self.steps[:start]]
        try:
            for path, original in swaps:
                set_submodule(self.model, path, Replay(state, original))
            yield
        finally:
            for path, original in reversed(swaps):
                set_submodule(self.model, path, original)

    @contextmanager
    def _caching(self, cache: list):
        outputs: list = []
        handles = [
            self.model.get_submodule(p).register_forward_hook(lambda m, a, out: outputs.append(out))
            for p in self.steps
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        cache.extend([None, *outputs[: len(self.steps) - 1]])

    def run(self, context: dict, state=None, start: int = 0, cache: list | None = None):
        """The model output from step `start` on, with blocks before it replaying `state` (the output of block
        `start - 1`); with `cache` (from step 0), the state before every step is appended to it.

        Returns:
            the model's `.sample` (the prediction, as `model(**context).sample`).
        """
        if cache is not None and start:
            raise ValueError("a cached run starts at step 0")
        if cache is not None:
            with self._caching(cache):
                return self.model(**context).sample
        with self._replaying(state, start):
            return self.model(**context).sample

    def __call__(self, **inputs):
        return self.run(inputs)

    def restart_index(self, graph: TransformerGraph, members) -> int:
        """The first block that taking `members` out changes (a branch's block), as a step index."""
        blocks = [name if graph[name].kind == BLOCK else graph[name].parent for name in expand_removal(graph, members)]
        return min(self.steps.index(b) for b in blocks)
