"""Evaluating image folders: which metrics, against which reference, with which networks.

:class:`Evaluator` loads each network once and evaluates any number of folders with it (``prunelab eval
--compare``). Its result for a folder is a flat dict with exactly the keys of :data:`RESULT_KEYS`:

* ``images``: the folder; ``num_images``: images evaluated; ``prompts``: the prompt file or None;
* ``model``: the model named in the folder's ``generation.json`` (None without one);
* ``fid``, ``is_mean``, ``is_std``, ``clip_score``: the metrics (None when not requested);
* ``metrics``: the requested metric names; ``settings``: resize, FID mode and reference, IS splits, CLIP model,
  weight files; ``generation``: the folder's ``generation.json`` (None without one); ``seconds``: wall time.

The BK-SDM Table 1 protocol (Kim et al., 2023) is ``resize=256``, FID ``legacy_pytorch`` against the 40 504
val2014 images resized the same way, IS over 10 splits, CLIP ViT-g-14 laion2b_s34b_b88k.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..runtime.clip import load_clip
from .images import list_images, paired_images
from .metrics import (
    FID_MODES,
    FIDStats,
    class_logits,
    clip_scores,
    frechet_distance,
    inception_features,
    inception_score,
    load_fid_extractor,
    load_is_classifier,
)

RESULT_KEYS = (
    "images",
    "num_images",
    "prompts",
    "model",
    "fid",
    "is_mean",
    "is_std",
    "clip_score",
    "metrics",
    "settings",
    "generation",
    "seconds",
)


@dataclass
class EvalSettings:
    """What to measure and how (see the module docstring for the paper's values).

    Attributes:
        metrics: names from :data:`METRICS`.
        resize: square side images are resized to before every metric (None: as they are).
        real: folder of reference images for FID; real_stats: their ``.npz`` statistics. Given both, the file is
            a cache: reused when it exists (and matches), written otherwise.
        fid_mode: a :data:`~prune_lab.evaluation.metrics.FID_MODES` name.
        inception, inception_torchscript: local weight files (see :mod:`prune_lab.evaluation.weights`).
        is_splits: IS splits.
        clip_model, clip_pretrained, clip_checkpoint: open_clip model, published weights tag, or local file.
    """

    metrics: tuple[str, ...] = ("fid", "is", "clip")
    resize: int | None = None
    real: str | None = None
    real_stats: str | None = None
    fid_mode: str = "legacy_pytorch"
    inception: str | None = None
    inception_torchscript: str | None = None
    is_splits: int = 10
    clip_model: str = "ViT-g-14"
    clip_pretrained: str | None = "laion2b_s34b_b88k"
    clip_checkpoint: str | None = None
    batch_size: int = 50
    num_workers: int = 0
    device: str = "cpu"
    progress: bool = False

    def loader_kwargs(self) -> dict:
        return dict(
            size=self.resize,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            progress=self.progress,
        )


@dataclass(frozen=True)
class Metric:
    """A registered metric: how to load its network and how to score one folder with it."""

    needs_prompts: bool
    load: Callable[[EvalSettings], Any]
    score: Callable[[Evaluator, Any, list[Path], list[str] | None], dict[str, float]]


def _fid_load(s: EvalSettings):
    flag = FID_MODES[s.fid_mode].weights.flag  # --inception -> s.inception, --inception-torchscript -> ...
    return load_fid_extractor(s.fid_mode, getattr(s, flag.removeprefix("--").replace("-", "_")), s.device)


def _fid_score(ev: Evaluator, extractor, files: list[Path], texts) -> dict[str, float]:
    s = ev.settings
    feats = inception_features(files, extractor, mode=s.fid_mode, **s.loader_kwargs())
    return {"fid": frechet_distance(FIDStats.from_features(feats), ev.reference())}


def _is_score(ev: Evaluator, classifier, files: list[Path], texts) -> dict[str, float]:
    mean, std = inception_score(class_logits(files, classifier, **ev.settings.loader_kwargs()), ev.settings.is_splits)
    return {"is_mean": mean, "is_std": std}


def _clip_load(s: EvalSettings):
    return load_clip(s.clip_model, s.clip_pretrained, s.clip_checkpoint, s.device)


def _clip_score(ev: Evaluator, clip, files: list[Path], texts) -> dict[str, float]:
    return {"clip_score": float(clip_scores(files, texts, clip, **ev.settings.loader_kwargs()).mean())}


#: Metrics by CLI name.
METRICS: dict[str, Metric] = {
    "fid": Metric(False, _fid_load, _fid_score),
    "is": Metric(False, lambda s: load_is_classifier(s.inception, s.device), _is_score),
    "clip": Metric(True, _clip_load, _clip_score),
}


def check_settings(s: EvalSettings, has_prompts: bool) -> None:
    """Reject bad combinations before any network is loaded."""
    unknown = [m for m in s.metrics if m not in METRICS]
    if unknown or not s.metrics:
        raise ValueError(f"unknown metrics {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    if s.fid_mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {s.fid_mode!r}; choose one of {', '.join(FID_MODES)}")
    if "fid" in s.metrics and not (s.real or s.real_stats):
        raise ValueError("fid needs reference images: --real DIR (e.g. COCO val2014) and/or --real-stats FILE")
    if s.real_stats and not s.real and not Path(s.real_stats).is_file():
        raise FileNotFoundError(
            f"--real-stats {s.real_stats} not found; write it once with --real DIR --real-stats {s.real_stats}"
        )
    if not has_prompts and any(METRICS[m].needs_prompts for m in s.metrics):
        raise ValueError("clip needs --prompts (the prompt of each image)")
    if s.resize is not None and s.resize < 1:
        raise ValueError(f"--resize {s.resize} must be a positive image side")


def _read_generation(folder: Path) -> dict | None:
    path = folder / "generation.json"
    return json.loads(path.read_text()) if path.is_file() else None


class Evaluator:
    """Evaluate image folders under one :class:`EvalSettings`.

    Args:
        settings: what to measure.
        networks: pre-built networks by metric name (a FID extractor, an IS classifier, a
            :class:`~prune_lab.runtime.clip.ClipScorer`); the rest are loaded on first use.
    """

    def __init__(self, settings: EvalSettings, networks: dict[str, Any] | None = None):
        self.settings = settings
        self.networks = dict(networks or {})
        self._reference: FIDStats | None = None

    def network(self, metric: str):
        if metric not in self.networks:
            self.networks[metric] = METRICS[metric].load(self.settings)
        return self.networks[metric]

    def _stats_meta(self) -> dict:
        return {"fid_mode": self.settings.fid_mode, "resize": self.settings.resize}

    def reference(self) -> FIDStats:
        """The real-image FID statistics: loaded from ``real_stats``, or computed from ``real`` (and cached)."""
        if self._reference is None:
            s = self.settings
            path = Path(s.real_stats) if s.real_stats else None
            if path is not None and path.is_file():
                self._reference = self._check_reference(FIDStats.load(path), path)
            else:
                files = list_images(s.real)
                feats = inception_features(files, self.network("fid"), mode=s.fid_mode, **s.loader_kwargs())
                self._reference = FIDStats.from_features(feats, source=str(s.real), **self._stats_meta())
                if path is not None:
                    self._reference.save(path)
        return self._reference

    def _check_reference(self, stats: FIDStats, path: Path) -> FIDStats:
        wanted = self._stats_meta()
        clash = {k: v for k, v in wanted.items() if k in stats.meta and stats.meta[k] != v}
        if clash:
            raise ValueError(
                f"{path} was computed with {', '.join(f'{k}={stats.meta[k]}' for k in clash)}, this run "
                f"uses {', '.join(f'{k}={v}' for k, v in clash.items())}; use another --real-stats file"
            )
        if self.settings.real and stats.count is not None and stats.count != len(list_images(self.settings.real)):
            raise ValueError(
                f"{path} covers {stats.count} images but {self.settings.real} holds "
                f"{len(list_images(self.settings.real))}; delete it to recompute"
            )
        return stats

    def _settings_record(self) -> dict:
        record = asdict(self.settings)
        for key in ("batch_size", "num_workers", "device", "progress", "metrics"):
            record.pop(key)
        if self._reference is not None:
            record["real_count"] = self._reference.count
        if self.settings.clip_checkpoint or self.settings.clip_model.startswith(("local-dir:", "hf-hub:")):
            record["clip_pretrained"] = None  # the weights came from elsewhere
        return record

    def evaluate(
        self, folder: str | os.PathLike, prompts: pd.DataFrame | None = None, prompts_path: str | None = None
    ) -> dict:
        """Score one image folder: the images named by `prompts` (in order), else every image in it."""
        s = self.settings
        check_settings(s, prompts is not None)
        start = time.perf_counter()
        folder = Path(folder)
        files = paired_images(folder, prompts) if prompts is not None else list_images(folder)
        texts = prompts["text"].tolist() if prompts is not None else None
        networks = {name: self.network(name) for name in s.metrics}  # missing weights fail before any work
        values: dict[str, float] = {}
        for name in s.metrics:
            values.update(METRICS[name].score(self, networks[name], files, texts))
        generation = _read_generation(folder)
        return {
            "images": str(folder),
            "num_images": len(files),
            "prompts": prompts_path,
            "model": (generation or {}).get("model"),
            "fid": values.get("fid"),
            "is_mean": values.get("is_mean"),
            "is_std": values.get("is_std"),
            "clip_score": values.get("clip_score"),
            "metrics": list(s.metrics),
            "settings": self._settings_record(),
            "generation": generation,
            "seconds": round(time.perf_counter() - start, 2),
        }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
