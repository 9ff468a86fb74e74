"""Cost of `prunelab report --per-unit` relative to one plain U-Net forward (issue: report).

The per-unit report is one profiled forward on `meta` tensors (thop hooks + the attention counter + module
tracking) plus the walk and the table. Two ratios, both medians of `--runs` timings after one warm-up:

1. per-unit report / plain forward with real weights on CPU (fp32, batch 1, the thop-convention inputs): what
   a user pays for the report compared with running the model once;                              goal: < 1x
2. per-unit report / plain forward on `meta` tensors: the bookkeeping overhead of counting in the same
   structure-only setting (no arithmetic in either).                                             goal: small

Usage: python benchmarks/bench_report.py [--model sd-v1] [--runs 3] [--threads N] [--quick]
(`--quick`: a toy-width SD-v1 topology; a smoke test of the script.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from prune_lab.backbones.unet.architectures import ARCHITECTURES
from prune_lab.report import report, unet_call
from prune_lab.runtime.loading import LoadedModel

QUICK = dict(
    ARCHITECTURES["sd-v1"],
    block_out_channels=(16, 32, 64, 64),
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=8,
    sample_size=16,
)


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(config: dict, meta: bool) -> UNet2DConditionModel:
    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel(**config).eval()
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-v1", choices=list(ARCHITECTURES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = QUICK if args.quick else ARCHITECTURES[args.model]
    name = "quick" if args.quick else args.model
    latent = config["sample_size"]

    meta = build(config, meta=True)
    per_unit = median_seconds(lambda: report(LoadedModel(meta, name, "unet"), per_unit=True), args.runs)
    fn, meta_args = unet_call(meta, latent)
    with torch.no_grad():
        meta_forward = median_seconds(lambda: fn(meta, *meta_args), args.runs)
    real = build(config, meta=False)
    fn, cpu_args = unet_call(real, latent, device="cpu")
    with torch.no_grad():
        cpu_forward = median_seconds(lambda: fn(real, *cpu_args), args.runs)

    print(
        f"{name} U-Net, latent {latent}x{latent}, batch 1, {torch.get_num_threads()} CPU threads, "
        f"median of {args.runs}"
    )
    print(f"  per-unit report (meta, one profiled forward): {per_unit:8.3f} s")
    print(f"  plain forward, real fp32 weights on CPU:      {cpu_forward:8.3f} s")
    print(f"  plain forward on meta tensors:                {meta_forward:8.3f} s")
    print(f"  ratio per-unit report / plain CPU forward:    {per_unit / cpu_forward:8.2f}x")
    print(f"  ratio per-unit report / plain meta forward:   {per_unit / meta_forward:8.2f}x")


if __name__ == "__main__":
    main()
