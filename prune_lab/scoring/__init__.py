"""Sensitivity scoring: how much each U-Net unit matters, by registered criteria.

* what is scored: :func:`score_units` at a `--units` granularity (the backbone's, see
  :func:`prune_lab.backbones.granularities`) -> :class:`ScoreUnit`;
* with what: :func:`register_criterion` / :func:`list_criteria` / :func:`get_criterion` (`magnitude`, `taylor`,
  `ablation`, `clip`), all following the contract in :mod:`prune_lab.scoring.registry`;
* on what data: :mod:`prune_lab.scoring.calibration` (image-text folders, prompts, caches, synthetic);
* the loop: :func:`run_sweep` (progress, persistence, resume, processes) -> a table (:mod:`.results`).
"""

from .calibration import (
    Calibration,
    DenoisingBatch,
    calibration_from_folder,
    calibration_from_prompts,
    denoising_batches,
    load_calibration,
    noise_scheduler,
    read_prompts,
    save_calibration,
    synthetic_calibration,
)
from .groups import ScoreUnit, score_units
from .registry import ScoringInputs, UnitScore, get_criterion, list_criteria, neuron_mean, register_criterion
from .results import rank_agreement, read_scores, write_scores
from .sweep import run_sweep

__all__ = [
    "Calibration",
    "DenoisingBatch",
    "ScoreUnit",
    "ScoringInputs",
    "UnitScore",
    "calibration_from_folder",
    "calibration_from_prompts",
    "denoising_batches",
    "get_criterion",
    "list_criteria",
    "load_calibration",
    "neuron_mean",
    "noise_scheduler",
    "rank_agreement",
    "read_prompts",
    "read_scores",
    "register_criterion",
    "run_sweep",
    "save_calibration",
    "score_units",
    "synthetic_calibration",
    "write_scores",
]
