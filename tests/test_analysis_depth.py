"""prune_lab/analysis/depth.py: thirds of a stack, removable blocks, consensus, mean ranks and rank agreement, on
score tables small enough to check by hand."""

import pandas as pd
import pytest

from prune_lab.analysis.depth import consensus, depth_thirds, pairwise_agreement, removable, third_ranks

BLOCKS = [f"b{i}" for i in range(6)]


def _scores(**columns: list[float]) -> pd.DataFrame:
    """A long score table: one criterion per keyword, importances of BLOCKS in order."""
    rows = [
        {"criterion": c, "name": b, "importance": v} for c, values in columns.items() for b, v in zip(BLOCKS, values)
    ]
    return pd.DataFrame(rows)


def test_thirds_split_by_forward_order():
    assert list(depth_thirds([f"x{i}" for i in range(12)]).values()) == ["first"] * 4 + ["middle"] * 4 + ["last"] * 4
    sizes = pd.Series(depth_thirds([f"x{i}" for i in range(10)])).value_counts()
    assert sizes.to_dict() == {"middle": 4, "first": 3, "last": 3}
    assert depth_thirds(BLOCKS) == dict(zip(BLOCKS, ["first", "first", "middle", "middle", "last", "last"]))


def test_removable_consensus_and_third_ranks_by_hand():
    # a: middle least important; b: the same order reversed in depth; c: the first two least important
    scores = _scores(a=[6, 5, 1, 2, 4, 3], b=[3, 4, 2, 1, 5, 6], c=[1, 2, 3, 4, 5, 6])
    table = removable(scores, BLOCKS, 2).set_index("criterion")
    assert table.loc["a", "removable"] == "3, 4" and table.loc["b", "removable"] == "4, 3"
    assert table.loc["c", "removable"] == "1, 2" and table.loc["c", ["first", "middle", "last"]].tolist() == [2, 0, 0]
    agreed = consensus(scores, BLOCKS, 2, quorum=2)
    assert agreed["votes"].tolist() == [1, 1, 2, 2, 0, 0]
    assert agreed["agreed"].tolist() == [False, False, True, True, False, False]
    assert agreed["mean_rank"].iloc[0] == pytest.approx((1 + 4 + 6) / 3)  # ranks of b0: 1 (a), 4 (b), 6 (c)
    thirds = third_ranks(scores, BLOCKS).set_index("criterion")
    assert thirds.loc["a"].tolist() == [1.5, 5.5, 3.5] and thirds.loc["c"].tolist() == [5.5, 3.5, 1.5]
    assert thirds.loc["mean", "middle"] == pytest.approx((5.5 + 5.5 + 3.5) / 3)


def test_pairwise_agreement_by_hand():
    scores = _scores(a=[1, 2, 3, 4, 5, 6], b=[6, 5, 4, 3, 2, 1], c=[2, 1, 3, 4, 5, 6])
    table = pairwise_agreement(scores, BLOCKS).set_index(["a", "b"])
    assert table.loc[("a", "b"), "spearman"] == pytest.approx(-1.0)
    assert table.loc[("a", "b"), "kendall_tau"] == pytest.approx(-1.0)
    # one adjacent swap in 6: rho = 1 - 6 * 2 / (6 * 35), tau = (14 - 1) / 15
    assert table.loc[("a", "c"), "spearman"] == pytest.approx(1 - 12 / 210)
    assert table.loc[("a", "c"), "kendall_tau"] == pytest.approx(13 / 15)
    assert (table["blocks"] == 6).all() and table["spearman_p"].between(0, 1).all()


def test_a_criterion_missing_a_block_is_refused():
    scores = _scores(a=[1, 2, 3, 4, 5, 6], b=[1, 2, 3, 4, 5, 6]).iloc[:-1]
    with pytest.raises(ValueError, match="criterion 'b' has no score for block b5"):
        consensus(scores, BLOCKS, 2, quorum=2)
