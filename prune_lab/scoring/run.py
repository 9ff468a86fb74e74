"""`score_model`: a model name or folder in, a score table written (what `prunelab score` runs)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ..runtime import samplers
from .inputs import CalibrationSource, build_scoring_inputs
from .registry import ScoringInputs, check_applicable, get_criterion

#: Criterion options that change a score (a `--resume` must match them); the others only change the cost.
SCORE_OPTIONS = ("skip_mode", "clip_model", "clip_pretrained", "clip_checkpoint", "scheduler", "steps", "guidance")


@dataclass
class ScoreRun:
    """What :func:`score_model` did.

    Attributes:
        table: the score table (None on processes other than the main one).
        units: how many units each criterion scored.
        criteria: the criteria, in table order.
        out: the CSV written (its JSON copy is beside it).
        calibration: what the calibration batches were (None when no criterion needed any).
    """

    table: pd.DataFrame | None
    units: int
    criteria: list[str]
    out: Path
    calibration: str | None = None


def _check_sampler(name: str | None, steps: int, pipeline) -> str:
    """The sampler's resolved name, once it is known to sample `pipeline` in `steps` steps (before anything is
    written)."""
    name = samplers.resolve(name, pipeline.scheduler.config)
    samplers.check_steps(name, steps)
    samplers.build_sampler(name, pipeline.scheduler.config, config_only=True)
    return name


def _settings(model, units: str, only, timesteps: int, dtype: str, source: CalibrationSource, inputs: ScoringInputs):
    """What a `--resume` must match: everything that changes a score."""
    from ..plan import fingerprint

    options = {f.name: getattr(o, f.name) for o in inputs.options for f in fields(o) if f.name in SCORE_OPTIONS}
    if "scheduler" in options and inputs.pipeline is not None:  # the resolved name: `pndm` for a U-Net, as before
        options["scheduler"] = _check_sampler(options["scheduler"], options["steps"], inputs.pipeline)
    return {
        "model": str(model),
        "fingerprint": fingerprint(inputs.unet),
        "calibration": inputs.calibration,
        "units": units,
        "only": list(only) if only else None,
        "samples": source.samples,
        "timesteps": timesteps,
        "batch_size": source.batch_size,
        "seed": source.seed,
        "dtype": dtype,
        "prompts": str(source.prompts) if source.prompts else None,
        **{k: options.get(k) for k in SCORE_OPTIONS},
    }


def score_model(
    model: str | os.PathLike,
    criteria: Sequence[str],
    out: str | os.PathLike,
    *,
    units: str = "blocks",
    only: Sequence[str] | None = None,
    calibration: CalibrationSource | None = None,
    timesteps: int = 2,
    options: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ScoreRun:
    """Load `model`, score its `units` with every criterion and write the table to `out` (+ JSON beside it).

    Args:
        model: built-in name, pipeline or U-Net folder, or hub id (:func:`prune_lab.models.load_unet`).
        criteria: registered criterion names.
        units / only: the granularity (:func:`prune_lab.backbones.granularities`), optionally only these names.
        calibration: where the data-driven criteria's batches (and the clip criterion's prompts) come from.
        timesteps: sampled timesteps per calibration sample.
        options: flat criterion settings (:func:`~prune_lab.scoring.registry.criterion_options`).
        dtype: any :mod:`prune_lab.runtime.dtypes` spelling.
        device: default: this process's accelerate device.
        resume: reuse the units a killed run with the same settings scored.

    Raises:
        ValueError / FileNotFoundError: unknown criterion, option, unit or dtype; missing or unreadable data.
    """
    import torch

    from ..backbones import backbone_of, walk
    from ..models import load_unet
    from ..runtime.dtypes import canonical_dtype, parse_dtype
    from .groups import score_units
    from .results import unit_macs
    from .sweep import process_state, run_sweep

    for name in criteria:
        get_criterion(name)  # unknown names fail before anything is loaded
    dtype = canonical_dtype(dtype)
    device = torch.device(device or process_state().device)
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 (--dtype) needs a GPU; on the CPU score in float32 (the default)")
    loaded = load_unet(model, dtype=parse_dtype(dtype))
    loaded.unet.to(device)
    graph = walk(loaded.unet)
    check_applicable(criteria, backbone_of(graph), loaded.unet)
    todo = score_units(graph, units, list(only) if only else None)  # bad names fail before data is read
    source = calibration or CalibrationSource()
    inputs = build_scoring_inputs(
        loaded, criteria, calibration=source, timesteps=timesteps, options=options or {}, graph=graph
    )
    table = run_sweep(
        inputs,
        todo,
        list(criteria),
        out,
        settings=_settings(model, units, only, timesteps, dtype, source, inputs),
        resume=resume,
        macs=unit_macs(loaded.unet, inputs.graph),
        progress=progress,
    )
    return ScoreRun(table, len(todo), list(criteria), Path(out), inputs.calibration)
