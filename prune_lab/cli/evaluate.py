"""Evaluation subcommands: `coco-prompts`, `generate`, `eval`.

`generate` splits its prompts across processes when started by accelerate::

    accelerate launch --num_processes 8 -m prune_lab.cli generate --model DIR --prompts prompts.csv --out imgs/
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime import samplers
from ..runtime.dtypes import DTYPE_NAMES
from ..runtime.tables import FORMATS, render
from . import types as T
from .common import check_file, check_folder

if TYPE_CHECKING:
    import pandas as pd
    import torch

TABLE_COLUMNS = {
    "model": None,
    "images": None,
    "num_images": None,
    "fid": 2,
    "is_mean": 2,
    "is_std": 2,
    "clip_score": 4,
}


def cmd_coco_prompts(args: argparse.Namespace) -> int:
    from ..evaluation.prompts import coco_captions, write_prompts

    check_file("-o", args.out)
    df = coco_captions(args.annotations, args.n, args.seed)
    write_prompts(df, args.out)
    print(
        f"wrote {args.out}: {len(df)} prompts, one caption each of {len(df)} images of {args.annotations} "
        f"(seed {args.seed})"
    )
    return 0


def _dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: fp16 on CUDA (as BK-SDM), fp32 elsewhere; else any :mod:`prune_lab.runtime.dtypes` spelling."""
    import torch

    from ..runtime.dtypes import parse_dtype

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return parse_dtype(name)


def cmd_generate(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..evaluation.generate import (
        GenerationConfig,
        check_resume,
        generate_images,
        generation_settings,
        load_pipeline,
        pending,
        record_settings,
    )
    from ..evaluation.prompts import read_prompts

    config = GenerationConfig(
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        resolution=args.resolution,
        seed=args.seed,
        batch_size=args.batch_size,
        ext=args.ext,
    )
    check_folder("--out", args.out, keep=True)
    prompts = read_prompts(args.prompts)
    state = PartialState()
    dtype = _dtype(args.dtype, state.device)
    check_resume(args.out, generation_settings(args.model, args.prompts, prompts, config, dtype))  # before loading
    pipe = load_pipeline(args.model, scheduler=config.scheduler, dtype=dtype, device=state.device)
    record_settings(args.out, generation_settings(args.model, args.prompts, prompts, config, dtype, pipe))
    result = generate_images(
        pipe,
        prompts,
        args.out,
        config,
        shard=(state.process_index, state.num_processes),
        progress=state.is_local_main_process,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        missing = len(pending(prompts, args.out, config.ext))
        share = f" (process 0 of {state.num_processes})" if state.num_processes > 1 else ""
        print(
            f"{args.out}: {len(prompts) - missing}/{len(prompts)} images; {result.written} written, "
            f"{result.skipped} were there{share}, {result.seconds:.1f}s"
        )
    return 0


def _settings(args: argparse.Namespace):
    from ..evaluation.protocol import EvalSettings, default_device

    return EvalSettings(
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        resize=args.resize,
        real=args.real,
        real_stats=args.real_stats,
        fid_mode=args.fid_mode,
        inception=args.inception,
        inception_torchscript=args.inception_torchscript,
        is_splits=args.is_splits,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        clip_checkpoint=args.clip_checkpoint,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device or default_device(),
        progress=True,
    )


def _table(results: list[dict]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(results)[list(TABLE_COLUMNS)]
    for column, digits in TABLE_COLUMNS.items():
        if digits is not None:
            df[column] = df[column].map(lambda v, d=digits: None if v is None or pd.isna(v) else round(v, d))
    return df


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.images import list_images, paired_images
    from ..evaluation.prompts import read_prompts
    from ..evaluation.protocol import Evaluator, check_settings
    from ..runtime.atomic import write_text
    from ..runtime.readers import check_images

    settings = _settings(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    check_settings(settings, prompts is not None)
    folders = [args.images, *(args.compare or [])]
    for folder in folders:  # every folder complete and readable before any network is loaded
        check_images(paired_images(folder, prompts) if prompts is not None else list_images(folder))
    evaluator = Evaluator(settings)
    results = []
    for folder in folders:
        result = evaluator.evaluate(folder, prompts, args.prompts)
        write_text(Path(folder) / args.json_name, json.dumps(result, indent=2))
        results.append(result)
    print(json.dumps(results, indent=2) if args.format == "json" else render(_table(results), args.format))
    return 0


def json_name(text: str) -> str:
    """`--json-name`: a plain file name, written inside each image folder (no folders, no `..`, not absolute)."""
    if not text or text in (".", "..") or "/" in text or "\\" in text or Path(text).is_absolute():
        raise argparse.ArgumentTypeError(f"{text!r} must be a plain file name (it is written into each image folder)")
    return text


def _register_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate one image per prompt (deterministic, resumable)")
    p.add_argument(
        "--model",
        required=True,
        help="demo (the shipped tiny model), a pipeline folder (SD or SDXL; prunelab apply exports too) or hub id",
    )
    p.add_argument(
        "--prompts",
        required=True,
        type=T.non_empty,
        help="prompt file: CSV with a text column (and file_name), or .txt",
    )
    p.add_argument("--out", required=True, type=T.non_empty, help="image folder; existing images are kept and skipped")
    p.add_argument("--steps", type=T.positive_int, default=25, help="denoising steps (default 25, as BK-SDM)")
    p.add_argument("--guidance", type=T.finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument(
        "--scheduler",
        choices=samplers.names(),
        help="sampler (default: pndm for DDPM-style pipelines as BK-SDM, flow-euler for SD3 / Flux, dpm for Sana)",
    )
    p.add_argument("--resolution", type=T.positive_int, help="square image side (default: the model's, 512 for SD-v1)")
    p.add_argument(
        "--batch-size", type=T.positive_int, default=1, help="prompts per pipeline call (images do not depend on it)"
    )
    p.add_argument("--seed", type=T.seed, default=0, help="base seed; prompt i uses SeedSequence((seed, i))")
    p.add_argument("--dtype", choices=["auto", *DTYPE_NAMES], default="auto", help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--ext", choices=("png", "jpg"), default="png", help="png, or jpg (quality 75, as BK-SDM)")
    p.set_defaults(func=cmd_generate)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="FID, IS and CLIP score of image folders (one JSON each + a table)")
    p.add_argument("--images", required=True, type=T.non_empty, help="generated images")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="more image folders, evaluated the same way")
    p.add_argument("--prompts", help="prompt file of the images (needed for clip; restricts to its images)")
    p.add_argument("--real", help="reference images for FID (e.g. COCO val2014/)")
    p.add_argument("--real-stats", help="reference FID statistics .npz; with --real, a cache (reused or written)")
    p.add_argument(
        "--resize", type=T.positive_int, help="resize every image to NxN (bicubic) first; 256 in BK-SDM's protocol"
    )
    p.add_argument("--metrics", default="fid,is,clip", help="comma-separated (default: all, fid,is,clip)")
    p.add_argument(
        "--fid-mode",
        default="legacy_pytorch",
        help="legacy_pytorch: pytorch-fid (BK-SDM's numbers); clean: clean-fid",
    )
    p.add_argument("--inception", help="local pt_inception-2015-12-05-6726825d.pth (IS; FID in legacy_pytorch mode)")
    p.add_argument("--inception-torchscript", help="local inception-2015-12-05.pt (FID in clean mode)")
    p.add_argument("--is-splits", type=T.positive_int, default=10, help="IS splits (default 10)")
    p.add_argument("--clip-model", default="ViT-g-14", help="open_clip model name, or local-dir:DIR")
    p.add_argument("--clip-pretrained", default="laion2b_s34b_b88k", help="open_clip weights tag")
    p.add_argument("--clip-checkpoint", help="local open_clip checkpoint file (instead of the tag's download)")
    p.add_argument("--batch-size", type=T.positive_int, default=50)
    p.add_argument(
        "--num-workers", type=T.non_negative_int, default=min(8, os.cpu_count() or 1), help="image loading workers"
    )
    p.add_argument("--device", type=T.device, help="default: cuda when available, else cpu")
    p.add_argument(
        "--json-name", type=json_name, default="eval.json", help="result file written into each image folder"
    )
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_eval)


def register(subparsers) -> None:
    p = subparsers.add_parser("coco-prompts", help="sample one caption per image from a COCO captions file")
    p.add_argument("--annotations", required=True, type=T.non_empty, help="captions_val2014.json")
    p.add_argument(
        "--n", type=T.positive_int, default=30000, help="number of images / prompts (BK-SDM: 30000 or 5000)"
    )
    p.add_argument("--seed", type=T.seed, default=0, help="sampling seed")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        type=T.non_empty,
        help="prompt CSV to write (file_name, text, image_id, caption_id)",
    )
    p.set_defaults(func=cmd_coco_prompts)
    _register_generate(subparsers)
    _register_eval(subparsers)
