"""The `similarity` criterion (ShortGPT block influence, Flux.1 Lite's in/out MSE) against a by-hand block loop."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_transformer

from prune_lab.backbones import walk
from prune_lab.scoring.calibration import DenoisingBatch
from prune_lab.scoring.groups import ScoreUnit
from prune_lab.scoring.registry import ScoringInputs
from prune_lab.scoring.similarity import similarity


def _batches(model, n: int = 2):
    g = torch.Generator().manual_seed(0)
    return [
        DenoisingBatch(
            dict(
                hidden_states=torch.randn(2, 4, 8, 8, generator=g),
                timestep=torch.tensor([10, 700]),
                class_labels=torch.tensor([3, 5]),
            ),
            torch.zeros(2, 8, 8, 8),
        )
        for _ in range(n)
    ]


def _by_hand(model, batches):
    """Run DiT's block loop by hand and average 1 - cos and the squared change over every token."""
    influence, mse, tokens = [0.0] * 4, [0.0] * 4, 0
    with torch.no_grad():
        for b in batches:
            x = model.pos_embed(b.inputs["hidden_states"])
            for i, block in enumerate(model.transformer_blocks):
                y = block(x, timestep=b.inputs["timestep"], class_labels=b.inputs["class_labels"])
                influence[i] += float((1 - F.cosine_similarity(x.double(), y.double(), dim=-1)).sum())
                mse[i] += float((y.double() - x.double()).pow(2).mean(-1).sum())
                x = y
            tokens += x.shape[0] * x.shape[1]
    return [v / tokens for v in influence], [v / tokens for v in mse]


def test_similarity_matches_a_block_loop_by_hand():
    model = tiny_transformer("DiTTransformer2DModel")
    graph, batches = walk(model), _batches(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = similarity(ScoringInputs(model, graph, batches=batches))
    influence, mse = _by_hand(model, batches)
    for i, unit in enumerate(graph.blocks()):
        score = scorer(ScoreUnit(unit.name, unit.label, unit.kind, (unit.name,), unit.params, False, unit.order))
        assert score.importance == pytest.approx(influence[i], rel=1e-9)
        assert score.extras["mse"] == pytest.approx(mse[i], rel=1e-9)
        assert 0 < score.importance < 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left unchanged
    branch = graph["transformer_blocks.0.ff"]
    with pytest.raises(ValueError, match="--units blocks"):
        scorer(ScoreUnit(branch.name, branch.label, branch.kind, (branch.name,), 0, False, branch.order))
