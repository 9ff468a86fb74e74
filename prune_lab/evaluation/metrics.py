"""FID, IS and CLIP score on image files, through the maintained implementations.

* FID (Heusel et al., 2017, arXiv:1706.08500): Fréchet distance between Gaussians fitted to Inception-v3 pool
  features. Image loading, the resize to 299 and the distance are clean-fid's (Parmar et al., 2022,
  arXiv:2104.11222), in one of :data:`FID_MODES`: ``legacy_pytorch`` reproduces pytorch-fid, which BK-SDM used;
  ``clean`` is clean-fid's PIL-bicubic protocol.
* IS (Salimans et al., 2016, arXiv:1606.03498): ``exp(E_x KL(p(y|x) || p(y)))`` over 10 shuffled splits, computed
  by torch-fidelity on the unbiased logits of its Inception-v3, as BK-SDM's ``fidelity --isc``.
* CLIP score (Hessel et al., 2021, arXiv:2104.08718): the cosine between open_clip image and text embeddings,
  averaged over image-prompt pairs and reported raw (not x100, not clipped at 0), as BK-SDM's
  ``eval_clip_score.py`` (0.2958 for SD-v1.4 on COCO-30K with ViT-g-14 laion2b_s34b_b88k).

Networks are passed in as callables, so tests (and other feature extractors) can replace them:
a FID extractor maps float images ``[B, 3, 299, 299]`` in ``[0, 255]`` to features ``[B, D]``; an IS classifier
maps uint8 images ``[B, 3, H, W]`` to logits ``[B, C]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from ..runtime.atomic import open_atomic
from ..runtime.clip import ClipScorer
from .images import NumpyResize, image_batches
from .weights import INCEPTION, INCEPTION_TORCHSCRIPT, WeightsFile, as_file_named, locate, torch_hub_dir

Extractor = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------- FID
def _pytorch_inception(weights: Path, device: torch.device) -> Extractor:
    from cleanfid.features import feature_extractor

    with as_file_named(weights, INCEPTION.filename) as link, torch_hub_dir(link.parent.parent):
        return feature_extractor("pytorch_inception", device=device, use_dataparallel=False)


def _torchscript_inception(weights: Path, device: torch.device) -> Extractor:
    from cleanfid.inception_torchscript import InceptionV3W

    with as_file_named(weights, INCEPTION_TORCHSCRIPT.filename) as link:
        return InceptionV3W(str(link.parent), download=False).to(device).eval()


@dataclass(frozen=True)
class FidMode:
    """A FID protocol: the weights file its network needs, how to build the network from that file, and which
    clean-fid image pipeline (``legacy_pytorch`` or ``clean``: how images are resized to 299) feeds it."""

    weights: WeightsFile
    build: Callable[[Path, torch.device], Extractor]
    cleanfid_mode: str
    about: str


#: FID protocols by ``--fid-mode`` name.
FID_MODES: dict[str, FidMode] = {
    "legacy_pytorch": FidMode(INCEPTION, _pytorch_inception, "legacy_pytorch", "pytorch-fid, as BK-SDM"),
    "clean": FidMode(INCEPTION_TORCHSCRIPT, _torchscript_inception, "clean", "clean-fid: PIL bicubic resize"),
}


def _fid_mode(mode: str) -> FidMode:
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; choose one of {', '.join(FID_MODES)}")
    return FID_MODES[mode]


def load_fid_extractor(
    mode: str = "legacy_pytorch", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> Extractor:
    """The Inception feature extractor of a :data:`FID_MODES` mode, from a local weights file when given."""
    spec = _fid_mode(mode)
    return spec.build(locate(spec.weights, weights), torch.device(device))


def inception_features(
    files: Sequence[Path],
    extractor: Extractor,
    *,
    mode: str = "legacy_pytorch",
    size: int | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """FID features ``[N, D]`` of image files: resized to `size` (BK-SDM's square bicubic), then the clean-fid
    image pipeline of the :data:`FID_MODES` entry `mode` (resize to 299), then `extractor`."""
    from cleanfid.fid import get_files_features

    return get_files_features(
        [str(f) for f in files],
        model=extractor,
        num_workers=num_workers,
        batch_size=batch_size,
        device=torch.device(device),
        mode=_fid_mode(mode).cleanfid_mode,
        custom_image_tranform=NumpyResize(size) if size else None,
        description="FID features",
        verbose=progress,
    )


@dataclass
class FIDStats:
    """Gaussian statistics of a feature set: mean ``[D]``, covariance ``[D, D]``, sample count and provenance.

    Saved as ``.npz`` with ``mu`` and ``sigma`` (the layout of pytorch-fid's ``--save-stats`` and of BK-SDM's
    ``real_im256.npz``, which :meth:`load` reads too) plus ``count`` and a JSON ``meta``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: np.ndarray, **meta) -> FIDStats:
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images, got {len(features)}")
        feats = np.asarray(features, dtype=np.float64)
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), len(feats), meta)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with open_atomic(path, "wb") as f:
            np.savez(
                f,
                mu=self.mu,
                sigma=self.sigma,
                count=-1 if self.count is None else self.count,
                meta=json.dumps(self.meta),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FIDStats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FID statistics {path} not found; write them with --real DIR --real-stats {path}")
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} holds no FID statistics (needs arrays 'mu' and 'sigma')")
            count = int(data["count"]) if "count" in data and int(data["count"]) >= 0 else None
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            return cls(data["mu"], data["sigma"], count, meta)


def frechet_distance(a: FIDStats, b: FIDStats) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, clean-fid's numerically stable version."""
    from cleanfid.fid import frechet_distance as _frechet

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"FID statistics of different networks: {a.mu.shape[0]} vs {b.mu.shape[0]} features")
    return float(_frechet(a.mu, a.sigma, b.mu, b.sigma))


# ------------------------------------------------------------------------------------------------------------ IS
def load_is_classifier(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Extractor:
    """torch-fidelity's Inception-v3 (``inception-v3-compat``) returning its unbiased logits ``[B, 1008]``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = locate(INCEPTION, weights)
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(path)
    ).to(device)
    return lambda images: net(images)[0]


@torch.no_grad()
def class_logits(
    files: Sequence[Path],
    classifier: Extractor,
    *,
    size: int | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Classifier logits ``[N, C]`` (float64) of image files read as uint8 ``[B, 3, H, W]`` after the resize."""
    loader = image_batches(files, pil_to_tensor, size=size, batch_size=batch_size, num_workers=num_workers)
    batches = tqdm(loader, desc="IS logits", disable=not progress)
    return torch.cat([classifier(images.to(device)).double().cpu() for images in batches])


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over `splits` of the Inception Score of logits ``[N, C]`` (torch-fidelity's
    implementation: samples shuffled with seed 2020, ``exp(mean KL(p(y|x) || p(y)))`` per split)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if len(logits) < splits:
        raise ValueError(f"IS over {splits} splits needs at least {splits} images, got {len(logits)}")
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=2020)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


# ---------------------------------------------------------------------------------------------------------- CLIP
@torch.no_grad()
def clip_scores(
    files: Sequence[Path],
    texts: Sequence[str],
    clip: ClipScorer,
    *,
    size: int | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Cosine similarity ``[N]`` between each image (after the resize and `clip.preprocess`) and its prompt: the CLIP
    score of :meth:`prune_lab.runtime.clip.ClipScorer.similarity`, batched over image files."""
    if len(files) != len(texts):
        raise ValueError(f"{len(files)} images but {len(texts)} prompts")
    loader = image_batches(files, clip.preprocess, size=size, batch_size=batch_size, num_workers=num_workers)
    scores = []
    for b, images in enumerate(tqdm(loader, desc="CLIP score", disable=not progress)):
        batch_texts = texts[b * batch_size : (b + 1) * batch_size]
        scores.append(clip.similarity(images.to(device), batch_texts).double().cpu())
    return torch.cat(scores).numpy()
