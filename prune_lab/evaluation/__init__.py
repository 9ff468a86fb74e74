"""Zero-shot text-to-image evaluation (BK-SDM's MS-COCO protocol): prompts, generation, FID / IS / CLIP score.

* :mod:`.prompts`: prompt files and COCO caption sampling;
* :mod:`.generate`: deterministic, resumable generation split across processes;
* :mod:`.metrics`: FID (clean-fid), IS (torch-fidelity), CLIP score (open_clip) on image files;
* :mod:`.protocol`: :class:`Evaluator` runs the requested metrics over image folders;
* :mod:`.weights`: local weight files and offline errors.
"""

from .generate import GenerationConfig, generate_images, load_pipeline, prompt_seed
from .metrics import FIDStats, clip_scores, frechet_distance, inception_features, inception_score
from .prompts import coco_captions, read_prompts, write_prompts
from .protocol import RESULT_KEYS, EvalSettings, Evaluator

__all__ = [
    "RESULT_KEYS",
    "EvalSettings",
    "Evaluator",
    "FIDStats",
    "GenerationConfig",
    "clip_scores",
    "coco_captions",
    "frechet_distance",
    "generate_images",
    "inception_features",
    "inception_score",
    "load_pipeline",
    "prompt_seed",
    "read_prompts",
    "write_prompts",
]
