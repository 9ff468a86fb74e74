"""Width pruning vs block pruning at (about) equal parameters: MACs and CPU latency (issue: width baseline).

BK-SDM (Kim et al. 2023) argues that removing blocks buys more speed than removing channels at a similar parameter
count. This script measures it on the full-size architecture (random weights: structure and latency do not depend
on the values): the base U-Net, the `bk-small` student, and a uniform width plan from `prunelab width` (magnitude,
multiples of 8, GroupNorm groups and heads kept) at `--target` (default: half the parameters; `--match bk-small`
prunes to bk-small's own parameter count instead). Everything is measured by the reporter: thop-convention MACs,
MACs with attention, and the median of `--runs` timed U-Net steps after `--warmup` (batch 1, fp32, CPU).

Printed: the reporter's comparison table, then the ratios width / bk-small for MACs and latency (< 1 means the
width plan is cheaper), with the machine's load average before and after (the CPU is shared; latency is noisy).

Usage: python benchmarks/bench_width.py [--model sd-v1] [--target params=0.5 | --match bk-small] [--runs 5]
       [--threads N] [--quick]        (`--quick`: a toy-width SD-v1 topology; a smoke test of the script)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from diffusers import UNet2DConditionModel

from prune_lab.backbones import build_student, create_plan
from prune_lab.backbones.unet.architectures import ARCHITECTURES
from prune_lab.cli.formatting import render
from prune_lab.cli.report import paper_view
from prune_lab.models import load_unet
from prune_lab.report import LatencySettings, comparison_frame, report
from prune_lab.report.components import component_specs
from prune_lab.report.summary import profile_components
from prune_lab.runtime.loading import LoadedModel
from prune_lab.width import Target, width_prune

QUICK = dict(
    ARCHITECTURES["sd-v1"],
    block_out_channels=(32, 64, 128, 128),
    attention_head_dim=4,
    cross_attention_dim=32,
    norm_num_groups=8,
    sample_size=16,
)


def models(name: str, quick: bool) -> tuple[LoadedModel, LoadedModel]:
    """(structure-only base, real-weight base to prune)."""
    if not quick:
        return load_unet(name, meta=True), load_unet(name)
    with torch.device("meta"):
        meta = UNet2DConditionModel(**QUICK).eval()
    torch.manual_seed(0)
    return LoadedModel(meta, "quick", "unet"), LoadedModel(UNet2DConditionModel(**QUICK).eval(), "quick", "unet")


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-v1", choices=list(ARCHITECTURES))
    parser.add_argument("--preset", default="bk-small", help="the block plan to compare with")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--target", default="params=0.5", help="width budget (default params=0.5)")
    what.add_argument("--match", action="store_true", help="prune to the block preset's parameter count instead")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads while timing (default: torch's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    print(f"before: {load()}")
    meta, real = models(args.model, args.quick)
    plan = create_plan(meta.unet, args.preset, source=meta.source)
    block_params = sum(p.numel() for p in build_student(meta.unet, plan).student.parameters())
    base_params = sum(p.numel() for p in meta.unet.parameters())
    target = Target("params", block_params / base_params) if args.match else Target.parse(args.target)
    start = time.perf_counter()
    pruned = width_prune(real.unet, criterion="magnitude", target=target, round_to=args.round_to)
    print(
        f"width_prune to {target} took {time.perf_counter() - start:.1f} s (ratio {pruned.ratio:.4f}, "
        f"{pruned.params:,} params = {100 * pruned.params_fraction:.2f}%)"
    )

    latency = LatencySettings(runs=args.runs, warmup=args.warmup, threads=args.threads, progress=True)
    components = profile_components(component_specs(meta), meta.unet.config.sample_size)  # once, shared
    width_name = f"width {target}"
    kwargs = dict(latency=latency, components=components)
    reports = [
        report(meta, **kwargs),
        report(meta, plan=plan, variant=args.preset, **kwargs),
        report(LoadedModel(pruned.unet, meta.source, "unet"), variant=width_name, **kwargs),
    ]
    frame = comparison_frame(reports)
    print(render(paper_view(frame), "markdown"))
    rows = frame.set_index("variant")
    for column in ("unet_params_M", "unet_macs_G", "unet_macs_with_attention_G", "latency_median_ms"):
        ratio = rows.loc[width_name, column] / rows.loc[args.preset, column]
        print(
            f"{column}: width / {args.preset} = {ratio:.3f}  (width {rows.loc[width_name, column]:,.2f}, "
            f"{args.preset} {rows.loc[args.preset, column]:,.2f}, base {rows.loc['base', column]:,.2f})"
        )
    print(
        f"latency: {reports[0].latency.device}, {args.runs} runs after {args.warmup} warm-up, median; "
        f"IQR width {rows.loc[width_name, 'latency_iqr_ms']:.1f} ms, {args.preset} "
        f"{rows.loc[args.preset, 'latency_iqr_ms']:.1f} ms"
    )
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
