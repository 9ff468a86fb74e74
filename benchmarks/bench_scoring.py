"""Cost of the scoring criteria relative to plain U-Net forwards (issue: scoring engine).

Ratios printed (each sweep timed end to end through `run_sweep`: criterion set-up, every unit, persistence):

1. ablation sweep over all N units (`--units blocks`) / (N + 1) plain forwards on the same calibration batches
   (the naive cost: one unpruned forward plus one per unit);                                         goal <= 0.6
2. ablation sweep / the prefix-caching limit: one full forward plus, for every unit, the cost of the network
   from that unit's first step onward (per-step costs measured on the unpruned staged forward);       goal <= 1.10
3. taylor sweep (all units from the same backward passes) / one plain forward per calibration batch;  goal <= 3.5
   (also with gradient checkpointing, for information);
4. magnitude sweep on full-size SD-v1 (random weights), every `--units blocks` unit: seconds.        goal: a few

The ablation/taylor model is a mid-size SD-v1 topology (channels 64/128/256/256 with 32-channel attention heads,
32x32 latents, 77 text tokens of width 256), scored on synthetic calibration batches.
Timings use the process CPU clock on one thread by default, so that other jobs sharing the machine barely disturb
them (`--clock wall --threads N` for wall time).
Usage: python benchmarks/bench_scoring.py [--threads N] [--clock cpu|wall] [--batches 2] [--batch-size 2]
       [--sweeps 2] [--naive] [--skip-full] [--quick]
(`--quick`: toy width, a smoke test of the script only; its ratios mean little.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from prune_lab.backbones import build_architecture, walk
from prune_lab.backbones.unet.architectures import ARCHITECTURES
from prune_lab.backbones.unet.staged import StagedUNet
from prune_lab.scoring import (
    ScoringInputs,
    denoising_batches,
    noise_scheduler,
    run_sweep,
    score_units,
    synthetic_calibration,
)

#: Timer: CPU time of this process by default (robust on a shared machine; use one thread), or wall time.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]

#: SD-v1 topology at a fifth of the width, 32x32 latents, attention heads of 32 channels (SD-v1: 40).
MID = dict(
    ARCHITECTURES["sd-v1"],
    block_out_channels=(64, 128, 256, 256),
    attention_head_dim=(2, 4, 8, 8),
    cross_attention_dim=256,
    sample_size=32,
)
QUICK = dict(
    MID,
    block_out_channels=(16, 32, 64, 64),
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=8,
    sample_size=16,
)


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times)


def _sweep_time(inputs: ScoringInputs, units, criterion: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = CLOCK()
        run_sweep(inputs, units, [criterion], Path(tmp) / "s.csv", progress=False)
        return CLOCK() - start


def plain_forward_time(unet, batches, runs: int) -> float:
    """Median time of one unpruned forward over all calibration batches."""

    def forward():
        with torch.no_grad():
            for b in batches:
                unet(**b.inputs)

    forward()
    return _median_time(forward, runs)


def step_times(unet, batches, runs: int) -> tuple[float, list[float]]:
    """Median time of `prepare` and of every step of the staged forward, summed over the batches."""
    staged = StagedUNet(unet)
    prep, steps = [], []
    for _ in range(runs + 1):  # the first run warms up
        p, s = 0.0, [0.0] * len(staged.steps)
        with torch.no_grad():
            for b in batches:
                t0 = CLOCK()
                context, state = staged.prepare(**b.inputs)
                p += CLOCK() - t0
                for k, step in enumerate(staged.steps):
                    t0 = CLOCK()
                    state = step.run(unet, state, context)
                    s[k] += CLOCK() - t0
        prep.append(p)
        steps.append(s)
    prep, steps = prep[1:], steps[1:]
    return statistics.median(prep), [statistics.median(col) for col in zip(*steps)]


def prefix_limit(unet, graph, units, batches, runs: int) -> float:
    """One full forward + for every unit the network from its first step onward (the prefix-caching limit)."""
    prep, steps = step_times(unet, batches, runs)
    staged = StagedUNet(unet)
    suffix = [sum(steps[i:]) for i in range(len(steps))]
    return prep + sum(steps) + sum(suffix[staged.restart_index(graph, u.members)] for u in units)


def bench_mid(args) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(QUICK if args.quick else MID)).eval()
    graph = walk(unet)
    units = score_units(graph, "blocks")
    calib = synthetic_calibration(unet, samples=args.batches * args.batch_size, seed=0)
    batches = denoising_batches(calib, noise_scheduler(), timesteps=1, batch_size=args.batch_size, seed=0)
    inputs = ScoringInputs(unet, graph, batches, seed=0)
    plain = plain_forward_time(unet, batches, args.runs)
    print(
        f"model: SD-v1 topology, channels {unet.config.block_out_channels}, latent {unet.config.sample_size}, "
        f"{len(batches)} batch(es) of {args.batch_size}; N = {len(units)} units; threads {torch.get_num_threads()}, "
        f"{args.clock} clock"
    )
    print(f"plain forward (all batches): {plain:.3f} s")

    ablation = min(_sweep_time(inputs, units, "ablation") for _ in range(args.sweeps))
    limit = prefix_limit(unet, graph, units, batches, args.runs)
    print(
        f"ablation sweep: {ablation:.2f} s | (N+1) plain forwards: {(len(units) + 1) * plain:.2f} s | "
        f"prefix-caching limit: {limit:.2f} s"
    )
    print(f"RATIO ablation / (N+1) forwards = {ablation / ((len(units) + 1) * plain):.3f}   (goal <= 0.6)")
    print(f"RATIO ablation / prefix limit   = {ablation / limit:.3f}   (goal <= 1.10)")
    if args.naive:
        naive = _sweep_time(ScoringInputs(unet, graph, batches, options={"prefix_cache": False}), units, "ablation")
        print(
            f"  (naive ablation sweep, no prefix cache: {naive:.2f} s = {naive / ((len(units) + 1) * plain):.3f} "
            "x (N+1) forwards)"
        )

    taylor = min(_sweep_time(inputs, units, "taylor") for _ in range(args.sweeps))
    print(f"RATIO taylor / one forward per batch = {taylor / plain:.3f}   (goal <= 3.5; {taylor:.2f} s)")
    ckpt = _sweep_time(ScoringInputs(unet, graph, batches, options={"gradient_checkpointing": True}), units, "taylor")
    print(f"  (taylor with gradient checkpointing: {ckpt / plain:.3f} x)")


def bench_magnitude_full(args) -> None:
    start = CLOCK()
    unet = build_architecture("sd-v1")
    built = CLOCK() - start
    graph = walk(unet)
    inputs = ScoringInputs(unet, graph)
    for granularity in ("blocks", "transformer_layers", "stages"):
        units = score_units(graph, granularity)
        seconds = _sweep_time(inputs, units, "magnitude")
        print(
            f"magnitude on full-size sd-v1 ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M params), "
            f"--units {granularity} ({len(units)} units): {seconds:.2f} s   (model build {built:.1f} s, excluded)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see --clock)")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="cpu: process CPU time (default; other jobs on the machine barely disturb it), wall",
    )
    parser.add_argument("--batches", type=int, default=2, help="calibration batches")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="repeats of the forward timings (median)")
    parser.add_argument("--sweeps", type=int, default=1, help="repeats of each sweep (minimum)")
    parser.add_argument("--naive", action="store_true", help="also time the ablation sweep without prefix caching")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size magnitude timing")
    parser.add_argument("--quick", action="store_true", help="toy width: a smoke test of this script")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    bench_mid(args)
    if not args.skip_full and not args.quick:
        bench_magnitude_full(args)


if __name__ == "__main__":
    main()
