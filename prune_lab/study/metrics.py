"""The study's quality metrics, a registry: CLIP score and FID through :mod:`prune_lab.evaluation` for any model;
the demo world registers its own (caption accuracy, FID in the demo scorer's space) from ``prune_lab.demo``.

A metric reads one model's generated images (files in prompt order) with their prompts and returns named values:
an array ``[n]`` per prompt (paired across models: the study reports paired differences with standard errors) or a
single number for a set-level metric (FID). Its first value is the one the study ranks arms by.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.registry import Registry

#: Modules whose import registers more metrics (named, not imported: nothing below the demo imports it).
BUILTIN_METRICS: tuple[str, ...] = ("prune_lab.demo.metrics",)


@dataclass
class MetricInputs:
    """What a metric is given for one model.

    Attributes:
        files: the generated images, one per prompt, in prompt order.
        prompts: the prompt table (`file_name`, `text`).
        options: the study's metric settings (`clip_model`, `clip_pretrained`, `clip_checkpoint`, `reference`,
            `fid_mode`, `device`, `batch_size`, `progress`).
        cache: networks loaded by earlier calls in this process (a metric may keep its network here).
    """

    files: list[Path]
    prompts: Any
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudyMetric:
    """A registered study metric.

    Attributes:
        measure: inputs -> {value name: per-prompt array ``[n]`` or a number}.
        values: the names `measure` returns, the ranking one first.
        higher_is_better: per value name.
        needs: option keys the metric cannot run without (checked before any work).
        description: one line for `--help` and the report.
    """

    measure: Callable[[MetricInputs], dict[str, np.ndarray | float]]
    values: tuple[str, ...]
    higher_is_better: dict[str, bool]
    needs: tuple[str, ...] = ()
    description: str = ""


def _import_builtins() -> None:
    for module in BUILTIN_METRICS:
        importlib.import_module(module)


#: Study metrics by name (`prunelab study --metric`).
STUDY_METRICS: Registry[StudyMetric] = Registry("study metric", loader=_import_builtins)


def register_metric(name: str, metric: StudyMetric, *, replace: bool = False) -> StudyMetric:
    """Add `metric` under `name` (the `--metric` value)."""
    return STUDY_METRICS.register(name, metric, replace=replace)


def get_metric(name: str) -> StudyMetric:
    """The metric registered as `name` (ValueError listing the registered ones)."""
    return STUDY_METRICS.get(name)


def check_metric(name: str, options: dict) -> StudyMetric:
    """The metric `name`, refusing it when a setting it needs is missing.

    Raises:
        ValueError: unknown metric, or a needed option unset (naming its flag).
    """
    try:
        metric = get_metric(name)
    except ValueError as e:
        raise ValueError(f"--metric: {e}") from None
    for key in metric.needs:
        if not options.get(key):
            raise ValueError(f"--metric {name} needs --{key.replace('_', '-')}")
    return metric


def _clip_score(inputs: MetricInputs) -> dict[str, np.ndarray]:
    from ..evaluation.metrics import clip_scores
    from ..runtime.clip import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, load_clip

    o = inputs.options
    key = ("clip", o.get("clip_model"), o.get("clip_checkpoint"))
    if key not in inputs.cache:
        inputs.cache[key] = load_clip(
            o.get("clip_model") or DEFAULT_CLIP_MODEL,
            o.get("clip_pretrained", DEFAULT_CLIP_PRETRAINED),
            o.get("clip_checkpoint"),
            o.get("device", "cpu"),
        )
    texts = inputs.prompts["text"].tolist()
    scores = clip_scores(inputs.files, texts, inputs.cache[key], device=o.get("device", "cpu"))
    return {"clip_score": scores}


def _fid(inputs: MetricInputs) -> dict[str, float]:
    from ..evaluation.protocol import EvalSettings, Evaluator

    o = inputs.options
    key = ("fid", o["reference"], o.get("fid_mode"))
    if key not in inputs.cache:
        settings = EvalSettings(
            metrics=("fid",), real=str(o["reference"]), fid_mode=o.get("fid_mode") or "legacy_pytorch"
        )
        inputs.cache[key] = Evaluator(settings)
    folder = inputs.files[0].parent
    return {"fid": float(inputs.cache[key].evaluate(folder, inputs.prompts)["fid"])}


register_metric(
    "clip-score",
    StudyMetric(
        _clip_score,
        ("clip_score",),
        {"clip_score": True},
        description="CLIP score per prompt (--clip-model; prunelab eval's)",
    ),
)
register_metric(
    "fid",
    StudyMetric(
        _fid, ("fid",), {"fid": False}, needs=("reference",), description="FID against --reference (prunelab eval's)"
    ),
)
