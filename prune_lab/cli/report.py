"""`prunelab report`: parameters, MACs and latency of a U-Net, a plan's student, or several side by side."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..runtime.dtypes import DTYPE_NAMES, canonical_dtype
from ..runtime.tables import FORMATS, render
from .common import MODEL_HELP, PRESET_HELP, check_device
from .types import device, non_negative_int, positive_int

if TYPE_CHECKING:
    import pandas as pd


def _latency_settings(args: argparse.Namespace):
    from ..report import LatencySettings

    if not args.latency:
        return None
    check_device(args.device)
    return LatencySettings(
        device=args.device,
        dtype=canonical_dtype(args.dtype),
        runs=args.runs,
        warmup=args.warmup,
        target=args.latency_of,
        threads=args.threads,
        progress=True,
    )


def _reports(args: argparse.Namespace) -> list:
    from ..backbones import create_plan
    from ..models import load_unet
    from ..plan import Plan
    from ..report import compare, report

    latency = _latency_settings(args)  # bad settings and plan files fail before the model is loaded
    plan = Plan.load(args.keep) if args.keep else None
    loaded = load_unet(args.model, meta=True)
    kwargs = dict(resolution=args.resolution, per_unit=args.per_unit, latency=latency)
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.compare:
        return compare(loaded, args.compare, **kwargs)
    if args.keep:
        return [report(loaded, plan=plan, variant=args.keep, **kwargs)]
    if args.preset:
        return [report(loaded, plan=create_plan(loaded.unet, args.preset, source=args.model), **kwargs)]
    return [report(loaded, **kwargs)]


def _cell(value, pct, first: bool) -> str:
    import pandas as pd

    if value is None or pd.isna(value):
        return ""
    if isinstance(value, float):
        text = f"{value:,.2f}"
    else:
        text = str(value)
    return text if first or pct is None or pd.isna(pct) else f"{text} ({pct:+.1f}%)"


def paper_view(df: pd.DataFrame) -> pd.DataFrame:
    """Metrics as rows, one column per variant, `value (change vs the first)`: BK-SDM Table 2 laid out."""
    import pandas as pd

    metrics = [c for c in df.columns if not c.endswith("_change_pct") and c not in ("model", "variant")]
    rows = []
    for metric in metrics:
        row = {"metric": metric}
        for i, (_, r) in enumerate(df.iterrows()):
            row[str(r["variant"])] = _cell(r[metric], r.get(f"{metric}_change_pct"), i == 0)
        rows.append(row)
    return pd.DataFrame(rows)


def _print_units(reports: list, fmt: str) -> None:
    import pandas as pd

    if fmt == "csv":  # one machine-readable table, raw counts included
        print()
        print(render(pd.concat([r.units.assign(variant=r.variant) for r in reports], ignore_index=True), fmt))
        return
    for r in reports:
        shown = r.units.drop(columns=["params", "macs", "attention_macs", "macs_with_attention"])
        print(f"\nper unit: {r.model} {r.variant} (top-level units + other = whole)")
        print(render(shown.astype(object).fillna(""), fmt))


def _print_text(reports: list, args: argparse.Namespace) -> None:
    from ..report import comparison_frame

    first = reports[0]
    if args.format == "table":
        print(first.convention())
    frame = comparison_frame(reports)
    print(render(frame if args.format == "csv" else paper_view(frame), args.format))
    if args.per_unit:
        _print_units(reports, args.format)


def cmd_report(args: argparse.Namespace) -> int:
    reports = _reports(args)
    if args.format == "json":
        records = [r.to_dict() for r in reports]
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2))
    else:
        _print_text(reports, args)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="parameters, MACs (thop and attention-inclusive) and latency")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--keep", help="report the student of this plan.json")
    what.add_argument("--preset", help=f"report the student of a preset: {PRESET_HELP}")
    what.add_argument(
        "--compare",
        nargs="+",
        metavar="PRESET_PLAN_OR_DIR",
        help="the model, then these presets / plan files / model folders (e.g. a `prunelab width` output), side by "
        "side with %% change",
    )
    p.add_argument(
        "--resolution", type=positive_int, help="image side in pixels (default: the model's, e.g. 512 for sd-v1)"
    )
    p.add_argument(
        "--steps", type=positive_int, help="denoising steps of a whole generation (default: the report's, 25)"
    )
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--per-unit", action="store_true", help="params and MACs of every unit (one profiled forward)")
    p.add_argument("--latency", action="store_true", help="also time the model (needs real compute)")
    p.add_argument("--device", type=device, default="cpu", help="latency device: cpu or cuda")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="latency dtype")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs (after the warm-up)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed warm-up runs")
    p.add_argument("--threads", type=positive_int, help="CPU threads while timing (default: torch's)")
    p.add_argument(
        "--latency-of",
        default="step",
        help="`step`: time one U-Net step (default); `generation`: whole generations (text encoder + steps x U-Net "
        "+ VAE decoder)",
    )
    p.set_defaults(func=cmd_report)
