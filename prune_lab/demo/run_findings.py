"""The demo job's findings on a stack of blocks (`demo-dit`): which blocks the criteria agree are removable (first /
middle / last third), how their block rankings agree, and the hypotheses fixed before the run, checked by code.

The rules and hypotheses (:data:`RULES`, :data:`HYPOTHESES`) were written down and committed
(``reports/demo-dit/PLAN.md``) before the full run; the tables come from :mod:`prune_lab.analysis.depth`.
"""

from __future__ import annotations

import math

import pandas as pd

from ..analysis.depth import consensus, pairwise_agreement, removable, third_ranks
from ..runtime.tables import render

#: How the findings read the scores (fixed before the run): a criterion's removable blocks are its `removable`
#: fraction of least important blocks (rounded: 4 of 12); a block is agreed removable when more than half of the
#: criteria count it removable.
RULES = {"removable": 1 / 3}


def settings(blocks: int, criteria: int) -> tuple[int, int]:
    """`(k, quorum)` for `blocks` blocks and `criteria` criteria: k = round(blocks / 3), quorum = criteria // 2 + 1."""
    return max(1, round(blocks * RULES["removable"])), criteria // 2 + 1


def stack_blocks(units: pd.DataFrame) -> list[str]:
    """The `block` units of the walk in forward order (empty for a U-Net, whose units are resnets and attentions)."""
    part = units[units["kind"] == "block"]
    return list(part.sort_values("order")["name"]) if "order" in part else list(part["name"])


def _spearman(agreement: pd.DataFrame, a: str, b: str) -> float:
    row = agreement[((agreement.a == a) & (agreement.b == b)) | ((agreement.a == b) & (agreement.b == a))]
    return float(row["spearman"].iloc[0]) if len(row) else float("nan")


def check_hypotheses(table: pd.DataFrame, thirds: pd.DataFrame, agreement: pd.DataFrame, plan_thirds: dict) -> list:
    """`(hypothesis, measured, holds)` for each of :data:`HYPOTHESES`, from the findings tables."""
    agreed = table[table["agreed"]]
    middle = int((agreed["third"] == "middle").sum())
    mean = thirds.set_index("criterion").loc["mean"]
    others = [c for c in set(agreement.a) | set(agreement.b) if c != "magnitude"]
    magnitude = [abs(_spearman(agreement, "magnitude", c)) for c in others]
    sim_abl = _spearman(agreement, "similarity", "ablation")
    first_rank = float(table["mean_rank"].iloc[0])
    return [
        (
            HYPOTHESES[0],
            f"{len(agreed)} agreed removable, {middle} of them in the middle third",
            len(agreed) > 0 and middle > len(agreed) / 2,
        ),
        (
            HYPOTHESES[1],
            f"mean rank by third: first {mean['first']:.2f}, middle {mean['middle']:.2f}, last {mean['last']:.2f}",
            mean["middle"] > max(mean["first"], mean["last"]),
        ),
        (HYPOTHESES[2], f"block 1's mean rank {first_rank:.2f}", first_rank <= 3),
        (HYPOTHESES[3], f"Spearman similarity vs ablation {sim_abl:+.2f}", sim_abl >= 0.5),
        (
            HYPOTHESES[4],
            "largest absolute Spearman of magnitude with another criterion "
            + (f"{max(magnitude):.2f}" if magnitude else "n/a"),
            bool(magnitude) and max(magnitude) < 0.3,
        ),
        (
            HYPOTHESES[5],
            ", ".join(f"{third} {n}" for third, n in plan_thirds.items()),
            plan_thirds.get("middle", 0) > sum(plan_thirds.values()) / 2,
        ),
    ]


#: The hypotheses of ``reports/demo-dit/PLAN.md``, in its order.
HYPOTHESES = (
    "H1: most agreed-removable blocks lie in the middle third",
    "H2: the middle third has the highest mean rank (least important) averaged over criteria",
    "H3: the first block is among the three most important (mean rank <= 3)",
    "H4: similarity agrees with ablation (Spearman >= 0.5)",
    "H5: magnitude agrees with no other criterion (absolute Spearman < 0.3 with each)",
    "H6: the ablation plan removes mostly middle-third blocks",
)


def findings(units: pd.DataFrame, scores: pd.DataFrame, plan: dict) -> dict | None:
    """The findings tables and checked hypotheses of a run whose units include a stack of blocks (None otherwise)."""
    blocks = stack_blocks(units)
    if len(blocks) < 3:
        return None
    k, quorum = settings(len(blocks), scores["criterion"].nunique())
    table, thirds = consensus(scores, blocks, k, quorum), third_ranks(scores, blocks)
    agreement = pairwise_agreement(scores, blocks)
    by_name = table.set_index("name")["third"]
    removed = [n for n in plan.get("removed", []) if n in by_name.index]
    plan_thirds = {t: int((by_name[removed] == t).sum()) for t in ("first", "middle", "last")}
    return {
        "k": k,
        "quorum": quorum,
        "removable": removable(scores, blocks, k),
        "consensus": table,
        "thirds": thirds,
        "agreement": agreement,
        "plan_thirds": plan_thirds,
        "plan_removed": [int(table.set_index("name").loc[n, "block"]) for n in removed],
        "hypotheses": check_hypotheses(table, thirds, agreement, plan_thirds),
    }


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    return render(df.round(digits), "markdown")


def findings_section(found: dict) -> list[str]:
    """The report's Markdown lines for :func:`findings`."""
    agreed = found["consensus"][found["consensus"]["agreed"]]
    verdicts = pd.DataFrame(found["hypotheses"], columns=["hypothesis (fixed before the run)", "measured", "holds"])
    mean_rho = found["agreement"]["spearman"].mean()
    return [
        "## Findings: which blocks are removable, and do the criteria agree",
        "",
        f"Rules and hypotheses fixed before the run (`reports/demo-dit/PLAN.md`): a criterion's removable blocks are "
        f"its {found['k']} least important; a block is agreed removable when at least {found['quorum']} of the "
        f"{found['agreement'][['a', 'b']].stack().nunique()} criteria count it removable. Thirds by depth "
        "(block 1 = first after the embeddings). Every number below is computed from the scores by "
        "`prune_lab.analysis.depth` and `prune_lab.demo.run_findings`.",
        "",
        "Agreed removable: "
        + (", ".join(f"block {b} ({t})" for b, t in zip(agreed["block"], agreed["third"])) or "none")
        + f". The plan removed blocks {', '.join(map(str, found['plan_removed'])) or 'none'}.",
        "",
        "Each criterion's removable blocks (least important first) and their thirds:",
        "",
        _md(found["removable"]),
        "",
        "Per block: votes (criteria counting it removable), mean importance rank over criteria (1 = most important):",
        "",
        _md(found["consensus"].drop(columns="name"), 2),
        "",
        "Mean importance rank of each third, per criterion (a third of average importance has rank "
        f"{(len(found['consensus']) + 1) / 2:g}):",
        "",
        _md(found["thirds"], 2),
        "",
        f"Rank agreement between criteria over the blocks (mean Spearman {mean_rho:+.2f}; p-values two-sided, scipy):",
        "",
        _md(found["agreement"], 3),
        "",
        _md(verdicts.assign(holds=["yes" if h else "no" for h in verdicts["holds"]])),
    ]


def findings_record(found: dict | None) -> dict:
    """JSON-ready findings for ``run.json`` (empty when there are none)."""
    if found is None:
        return {}

    def records(df: pd.DataFrame) -> list[dict]:
        return [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")
        ]

    return {
        "findings": {
            "k": found["k"],
            "quorum": found["quorum"],
            "consensus": records(found["consensus"]),
            "thirds": records(found["thirds"]),
            "agreement": records(found["agreement"]),
            "plan_removed": found["plan_removed"],
            "hypotheses": [{"hypothesis": h, "measured": m, "holds": bool(v)} for h, m, v in found["hypotheses"]],
        }
    }
