"""Sensitivity scoring: how much each unit matters, by registered criteria.

* what is scored: :func:`score_units` at a `--units` granularity (the backbone's, see
  :func:`prune_lab.backbones.granularities`) -> :class:`ScoreUnit`;
* with what: :func:`register_criterion` / :func:`list_criteria` / :func:`get_criterion` (`magnitude`, `taylor`,
  `ablation`, `clip`, `similarity`; each applies to the backbones with the capabilities it requires), all following
  the contract in :mod:`prune_lab.scoring.registry`, each with typed options
  (:mod:`prune_lab.scoring.options`, built from flat settings by :func:`criterion_options`);
* on what data: :mod:`prune_lab.scoring.calibration` (image-text folders, prompts, caches, synthetic), chosen by
  :func:`calibrate` from a :class:`CalibrationSource`; :func:`build_scoring_inputs` assembles everything;
* the loop: :func:`run_sweep` (progress, persistence, resume, processes) -> a table (:mod:`.results`);
  :func:`score_model` runs it all from a model name (`prunelab score`).
"""

from ..runtime.lazy import lazy_exports

# Public names are imported from their submodules on first use: listing criteria (the CLI's help) imports no torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".calibration": (
            "Calibration",
            "DenoisingBatch",
            "calibration_from_folder",
            "calibration_from_prompts",
            "denoising_batches",
            "load_calibration",
            "save_calibration",
            "synthetic_calibration",
        ),
        ".groups": ("ScoreUnit", "score_units"),
        "prune_lab.runtime.schedule": ("noise_scheduler",),
        ".inputs": ("CalibrationSource", "build_scoring_inputs", "calibrate"),
        ".options": ("AblationOptions", "ClipOptions", "CriterionOptions", "TaylorOptions"),
        ".reductions": ("neuron_mean",),
        ".registry": (
            "ScoringInputs",
            "UnitScore",
            "criterion_options",
            "get_criterion",
            "list_criteria",
            "register_criterion",
        ),
        ".results": ("compare_score_files", "rank_agreement", "read_scores", "write_scores"),
        ".run": ("ScoreRun", "score_model"),
        ".sweep": ("run_sweep",),
    },
)

__all__ = [
    "AblationOptions",
    "Calibration",
    "CalibrationSource",
    "ClipOptions",
    "CriterionOptions",
    "DenoisingBatch",
    "ScoreRun",
    "ScoreUnit",
    "ScoringInputs",
    "TaylorOptions",
    "UnitScore",
    "build_scoring_inputs",
    "calibrate",
    "calibration_from_folder",
    "calibration_from_prompts",
    "compare_score_files",
    "criterion_options",
    "denoising_batches",
    "get_criterion",
    "list_criteria",
    "load_calibration",
    "neuron_mean",
    "noise_scheduler",
    "rank_agreement",
    "read_scores",
    "register_criterion",
    "run_sweep",
    "save_calibration",
    "score_model",
    "score_units",
    "synthetic_calibration",
    "write_scores",
]
