"""Start-up cost of the `prunelab` command line (issue 13: a thin, fast CLI).

Wall times of fresh processes: the fastest of `--runs` rounds (each round runs every command once, interleaved, after
one untimed warm-up that fills the bytecode caches; the minimum is the least noisy estimate of start-up cost on a
shared machine):

1. `prunelab --help`: building the parser must import neither torch nor diffusers;       goal: < 1 s
2. `prunelab blocks --model sd-v1`: one command end to end (a meta U-Net, walked and printed);
3. `python -c "import torch, diffusers"`: the bare imports;
4. the same plus `from diffusers import UNet2DConditionModel` (diffusers loads its models lazily): what `blocks`
   cannot avoid.                                                                            goal: 2 - 4 < 1 s

Usage: python benchmarks/bench_cli.py [--runs 3]
"""

from __future__ import annotations

import argparse
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


def wall_seconds(argv: list[str]) -> float:
    """Wall time of one fresh process running `argv`."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def fastest(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """The fastest of `runs` interleaved rounds per command (one untimed warm-up round first)."""
    for argv in commands.values():
        wall_seconds(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(wall_seconds(argv))
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (the fastest is reported)")
    args = parser.parse_args()
    seconds = fastest(COMMANDS, args.runs)
    for name, value in seconds.items():
        print(f"{value:7.2f} s  {name}")
    help_s, blocks_s, bare_s, unet_s = seconds.values()
    print(f"--help: {help_s:.2f} s (goal < 1 s); {help_s / bare_s:.2f}x the bare torch + diffusers import")
    for name, base in (("bare torch + diffusers import", bare_s), ("unavoidable imports (+ the U-Net class)", unet_s)):
        print(f"blocks - {name}: {blocks_s - base:+.2f} s, ratio {blocks_s / base:.2f}x")
    print("goal: blocks within 1 s of its unavoidable imports")


if __name__ == "__main__":
    main()
