"""The compatibility table of the README (issue 16): `prunelab check` on every preset's export, measured.

Builds the test suite's tiny pipelines (SD-v1 and SDXL topology, `tests/conftest.py`), exports each preset (bk-base,
bk-small, bk-tiny, mid-removal on SD-v1; ssd-1b, vega on SDXL) and a plan with substitutes and a dropped skip (a
`load_pruned` student), runs every registered check on each, and prints a Markdown table (checks x students) with
the reasons as numbered notes. `--readme README.md` replaces the table between the `<!-- compat-table -->` markers.

Usage: python benchmarks/compat_table.py [--compile-backend aot_eager] [--readme README.md | --only CHECK ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

#: Students of the table: column label -> (topology, preset or "lone").
STUDENTS = {
    "bk-base": ("sd", "bk-base"),
    "bk-small": ("sd", "bk-small"),
    "bk-tiny": ("sd", "bk-tiny"),
    "mid-removal": ("sd", "mid-removal"),
    "ssd-1b (SDXL)": ("sdxl", "ssd-1b"),
    "vega (SDXL)": ("sdxl", "vega"),
    "substitutes + dropped skip": ("sd", "lone"),
}
#: The plan no stock config describes: two lone resnets (substitutes), a lone attention, a dropped skip.
LONE = {
    "down_blocks.1.resnets.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.1.transformer_blocks.0",
    "skip:up_blocks.2.resnets.0",
    "up_blocks.3.resnets.1",
}
SUBSTITUTES = {"down_blocks.1.resnets.0": "interpolate", "up_blocks.3.resnets.1": "interpolate"}
MARK = "<!-- compat-table -->"


def teachers(root: Path) -> dict[str, Path]:
    from conftest import build_tiny_pipeline, build_tiny_sdxl_pipeline

    paths = {"sd": root / "sd", "sdxl": root / "sdxl"}
    build_tiny_pipeline().save_pretrained(paths["sd"])
    build_tiny_sdxl_pipeline().save_pretrained(paths["sdxl"])
    return paths


def export(teacher: Path, preset: str, out: Path) -> Path:
    from prune_lab import apply_plan, create_plan, load_unet, make_plan, walk

    loaded = load_unet(teacher)
    if preset == "lone":
        keep = {u.name for u in walk(loaded.unet).atoms()} - LONE
        plan = make_plan(loaded.unet, keep, source=str(teacher), actions=SUBSTITUTES)
    else:
        plan = create_plan(loaded.unet, preset, source=str(teacher))
    apply_plan(loaded, plan, out)
    return out


def measure(root: Path, only: list[str] | None = None) -> dict[str, dict[str, tuple[str, str]]]:
    """Column label -> check -> (status, reason); `only`: these checks (rows) alone."""
    from prune_lab.compat import open_export, run_checks

    paths, table = teachers(root), {}
    for label, (topology, preset) in STUDENTS.items():
        start = time.perf_counter()
        folder = export(paths[topology], preset, root / label.split()[0])
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_checks(open_export(folder), Path(tmp), only)
        table[label] = {r.check: (r.status, r.reason) for r in rows.itertuples()}
        print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return table


def markdown(table: dict[str, dict[str, tuple[str, str]]], backend: str) -> str:
    notes: dict[str, int] = {}

    def cell(status: str, reason: str) -> str:
        if status == "ok":
            return "ok"
        number = notes.setdefault(reason, len(notes) + 1)
        return f"{'n/a' if status == 'not applicable' else '**fails**'} ({number})"

    checks = list(next(iter(table.values())))
    lines = ["| check | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for check in checks:
        name = f"{check} ({backend})" if check == "torch-compile" else check
        lines.append(f"| {name} | " + " | ".join(cell(*table[s][check]) for s in table) + " |")
    lines += ["", *[f"({n}) {reason}" for reason, n in notes.items()]]
    return "\n".join(lines)


def replace_section(readme: Path, text: str) -> None:
    from prune_lab.runtime.atomic import write_text

    parts = readme.read_text().split(MARK)
    if len(parts) != 3:
        raise ValueError(f"{readme} needs exactly two {MARK} lines around the table")
    write_text(readme, f"{parts[0]}{MARK}\n{text}\n{MARK}{parts[2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile row")
    parser.add_argument("--readme", type=Path, help="README.md whose table (between the markers) to replace")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help="measure these rows alone (not with --readme)")
    args = parser.parse_args()
    if args.only and args.readme:
        parser.error("--only measures some rows; --readme replaces the whole table: use one of them")
    import torch

    from prune_lab.compat import runtime_checks

    torch.set_num_threads(1)
    runtime_checks.COMPILE_BACKEND = args.compile_backend
    with tempfile.TemporaryDirectory() as root:
        text = markdown(measure(Path(root), args.only), args.compile_backend)
    print(text)
    if args.readme:
        replace_section(args.readme, text)


if __name__ == "__main__":
    main()
