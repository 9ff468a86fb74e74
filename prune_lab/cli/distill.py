"""Retraining subcommands: `distill` (BK-SDM feature KD of a student from its teacher) and `cache-latents`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..backbones import feature_scopes
from ..runtime.dtypes import DTYPE_NAMES, canonical_dtype
from . import types as T
from .common import check_folder

#: `--feature-loss` choices: :data:`prune_lab.distill.losses.FEATURE_LOSSES` (that module imports torch; a test
#: checks the two agree).
FEATURE_LOSSES = ("mse", "normalized")
#: accelerate's `mixed_precision` name of each canonical dtype (`--mixed-precision` takes every spelling, or `no`).
ACCELERATE_PRECISION = {"float32": "no", "float16": "fp16", "bfloat16": "bf16"}


def config_from_args(args: argparse.Namespace):
    """The :class:`~prune_lab.distill.recipe.DistillConfig` of the flags (unset flags keep its defaults)."""
    from ..distill.recipe import DistillConfig

    fields = DistillConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if values.get("mixed_precision", "no") != "no":
        values["mixed_precision"] = ACCELERATE_PRECISION[canonical_dtype(values["mixed_precision"])]
    values["progress"] = not args.no_progress
    values["flip"] = not args.no_flip
    return DistillConfig(**values)


def cmd_distill(args: argparse.Namespace) -> int:
    from ..distill.files import find_resume
    from ..distill.recipe import DistillRecipe, DivergedError

    find_resume(args.out, args.resume)  # first: a planted checkpoint is named as such
    resuming = args.resume is not None  # else a non-empty --out is refused by the recipe, suggesting --resume
    check_folder(
        "--out", args.out, inputs=[args.teacher, args.student, args.data], resumable=resuming, keep=not resuming
    )
    recipe = DistillRecipe(config_from_args(args))
    try:
        result = recipe.run()
    except DivergedError as e:
        print(f"prunelab distill: error: {e}", file=sys.stderr)
        return 1
    if not recipe.accelerator.is_main_process:
        return 0
    if result.resumed_from:
        print(f"resumed from {result.resumed_from}")
    last = ", ".join(f"{k} {v:.4g}" for k, v in result.last.items() if not k.startswith("feat:"))
    print(f"trained {result.step} steps ({last}); losses per step in {result.out_dir / 'losses.csv'}")
    if result.bad_images:
        print(f"skipped {len(result.bad_images)} unreadable image(s) of --data: {', '.join(result.bad_images[:5])}")
    print(f"wrote the student to {result.exported} (load with prune_lab.load_pruned('{result.exported}'))")
    return 0


def cmd_cache_latents(args: argparse.Namespace) -> int:
    from ..models import resolve_model

    root = Path(resolve_model(args.model))
    check_folder("--out", args.out, overwrite=args.overwrite, inputs=[args.data, root], resumable=True)

    import torch

    from ..distill.data import prepare_latent_cache, write_latent_cache
    from ..distill.encoders import load_encoders
    from ..runtime.dtypes import parse_dtype

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    options = dict(resolution=args.resolution, shard_size=args.shard_size, dtype=parse_dtype(args.dtype))
    prepare_latent_cache(args.data, args.out, flip=not args.no_flip, overwrite=args.overwrite, **options)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    encoders = load_encoders(root, dtype=dtype, device=device)  # raises unless `root` is a pipeline folder
    summary = write_latent_cache(
        encoders,
        args.data,
        args.out,
        **options,
        batch_size=args.batch_size,
        flip=not args.no_flip,
        source=str(args.model),
        scheduler_dir=root / "scheduler",
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress=True,
    )
    print(
        f"wrote {summary.count} samples in {summary.shards} shard(s) to {summary.out_dir}"
        + (f" ({summary.resumed_shards} shard(s) kept from an earlier run)" if summary.resumed_shards else "")
    )
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable image(s): {', '.join(summary.skipped[:5])}")
    return 0


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here (`--device cuda` without a driver), before any model loads.

    Raises:
        ValueError: the device is not available.
    """
    import torch

    kind = torch.device(device).type
    available = {
        "cpu": True,
        "meta": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(kind, False):
        raise ValueError(f"--device {device} is not available on this machine; use cpu or an available device")
    if (
        kind == "cuda"
        and torch.device(device).index is not None
        and torch.device(device).index >= torch.cuda.device_count()
    ):
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def add_training_args(p: argparse.ArgumentParser, feature_layers: str | None = None) -> None:
    """The recipe's training flags (`distill`, `progressive`); unset ones keep :class:`DistillConfig`'s defaults.

    Args:
        feature_layers: the `--feature-layers` default to show and use (None: the recipe's, `stages`).
    """
    p.add_argument("--batch-size", type=T.positive_int, help="micro-batch per process (default 64)")
    p.add_argument("--grad-accum", type=T.positive_int, help="micro-batches per optimizer step (default 4)")
    p.add_argument("--lr", type=T.positive_float, help="AdamW learning rate, constant (default 5e-5)")
    p.add_argument("--weight-decay", type=T.non_negative_float, help="AdamW weight decay (default 0.01)")
    p.add_argument("--max-grad-norm", type=T.non_negative_float, help="gradient clipping norm, 0 = off (default 1.0)")
    p.add_argument("--lambda-task", type=T.non_negative_float, help="weight of the denoising loss (default 1)")
    p.add_argument("--lambda-out", type=T.non_negative_float, help="weight of the output-level KD loss (default 1)")
    p.add_argument("--lambda-feat", type=T.non_negative_float, help="weight of the feature-level KD loss (default 1)")
    p.add_argument(
        "--feature-layers",
        choices=[*feature_scopes(), "none"],
        default=feature_layers,
        help="stages: every stage output (BK-SDM); units: every kept unit (SSD-1B); none "
        f"(default {feature_layers or 'stages'})",
    )
    p.add_argument(
        "--feature-loss",
        choices=FEATURE_LOSSES,
        help="mse: BK-SDM's feature MSE (default); normalized: each layer's squared error over the teacher "
        "feature's squared norm (LAPTOP-Diff, arXiv:2404.11098)",
    )
    p.add_argument(
        "--mixed-precision", choices=("no", *DTYPE_NAMES), help="default no (fp32); fp16 / bf16 in either spelling"
    )
    p.add_argument("--ema", action="store_true", default=None, help="keep EMA weights and export them")
    p.add_argument("--ema-decay", type=T.fraction, help="default 0.9999")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument(
        "--checkpoint-every",
        type=T.non_negative_int,
        help="steps between checkpoints (and one at the end); 0 = none (default 1000)",
    )
    p.add_argument("--checkpoints-limit", type=T.positive_int, help="keep only the newest N checkpoints (N >= 1)")
    p.add_argument("--seed", type=T.seed)
    p.add_argument("--resolution", type=T.positive_int, help="image side, a multiple of 8 (default 512)")
    p.add_argument("--no-flip", action="store_true", help="no random left-right flips (captions that name sides)")
    p.add_argument("--num-workers", type=T.non_negative_int, help="data loader workers (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _distill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        type=T.non_empty,
        help="the model the student was pruned from: demo, a pipeline folder (ideally) or hub id",
    )
    p.add_argument("--student", required=True, type=T.non_empty, help="a `prunelab apply` output folder")
    p.add_argument(
        "--data", required=True, type=T.non_empty, help="image-text folder (metadata.csv/.jsonl) or a latents cache"
    )
    p.add_argument(
        "--out", required=True, type=T.non_empty, help="output folder: the student, checkpoints/, losses.csv, samples/"
    )
    p.add_argument("--max-steps", type=T.positive_int, help="optimizer steps (default 50000, BK-SDM)")
    add_training_args(p)
    p.add_argument("--resume", help="`latest` (or a fresh start when there is none) or a checkpoint folder")
    p.add_argument("--random-init", action="store_true", default=None, help="ablation: do not start from the teacher")
    p.add_argument("--report-to", choices=["tensorboard"], help="also log to tensorboard (out/logs)")
    p.add_argument("--validation-prompts", nargs="+", help="render these prompts every --validation-every steps")
    p.add_argument("--validation-every", type=T.positive_int)
    p.add_argument(
        "--validation-steps", type=T.positive_int, help="denoising steps for validation images (default 25)"
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="retrain a pruned student by BK-SDM feature distillation",
        description="Run under `accelerate launch` for several processes or GPUs.",
    )
    _distill_parser(p)
    p.set_defaults(func=cmd_distill)

    p = subparsers.add_parser("cache-latents", help="encode an image-text folder once for `distill`")
    p.add_argument(
        "--model",
        required=True,
        type=T.non_empty,
        help="the teacher: demo or a pipeline folder (its VAE and text encoder are used)",
    )
    p.add_argument(
        "--data", required=True, type=T.non_empty, help="image-text folder (metadata.csv/.jsonl with file_name,text)"
    )
    p.add_argument(
        "--out", required=True, type=lambda t: Path(T.non_empty(t)), help="cache folder to write (resumable)"
    )
    p.add_argument("--resolution", type=T.positive_int, default=512, help="image side, a multiple of 8")
    p.add_argument("--batch-size", type=T.positive_int, default=8)
    p.add_argument("--shard-size", type=T.positive_int, default=1024, help="samples per safetensors shard")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp16", help="storage dtype")
    p.add_argument("--no-flip", action="store_true", help="do not store flipped latents (no flip augmentation)")
    p.add_argument("--num-workers", type=T.non_negative_int, default=2)
    p.add_argument("--device", type=T.device, help="default cuda when available")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_cache_latents)
