"""`prunelab plan`: a plan from a preset, the best plan for a budget, or the whole Pareto front."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.budget import RESOURCES, parse_budget
from ..runtime.dtypes import DTYPE_NAMES, canonical_dtype
from ..runtime.tables import FORMATS, render
from .apply import params_m, plan_from_args
from .common import PRESET_HELP, add_model_arg, check_device, check_file, out_path
from .types import device, non_negative_int, positive_int

if TYPE_CHECKING:
    import pandas as pd

    from ..search import SearchResult


# ------------------------------------------------------------------------------------------------- --preset
def _preset_plan(args: argparse.Namespace) -> int:
    from ..backbones import build_student
    from ..models import load_unet

    check_file("-o", args.out)
    loaded, plan = plan_from_args(args, lambda: load_unet(args.model, meta=True))
    unet = loaded.unet
    compacted = build_student(unet, plan)  # validates the plan before anything is written
    plan.meta["student_params"] = sum(p.numel() for p in compacted.student.parameters())
    plan.meta["expressible"] = compacted.expressible
    plan.save(args.out)
    print(
        f"wrote {args.out}: {len(plan.keep)} units kept, {len(compacted.resolution.removed)} removed, "
        f"U-Net params {params_m(plan.meta['student_params'])}M "
        f"({'plain diffusers config' if compacted.expressible else 'needs prune_lab.load_pruned'})"
    )
    return 0


# -------------------------------------------------------------------------------------------- --target / --pareto
def _latency(args: argparse.Namespace, resource: str):
    from ..report import LatencySettings

    if not RESOURCES.get(resource).measured:
        return None
    check_device(args.device)
    dtype = canonical_dtype(args.dtype)
    return LatencySettings(device=args.device, dtype=dtype, runs=args.runs, warmup=args.warmup, progress=True)


def _problem(args: argparse.Namespace, resource: str):
    from ..models import load_unet
    from ..scoring import read_scores
    from ..search import build_problem

    if not args.scores:
        raise ValueError("--target and --pareto need --scores scores.csv (write one with `prunelab score`)")
    scores = read_scores(args.scores)
    unet = load_unet(args.model, meta=True).unet
    return build_problem(
        unet,
        scores,
        criterion=args.criterion,
        keep_units=args.keep_units or (),
        never_remove=args.never_remove or (),
        expressible=args.expressible,
        source=args.model,
        latency=_latency(args, resource),
        where=str(args.scores),
    )


def cost_table(result: SearchResult) -> pd.DataFrame:
    """One row per resource: unpruned, predicted, % kept, and the budget's bound on its own row."""
    import pandas as pd

    rows = []
    for name, base in result.base.items():
        spec, value = RESOURCES.get(name), result.predicted[name]
        bound = spec.format(result.limit) if name == result.budget.resource else ""
        rows.append(
            {
                "resource": name,
                "unpruned": spec.format(base),
                "plan": spec.format(value),
                "kept_pct": round(100 * value / base, 1),
                "target": bound,
            }
        )
    return pd.DataFrame(rows)


def _labels(result: SearchResult, graph) -> list[str]:
    return ["+".join(graph[m].label for m in move.split("+")) for move in result.moves]


def _search_plan(args: argparse.Namespace) -> int:
    from ..search import DEFAULT_STRATEGY, get_strategy, search

    budget = parse_budget(args.target)  # bad budgets and strategies fail before anything is loaded
    check_file("-o", args.out)
    strategy = get_strategy(args.strategy or DEFAULT_STRATEGY).name
    problem = _problem(args, budget.resource)
    result = search(problem, budget, strategy)
    result.plan.save(args.out)
    lost, total = result.importance_lost, result.importance_total
    print(
        f"wrote {args.out}: {strategy} search on {problem.importance.criterion!r} scores for {budget.text}; "
        f"{len(result.removed)} units removed in {len(result.moves)} moves "
        f"({'plain diffusers config' if result.expressible else 'needs prune_lab.load_pruned'})"
    )
    print(render(cost_table(result), args.format))
    share = f" ({100 * lost / total:.1f}% of {total:.4g})" if total else ""
    print(f"importance lost: {lost:.4g}{share}")
    print("moves: " + (", ".join(_labels(result, problem.graph)) or "(none: the unpruned model meets the budget)"))
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from ..runtime.atomic import write_csv
    from ..search import pareto_front
    from ..search.plot import plot_front

    check_file("-o", args.out)
    problem = _problem(args, args.resource)
    df = pareto_front(problem, args.resource, exact=not args.predicted, progress=True)
    plot = args.plot or args.out.with_suffix(".png")
    plot_front(df, args.resource, plot)
    write_csv(args.out, df)
    shown = ["source", "step", f"{args.resource}_pct", "importance_lost", "removed_count", "expressible"]
    marked = df[df["on_front"] | df["source"].str.startswith("preset:")]
    print(render(marked[shown], args.format))
    print(f"wrote {args.out} ({len(df)} plans, {int(df['on_front'].sum())} on the front) and {plot}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.preset is not None:
        return _preset_plan(args)
    return _search_plan(args) if args.target is not None else _pareto(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="write a plan.json: from a preset, or the best plan for a budget")
    add_model_arg(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help=PRESET_HELP)
    what.add_argument(
        "--target",
        metavar="RESOURCE=VALUE",
        help=f"budget: {', '.join(RESOURCES)} as a fraction of the unpruned model (params=0.5, macs=70%%) "
        "or absolute (params=480M, macs=200G, latency=120ms)",
    )
    what.add_argument("--pareto", action="store_true", help="write every searched plan (CSV) and the front (plot)")
    p.add_argument("--scores", help="scores CSV/JSON from `prunelab score` (SDXL presets: which layers to keep)")
    p.add_argument("--criterion", help="which criterion of the scores file (needed when it holds several)")
    p.add_argument(
        "--strategy",
        help="search strategy for --target: a registered one (default: exact, the least importance lost under the "
        "budget; greedy, topk; an unknown name lists them)",
    )
    p.add_argument("--expressible", action="store_true", help="only plans that export as a plain diffusers U-Net")
    p.add_argument("--keep-units", nargs="+", metavar="NAME", help="units (and all inside them) never removed")
    p.add_argument(
        "--never-remove", nargs="+", metavar="KIND_OR_PATTERN", help="kinds (attention, skip ...) or name patterns"
    )
    p.add_argument("-o", "--out", required=True, type=out_path, help="plan file to write (--pareto: the CSV)")
    p.add_argument("--resource", choices=RESOURCES.names(), default="params", help="--pareto: the cost axis")
    p.add_argument("--plot", type=Path, help="--pareto: figure to write (default: the CSV's name, .png)")
    p.add_argument("--predicted", action="store_true", help="--pareto: cost model only, no exact count per plan")
    p.add_argument("--format", choices=FORMATS, default="table")
    g = p.add_argument_group("latency budgets (timed on real compute; meta models get fresh weights)")
    g.add_argument("--device", type=device, default="cpu", help="cpu or cuda")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    g.add_argument("--runs", type=positive_int, default=5, help="timed runs (after the warm-up)")
    g.add_argument("--warmup", type=non_negative_int, default=1, help="untimed warm-up runs")
    p.set_defaults(func=cmd_plan)
