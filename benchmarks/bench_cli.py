"""Start-up cost of the `prunelab` command line (issue 13: a thin, fast CLI).

Wall times, each the median of `--runs` fresh processes (after one untimed warm-up that fills the bytecode caches):

1. `prunelab --help`: building the parser must import neither torch nor diffusers;       goal: < 1 s
2. `prunelab blocks --model sd-v1`: one command end to end (a meta U-Net, walked and printed);
3. `python -c "import torch, diffusers"`: the bare imports;
4. the same plus `from diffusers import UNet2DConditionModel` (diffusers loads its models lazily): what `blocks`
   cannot avoid.                                                                            goal: 2 - 4 < 1 s

Usage: python benchmarks/bench_cli.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "prunelab --help": [sys.executable, "-m", "prune_lab.cli", "--help"],
    "prunelab blocks --model sd-v1": [sys.executable, "-m", "prune_lab.cli", "blocks", "--model", "sd-v1"],
    "python -c 'import torch, diffusers'": [sys.executable, "-c", "import torch, diffusers"],
    "... + from diffusers import UNet2DConditionModel": [
        sys.executable,
        "-c",
        "import torch, diffusers; from diffusers import UNet2DConditionModel",
    ],
}


def wall_seconds(argv: list[str], runs: int) -> float:
    """Median wall time of `runs` fresh processes running `argv` (one untimed warm-up first)."""
    subprocess.run(argv, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed processes per command (median reported)")
    args = parser.parse_args()
    seconds = {name: wall_seconds(argv, args.runs) for name, argv in COMMANDS.items()}
    for name, value in seconds.items():
        print(f"{value:7.2f} s  {name}")
    help_s, blocks_s, bare_s, unet_s = seconds.values()
    print(f"--help: {help_s:.2f} s (goal < 1 s); {help_s / bare_s:.2f}x the bare torch + diffusers import")
    for name, base in (("bare torch + diffusers import", bare_s), ("unavoidable imports (+ the U-Net class)", unet_s)):
        print(f"blocks - {name}: {blocks_s - base:+.2f} s, ratio {blocks_s / base:.2f}x")
    print("goal: blocks within 1 s of its unavoidable imports")


if __name__ == "__main__":
    main()
