"""Cost against quality of pruning plans: presets and budgeted-search plans, their compact students' params and
MACs (:mod:`prune_lab.report`), output error against the teacher and, optionally, caption accuracy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn as nn

from ..backbones import build_student, create_plan
from ..plan import Plan, expand_keep
from ..report import profile_unet
from ..scoring import DenoisingBatch
from ..search import build_problem, mark_front, parse_budget, search
from ..units import Graph


def tradeoff_plans(
    unet: nn.Module,
    *,
    presets: Sequence[str] = (),
    scores: pd.DataFrame | None = None,
    targets: Sequence[str] = (),
    criterion: str | None = None,
    strategy: str | None = None,
    source: str = "",
) -> dict[str, Plan]:
    """Plan name -> plan: each preset (:func:`prune_lab.backbones.create_plan`), then the plan the budgeted search
    (:func:`prune_lab.search.search`) finds on `scores` for each target (``params=0.6``, ``macs=70%`` ...).

    Raises:
        ValueError: a preset that does not fit the model, targets without scores, an infeasible target.
    """
    plans = {name: create_plan(unet, name, source=source) for name in presets}
    if targets:
        if scores is None:
            raise ValueError("searched plans need a score table: pass scores=")
        problem = build_problem(unet, scores, criterion=criterion, source=source)
        chosen = {"strategy": strategy} if strategy else {}  # None: the search's default strategy
        plans.update({f"search {t}": search(problem, parse_budget(t), **chosen).plan for t in targets})
    return plans


@torch.no_grad()
def output_mse(model: nn.Module, batches: list[DenoisingBatch], reference: list[torch.Tensor]) -> float:
    """E_{x,t} mean_elements (ε_model − ε_ref)²: the ablation criterion's output loss (LAPTOP-Diff) for a whole model.

    Args:
        batches: U-Net inputs; reference: the reference model's outputs on them (one ``[B, C, h, w]`` per batch).
    """
    total, count = 0.0, 0
    for batch, ref in zip(batches, reference):
        out = model(**batch.inputs).sample
        total += float((out.double() - ref.double()).pow(2).flatten(1).mean(dim=1).sum())
        count += out.shape[0]
    return total / count


def with_unet(pipe, unet: nn.Module):
    """A pipeline of `pipe`'s class sharing all its modules but the U-Net."""
    extra = {"requires_safety_checker": False} if "safety_checker" in pipe.components else {}
    copy = type(pipe)(**{**pipe.components, "unet": unet}, **extra)
    copy.set_progress_bar_config(disable=True)
    return copy


def _removed_blocks(compacted) -> int:
    """Residual and attention blocks a student lacks (skips and transformer layers go with their blocks)."""
    if compacted is None:
        return 0
    graph = compacted.resolution.graph
    return sum(graph[name].kind in ("resnet", "attention") for name in compacted.resolution.removed)


def plan_summary(plans: Mapping[str, Plan], graph: Graph) -> pd.DataFrame:
    """One row per plan: `plan`, `kind` (preset / search), `removed_blocks` and their paper labels (`removed`)."""
    blocks = graph.of_kind("resnet", "attention")
    rows = []
    for name, plan in plans.items():
        kept = expand_keep(graph, plan.keep)
        removed = [u.label for u in blocks if u.name not in kept]
        rows.append(
            {"plan": name, "kind": _plan_kind(plan), "removed_blocks": len(removed), "removed": " ".join(removed)}
        )
    return pd.DataFrame(rows)


def _plan_kind(plan: Plan | None) -> str:
    if plan is None:
        return "teacher"
    return "search" if "search" in plan.meta else "preset"


def plan_tradeoffs(
    pipe,
    plans: Mapping[str, Plan],
    batches: list[DenoisingBatch],
    *,
    quality: Callable[[object], Mapping[str, float]] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Cost and quality of the teacher and of each plan's compact student (:func:`prune_lab.backbones.build_student`).

    Args:
        pipe: the teacher's pipeline (its `.unet` is the teacher).
        plans: name -> plan (:func:`tradeoff_plans`).
        batches: inputs of the output error against the teacher.
        quality: `quality(pipeline) -> {column: value}` run on a pipeline sharing everything but the U-Net
            (e.g. :func:`prune_lab.demo.inputs.caption_accuracy`).

    Returns:
        One row per model: `plan`, `kind` (teacher / preset / search), `removed_blocks`, `expressible`, `params_M`,
        `params_pct`, `macs_G`, `macs_pct` (thop convention, one step, :mod:`prune_lab.report`), `output_mse`, then
        the quality columns.
    """
    from tqdm.auto import tqdm

    teacher, latent = pipe.unet, pipe.unet.config.sample_size
    base = profile_unet(teacher, latent)
    with torch.no_grad():
        reference = [teacher(**b.inputs).sample for b in batches]
    rows = []
    for name, plan in tqdm([("teacher", None), *plans.items()], desc="plans", disable=not progress):
        compacted = build_student(teacher, plan) if plan is not None else None
        model = compacted.student if compacted is not None else teacher
        cost = profile_unet(model, latent)
        row = {
            "plan": name,
            "kind": _plan_kind(plan),
            "removed_blocks": _removed_blocks(compacted),
            "expressible": compacted.expressible if compacted is not None else True,
            "params_M": cost.params / 1e6,
            "params_pct": 100 * cost.params / base.params,
            "macs_G": cost.macs / 1e9,
            "macs_pct": 100 * cost.macs / base.macs,
            "output_mse": output_mse(model, batches, reference),
        }
        if quality is not None:
            row.update(quality(with_unet(pipe, model)))
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(df: pd.DataFrame, cost: str, quality: str, higher_is_better: bool = True) -> pd.Series:
    """True for the rows no other row beats on both `cost` (lower is better) and `quality`."""
    loss = -df[quality] if higher_is_better else df[quality]
    return mark_front(df.assign(importance_lost=loss), cost)
