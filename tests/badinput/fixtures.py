"""Valid inputs shared by every bad-input case, built once per session on first use (read-only for the cases).

Everything comes from the shipped `demo` model through the CLI (`prunelab demo-data`, `plan`, `apply`, `score`,
`cache-latents`, `distill`), so a case differs from a run that works in one thing only: its bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

#: Small, fast settings appended to the commands that would otherwise run BK-SDM sizes.
DISTILL_TINY = (
    "--max-steps",
    "1",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--resolution",
    "32",
    "--num-workers",
    "0",
    "--no-progress",
    "--checkpoint-every",
    "0",
)


def cli(*argv: str) -> None:
    """Run `prunelab ARGV` in this process; a fixture that fails to build is a broken suite, not a finding."""
    from prune_lab.cli import main

    rc = main([str(a) for a in argv])
    if rc:
        raise RuntimeError(f"building a fixture failed: prunelab {' '.join(map(str, argv))} -> {rc}")


def demo_dir(root: Path) -> Path:
    from prune_lab.models import BUILTIN_PIPELINES

    return BUILTIN_PIPELINES["demo"]


def data(root: Path) -> Path:
    cli("demo-data", "--out", root / "data", "-n", "8")
    return root / "data"


def prompts_txt(root: Path) -> Path:
    path = root / "prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return path


def prompts_csv(root: Path) -> Path:
    path = root / "prompts.csv"
    path.write_text("file_name,text\n000000.png,a red circle\n000001.png,a blue square\n")
    return path


def plan(root: Path) -> Path:
    cli("plan", "--model", "demo", "--preset", "bk-small", "-o", root / "plan.json")
    return root / "plan.json"


def export(root: Path, fx) -> Path:
    cli("apply", "--model", "demo", "--keep", fx["plan"], "--out", root / "export")
    return root / "export"


def compact(root: Path) -> Path:
    """An export in the compact format (weights + marker): a plan with no plain diffusers config."""
    from prune_lab import apply_plan, load_unet, make_plan, walk

    loaded = load_unet("demo")
    graph = walk(loaded.unet)
    gone = {"up_blocks.2.attentions.1", *graph.descendants("up_blocks.2.attentions.1")}
    keep = [u.name for u in graph.atoms() if u.name not in gone]
    apply_plan(loaded, make_plan(loaded.unet, keep, source="demo"), root / "compact")
    assert (root / "compact" / "unet" / "prune_lab_pruned.json").is_file()
    return root / "compact"


def scores(root: Path) -> Path:
    cli("score", "--model", "demo", "--criterion", "magnitude", "-o", root / "scores.csv", "--quiet")
    return root / "scores.csv"


def scores_json(root: Path, fx) -> Path:
    return fx["scores"].with_suffix(".json")


def scores_multi(root: Path, fx) -> Path:
    """Two criteria in one file (magnitude, and `taylor` with the importances reversed)."""
    df = pd.read_csv(fx["scores"])
    other = df.assign(criterion="taylor", importance=df["importance"].to_numpy()[::-1])
    path = root / "scores_multi.csv"
    pd.concat([df, other]).to_csv(path, index=False)
    return path


def coco(root: Path) -> Path:
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (1, 2, 3)]
    anns = [{"id": 10 + i, "image_id": i, "caption": f"a photo number {i}"} for i in (1, 2, 3)]
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def calib(root: Path) -> Path:
    from prune_lab import load_unet
    from prune_lab.scoring import save_calibration, synthetic_calibration

    unet = load_unet("demo", meta=True).unet
    return save_calibration(synthetic_calibration(unet, samples=2), root / "calib.safetensors")


def cache(root: Path, fx) -> Path:
    cli(
        "cache-latents",
        "--model",
        fx["demo"],
        "--data",
        fx["data"],
        "--out",
        root / "cache",
        "--resolution",
        "32",
        "--dtype",
        "fp32",
        "--num-workers",
        "0",
    )
    return root / "cache"


def ckpt(root: Path, fx) -> Path:
    """A real distill checkpoint folder (accelerate `save_state`), for the planted-pickle cases."""
    out = root / "distill-ckpt"
    cli(
        "distill",
        "--teacher",
        "demo",
        "--student",
        fx["export"],
        "--data",
        fx["data"],
        "--out",
        out,
        *DISTILL_TINY[:-2],
        "--checkpoint-every",
        "1",
    )
    found = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert found, f"no checkpoint under {out}"
    return found[-1]


BUILDERS = {
    "demo": demo_dir,
    "data": data,
    "prompts_txt": prompts_txt,
    "prompts_csv": prompts_csv,
    "plan": plan,
    "export": export,
    "compact": compact,
    "scores": scores,
    "scores_json": scores_json,
    "scores_multi": scores_multi,
    "coco": coco,
    "calib": calib,
    "cache": cache,
    "ckpt": ckpt,
}


class Fixtures:
    """`fx[name]`: the path of a shared valid input, built under `root` the first time it is asked for."""

    def __init__(self, root: Path) -> None:
        self.root, self.built = Path(root), {}

    def __contains__(self, key: str) -> bool:
        return key in BUILDERS

    def __getitem__(self, key: str) -> Path:
        if key not in self.built:
            build = BUILDERS[key]
            takes_fx = build.__code__.co_argcount == 2
            self.built[key] = Path(build(self.root, self) if takes_fx else build(self.root))
        return self.built[key]
