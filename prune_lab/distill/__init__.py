"""Retraining pruned students by knowledge distillation (BK-SDM §3.2), on accelerate.

* :mod:`.losses`: the objective (task + output KD + feature KD) as small modules;
* :mod:`.features`: teacher/student feature pairs derived from the plan, and the hooks that read them;
* :mod:`.data`: image-text folders and the latents cache;
* :mod:`.encoders`: the frozen VAE / text encoders that turn batches into U-Net inputs;
* :mod:`.step`: one micro-step (shared by the recipe and the benchmarks);
* :mod:`.recipe`: :class:`DistillConfig` and :class:`DistillRecipe` (setup / train / save_checkpoint / cleanup).
"""

from .data import ImageTextFolder, LatentCache, write_latent_cache
from .features import FeaturePair, FeaturePoint, FeatureTap, feature_pairs
from .losses import DistillationLoss, FeatureLoss, LossTerms
from .recipe import DistillConfig, DistillRecipe, DivergedError, TrainResult

__all__ = [
    "DistillConfig",
    "DistillRecipe",
    "DistillationLoss",
    "DivergedError",
    "FeatureLoss",
    "FeaturePair",
    "FeaturePoint",
    "FeatureTap",
    "ImageTextFolder",
    "LatentCache",
    "LossTerms",
    "TrainResult",
    "feature_pairs",
    "write_latent_cache",
]
