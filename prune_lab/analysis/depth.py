"""Where in depth the criteria place the removable blocks of a residual stack, and how their block rankings agree.

Large diffusion transformers are reported to keep their first and last blocks and to lose little without middle ones:
SANA-1.5 (Xie et al., 2025, §2.3) prunes the blocks whose input and output are most similar and finds them in the
middle of the stack; TinyFusion (Fang et al., 2024) learns which DiT layers to drop; ShortGPT (Men et al., 2024)
ranks LLM layers by the same block influence. These tables test that on a score table (one row per block and
criterion; higher importance = more important), from results only:

* :func:`depth_thirds`: first / middle / last third of the stack, by forward order (sizes differ by at most one);
* :func:`removable`: per criterion, its `k` least important blocks and which thirds they lie in;
* :func:`consensus`: per block, how many criteria put it among their `k` least important, its mean rank;
  a block is *agreed removable* when at least `quorum` criteria do;
* :func:`third_ranks`: per criterion, the mean importance rank (1 = most important) of each third;
* :func:`pairwise_agreement`: Spearman's rho and Kendall's tau between every two criteria's block rankings, with
  their two-sided p-values (scipy).
"""

from __future__ import annotations

import pandas as pd

THIRDS = ("first", "middle", "last")


def depth_thirds(blocks: list[str]) -> dict[str, str]:
    """Block name -> `first`, `middle` or `last` third of `blocks` (forward order); thirds differ in size by at most
    one, the middle one taking the remainder first (12 blocks: 4 / 4 / 4; 10: 3 / 4 / 3)."""
    n = len(blocks)
    edge = n // 3
    sizes = (edge, n - 2 * edge, edge)
    return {
        b: third
        for third, size, start in zip(THIRDS, sizes, (0, edge, n - edge))
        for b in blocks[start : start + size]
    }


def _ranked(scores: pd.DataFrame, blocks: list[str]) -> pd.DataFrame:
    """Rows of `blocks` only, with `rank` recomputed per criterion over them (1 = most important, ties: average) and
    the block's `depth` (0-based forward position) and `third`."""
    part = scores[scores["name"].isin(blocks)].copy()
    missing = {c: sorted(set(blocks) - set(p["name"])) for c, p in part.groupby("criterion")}
    if any(missing.values()):
        criterion, names = next((c, n) for c, n in missing.items() if n)
        raise ValueError(f"criterion {criterion!r} has no score for block {names[0]}")
    part["rank"] = part.groupby("criterion")["importance"].rank(ascending=False, method="average")
    part["depth"] = part["name"].map({b: i for i, b in enumerate(blocks)})
    part["third"] = part["name"].map(depth_thirds(blocks))
    return part


def removable(scores: pd.DataFrame, blocks: list[str], k: int) -> pd.DataFrame:
    """Per criterion: its `k` least important blocks (least first, as 1-based depths) and how many lie in each third.

    Args:
        scores: a score table (`criterion`, `name`, `importance`).
        blocks: the stack's block names in forward order.
        k: how many of the least important blocks count as removable.
    """
    rows = []
    for criterion, part in _ranked(scores, blocks).groupby("criterion", sort=False):
        least = part.sort_values(["importance", "depth"]).head(k)
        counts = least["third"].value_counts()
        rows.append(
            {
                "criterion": criterion,
                "removable": ", ".join(str(d + 1) for d in least["depth"]),
                **{third: int(counts.get(third, 0)) for third in THIRDS},
            }
        )
    return pd.DataFrame(rows)


def consensus(scores: pd.DataFrame, blocks: list[str], k: int, quorum: int) -> pd.DataFrame:
    """Per block (forward order): its third, `votes` (criteria that put it among their `k` least important), its
    `mean_rank` over criteria (1 = most important) and whether it is `agreed` removable (votes >= `quorum`)."""
    part = _ranked(scores, blocks)
    least = {c: set(p.sort_values(["importance", "depth"]).head(k)["name"]) for c, p in part.groupby("criterion")}
    votes = {b: sum(b in names for names in least.values()) for b in blocks}
    mean_rank = part.groupby("name")["rank"].mean()
    thirds = depth_thirds(blocks)
    return pd.DataFrame(
        {
            "block": [i + 1 for i in range(len(blocks))],
            "name": blocks,
            "third": [thirds[b] for b in blocks],
            "votes": [votes[b] for b in blocks],
            "mean_rank": [float(mean_rank[b]) for b in blocks],
            "agreed": [votes[b] >= quorum for b in blocks],
        }
    )


def third_ranks(scores: pd.DataFrame, blocks: list[str]) -> pd.DataFrame:
    """Per criterion (and `mean` over criteria): the mean importance rank of the blocks of each third (1 = most
    important; with n blocks a third of average importance has rank (n + 1) / 2)."""
    part = _ranked(scores, blocks)
    table = part.pivot_table(index="criterion", columns="third", values="rank", aggfunc="mean", sort=False)
    table = table[list(THIRDS)]
    table.loc["mean"] = table.mean()
    return table.reset_index().rename_axis(columns=None)


def pairwise_agreement(scores: pd.DataFrame, blocks: list[str]) -> pd.DataFrame:
    """Spearman's rho and Kendall's tau (with two-sided p-values) between every two criteria's importances of
    `blocks` (:func:`prune_lab.scoring.rank_agreement` on the blocks' rows; pairs in criterion name order)."""
    from ..scoring import rank_agreement

    columns = ["a", "b", "blocks", "spearman", "spearman_p", "kendall_tau", "kendall_p"]
    part = _ranked(scores, blocks).sort_values("criterion", kind="stable")
    if part["criterion"].nunique() < 2:
        return pd.DataFrame(columns=columns)
    return rank_agreement([("blocks", part)], p_values=True).rename(columns={"units": "blocks"})[columns]
