"""The calibration flags `score` and `width` share, and the :class:`~prune_lab.scoring.inputs.CalibrationSource`
they describe."""

from __future__ import annotations

import argparse

from .types import non_empty, positive_int, seed


def add_calibration_args(p: argparse.ArgumentParser, title: str, *, prompts_help: str, exclusive_prompts: bool):
    """Add the calibration group (source, cache, samples, batch size, seed) and return it for command-specific flags.

    Args:
        exclusive_prompts: `--prompts` is one more source (width) rather than also the clip prompts (score).
    """
    g = p.add_argument_group(title)
    src = g.add_mutually_exclusive_group()
    src.add_argument("--calib-dir", help="image-text folder (images + metadata.csv/.jsonl: file_name,text)")
    src.add_argument("--calib-cache", help="latents + embeddings cache written by --save-calib (score or width)")
    src.add_argument("--synthetic", action="store_true", help="Gaussian latents and embeddings (random-weight models)")
    (src if exclusive_prompts else g).add_argument("--prompts", help=prompts_help)
    g.add_argument("--save-calib", type=non_empty, help="write the calibration set to this cache file for later runs")
    g.add_argument("--samples", type=positive_int, default=8, help="calibration samples / prompts used (default 8)")
    g.add_argument("--batch-size", type=positive_int, default=4)
    g.add_argument("--seed", type=seed, default=0)
    return g


def calibration_source(args: argparse.Namespace):
    """Where the calibration comes from (cache > image folder > synthetic > prompts, data-free)."""
    from ..scoring.inputs import CalibrationSource

    return CalibrationSource(
        cache=args.calib_cache,
        folder=args.calib_dir,
        synthetic=args.synthetic,
        prompts=args.prompts,
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        steps=getattr(args, "steps", None),
        guidance=getattr(args, "guidance", None),
        save=args.save_calib,
    )
