"""Quality figures of the demo models: how often the CLIP scorer reads a scene's attributes right, and how often a
pipeline draws what its caption says.

Classification is zero-shot CLIP (Radford et al., 2021): for an image meant to show caption ``c`` and an attribute
(colour, shape, position), the candidates are ``c`` with that attribute set to each of its values
(``world.ATTRIBUTES``); the prediction is the candidate with the highest image-text cosine similarity.
For real held-out images the truth is the scene's attributes; for generated images it is the prompt's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import DEMO_DIR
from .clip import normalize
from .world import ATTRIBUTES, World, caption


@dataclass
class Accuracy:
    """Per-attribute and joint classification rates over `n` images (binomial standard errors)."""

    n: int
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> bool [n]

    def rate(self, attribute: str) -> float:
        return float(self.correct[attribute].mean())

    @property
    def joint(self) -> np.ndarray:
        """Colour and shape both right (bool ``[n]``), the rate the quality bar reports next to the separate ones."""
        return self.correct["colour"] & self.correct["shape"]

    def to_frame(self) -> pd.DataFrame:
        """One row per attribute (+ ``colour+shape``): ``accuracy``, ``stderr``, ``n``."""
        rows = [(name, hits) for name, hits in self.correct.items()] + [("colour+shape", self.joint)]
        return pd.DataFrame(
            [
                {
                    "attribute": name,
                    "accuracy": float(h.mean()),
                    "stderr": math.sqrt(h.mean() * (1 - h.mean()) / self.n),
                    "n": self.n,
                }
                for name, h in rows
            ]
        )


class Classifier:
    """Zero-shot attribute classifier over every caption of the world (text embeddings computed once).

    Args:
        model: an open_clip model (the ``demo-clip`` scorer).
        tokenizer: its open_clip tokenizer.
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.values = {a: list(v) for a, v in ATTRIBUTES.items()}
        self.captions = [
            caption(c, s, p) for c in ATTRIBUTES["colour"] for s in ATTRIBUTES["shape"] for p in ATTRIBUTES["position"]
        ]
        with torch.no_grad():
            text = F.normalize(model.encode_text(tokenizer(self.captions)).float(), dim=-1)
        shape = tuple(len(v) for v in ATTRIBUTES.values())
        self.text = text.reshape(*shape, -1)  # [colour, shape, position, D]

    @torch.no_grad()
    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[B, colours, shapes, positions]`` of images ``[B, 3, H, W]`` in [0, 1] with every
        caption."""
        emb = F.normalize(self.model.encode_image(normalize(self.model, images)).float(), dim=-1)
        return torch.einsum("bd,cspd->bcsp", emb, self.text)

    def classify(self, images: torch.Tensor, meant: list[dict[str, str]]) -> dict[str, list[str]]:
        """Predicted value of each attribute for images meant to show the attributes `meant` (one dict each)."""
        sims = self.similarities(images)
        out: dict[str, list[str]] = {a: [] for a in ATTRIBUTES}
        names = list(ATTRIBUTES)
        for b, attrs in enumerate(meant):
            index = [self.values[a].index(attrs[a]) for a in names]
            for axis, a in enumerate(names):
                sel = list(index)
                sel[axis] = slice(None)
                out[a].append(self.values[a][int(sims[b][tuple(sel)].argmax())])
        return out


def _score(classifier: Classifier, batches, n: int, progress: bool, desc: str) -> Accuracy:
    correct = {a: [] for a in ATTRIBUTES}
    with tqdm(total=n, desc=desc, disable=not progress) as bar:
        for images, truth, meant in batches:
            predicted = classifier.classify(images, meant)
            for a in ATTRIBUTES:
                correct[a] += [p == t[a] for p, t in zip(predicted[a], truth)]
            bar.update(len(images))
    return Accuracy(n, {a: np.array(v, dtype=bool) for a, v in correct.items()})


def scorer_accuracy(
    classifier: Classifier,
    world: World,
    n: int = 500,
    *,
    split: str = "heldout",
    batch_size: int = 250,
    progress: bool = False,
) -> Accuracy:
    """How often the scorer reads the attributes of `n` real `split` scenes right (truth: the scenes)."""

    def batches():
        for start in range(0, n, batch_size):
            images, scenes = world.batch(split, start, min(batch_size, n - start))
            attrs = [s.attributes() for s in scenes]
            yield images, attrs, attrs

    return _score(classifier, batches(), n, progress, "scorer accuracy")


def image_seed(seed: int, index: int) -> int:
    """The initial-noise seed of image `index` of a run with base `seed` (independent of batching)."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def generate(pipe, captions: list[str], seeds: list[int], *, steps: int = 20, guidance: float = 5.0) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] for `captions`, image ``i`` from initial noise seeded by ``seeds[i]``."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(
        list(captions), num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="pt"
    )
    return out.images.float().clamp(0, 1)


def generation_accuracy(
    classifier: Classifier,
    pipe,
    world: World,
    n: int = 500,
    *,
    steps: int = 20,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 50,
    split: str = "heldout",
    progress: bool = False,
) -> Accuracy:
    """How often `pipe`'s images for the captions of `n` `split` scenes show what the caption says."""
    pipe.set_progress_bar_config(disable=True)

    def batches():
        for start in range(0, n, batch_size):
            scenes = world.scenes(split, start, min(batch_size, n - start))
            seeds = [image_seed(seed, start + i) for i in range(len(scenes))]
            images = generate(pipe, [s.caption for s in scenes], seeds, steps=steps, guidance=guidance)
            attrs = [s.attributes() for s in scenes]
            yield images, attrs, attrs

    return _score(classifier, batches(), n, progress, "generation accuracy")


def shipped_sizes(root: str | Path | None = None) -> pd.DataFrame:
    """Size of every weights file shipped under the demo package (``size_MB`` per file, largest first)."""
    root = Path(root) if root else DEMO_DIR
    files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file())
    rows = [{"file": str(p.relative_to(root)), "size_MB": p.stat().st_size / 1e6} for p in files]
    return pd.DataFrame(rows, columns=["file", "size_MB"]).sort_values("size_MB", ascending=False, ignore_index=True)


def training_summary(path: str | Path | None = None) -> pd.DataFrame:
    """Per-stage training record written by `prunelab demo-train` (steps, batch, ``wall_min``, ``cpu_min``, loss)."""
    path = Path(path) if path else DEMO_DIR / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; it is written by `prunelab demo-train`")
    record = json.loads(path.read_text())
    rows = [
        {
            "stage": r["stage"],
            "steps": r["steps"],
            "batch": record["config"][r["stage"]]["batch"],
            "wall_min": r["wall_s"] / 60,
            "cpu_min": r["cpu_s"] / 60,
            "final_loss": r["loss"],
        }
        for r in record["stages"]
    ]
    return pd.DataFrame(rows)
