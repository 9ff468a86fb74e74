"""Structure subcommands: `blocks`, `presets`, `apply` (`plan` lives in :mod:`prune_lab.cli.plan`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..runtime.tables import FORMATS, render
from .types import non_empty

#: Help of every `--preset` flag (the preset names live with the presets; listing them here would import torch).
PRESET_HELP = "a published architecture: `prunelab presets --model M` lists the ones that fit M, with their sizes"

MODEL_HELP = (
    "demo (the shipped trained miniature pipeline), a built-in architecture (sd-v1, sd-v2-base, sd-v2, sdxl: random "
    "weights), a pipeline or U-Net folder, an export of `prunelab apply`, or a hub id"
)

BLOCK_COLUMNS = [
    "name",
    "label",
    "kind",
    "stage",
    "level",
    "in_channels",
    "out_channels",
    "params",
    "removal",
    "producer",
    "consumer",
]


def out_path(text: str) -> Path:
    """Argparse `type=` of an output path: a non-empty string, as a Path."""
    return Path(non_empty(text))


def _under_a_file(path: Path, flag: str) -> None:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")


def check_out_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work, an output file path that is a folder or lies under a file (naming `flag`)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give the path of the file to write")
    _under_a_file(path, flag)
    return path


def check_figure_path(path: Path, flag: str) -> Path:
    """:func:`check_out_file`, and a suffix matplotlib can write (png, pdf, svg ...)."""
    from matplotlib.figure import Figure

    check_out_file(path, flag)
    formats = Figure().canvas.get_supported_filetypes()
    if not path.suffix:
        raise ValueError(f"{flag} {path} has no suffix; add one of .png, .pdf, .svg (the figure's format)")
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"{flag} {path}: matplotlib cannot write {path.suffix} figures; use one of {', '.join(sorted(formats))}"
        )
    return path


def check_out_dir(path: str | os.PathLike, flag: str, *, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Refuse, before any work, an output folder that may not be written or replaced (naming `flag`)."""
    from ..runtime.atomic import check_output_folder

    path = Path(path)
    _under_a_file(path, flag)
    try:
        check_output_folder(path, overwrite=overwrite, inputs=[i for i in inputs if i])
    except FileExistsError as e:
        raise FileExistsError(f"{flag}: {e}") from None
    return path


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse, before any work, a CUDA / MPS device this machine does not have (naming `flag`)."""
    if not device or device in ("cpu", "meta"):
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{flag} {device}: CUDA is not available on this machine; use {flag} cpu")
    if device.startswith("cuda") and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} mps: MPS is not available on this machine; use {flag} cpu")


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """diffusers' and transformers' loading progress bars off while the block runs unless `enabled` (`--quiet`)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in libraries if not enabled else ():
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was in libraries:
            module.enable_progress_bar() if was else module.disable_progress_bar()


def model_inputs(model: str) -> list[Path]:
    """The local files a `--model` value reads (none for a built-in architecture or a hub id)."""
    from ..models import resolve_model

    path = Path(resolve_model(model))
    return [path] if path.exists() else []


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)


def cmd_blocks(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..backbones import walk
    from ..models import load_unet

    graph = walk(load_unet(args.model, meta=True).unet)
    df = pd.DataFrame(graph.to_records())
    if args.kind:
        kinds = list(dict.fromkeys(df["kind"]))
        unknown = [k for k in args.kind if k not in kinds]
        if unknown:
            raise ValueError(f"--kind {unknown[0]!r} is not a unit kind of this model; its kinds: {', '.join(kinds)}")
        df = df[df["kind"].isin(args.kind)]
    if args.format != "json":
        df = df[BLOCK_COLUMNS].fillna("")
    print(render(df, args.format))
    return 0


def _params_m(n: int) -> float:
    return round(n / 1e6, 2)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..report.preset_table import preset_table

    print(render(preset_table(args.model), args.format))
    return 0


def _plan_from_args(args: argparse.Namespace, load):
    """The plan of `--keep` or `--preset`, its files read before `load()` loads the model (bad files fail first)."""
    from ..backbones import create_plan, read_importance
    from ..plan import Plan

    if args.criterion and not args.scores:
        raise ValueError("--criterion picks among the criteria of --scores; pass --scores scores.csv too")
    scores = read_importance(args.scores, args.criterion) if args.scores else None
    plan = Plan.load(args.keep) if getattr(args, "keep", None) else None
    if plan is None and not args.preset:
        raise ValueError("say what to keep: --keep plan.json or --preset NAME")
    loaded = load()
    return loaded, plan or create_plan(loaded.unet, args.preset, source=args.model, scores=scores)


def cmd_apply(args: argparse.Namespace) -> int:
    from ..formats.block import apply_plan
    from ..models import load_unet

    inputs = [*model_inputs(args.model), args.keep, args.scores]
    check_out_dir(args.out, "--out", overwrite=args.overwrite, inputs=inputs)
    loaded, plan = _plan_from_args(args, lambda: load_unet(args.model))
    result = apply_plan(loaded, plan, args.out, overwrite=args.overwrite)
    what = "pipeline" if result.is_pipeline else "U-Net"
    print(
        f"wrote {what} to {result.out_dir}: U-Net params {_params_m(result.teacher_params)}M -> "
        f"{_params_m(result.student_params)}M ({100 * result.student_params / result.teacher_params:.1f}%)"
    )
    if result.expressible:
        print(f"format: plain diffusers; load with UNet2DConditionModel.from_pretrained('{result.out_dir / 'unet'}')")
    else:
        print(f"format: compact weights + plan; load with prune_lab.load_pruned('{result.out_dir}')")
    for consumer, (old, new) in result.rewired.items():
        print(f"skip rewired: {consumer} now receives {new} (was {old})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("blocks", help="list every prunable unit in forward order")
    _model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--kind", nargs="+", help="only these kinds (resnet attention transformer_layer skip mid stage)")
    p.set_defaults(func=cmd_blocks)

    p = subparsers.add_parser("presets", help="published architectures available for a model, with their sizes")
    _model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_presets)

    p = subparsers.add_parser("apply", help="export the compact U-Net of a plan, initialised from the teacher")
    _model_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--keep", help="plan.json to apply")
    src.add_argument("--preset", help=f"shortcut for a preset plan: {PRESET_HELP}")
    p.add_argument("--scores", help="scores.csv for the SDXL presets' layer choice")
    p.add_argument("--criterion", help="which criterion's scores to use when --scores merges several")
    p.add_argument("--out", required=True, type=out_path, help="output folder (DIR/unet, or a whole pipeline)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_apply)
