"""Quality figures of the demo models: how often the CLIP scorer reads a scene's attributes right, and how often a
pipeline draws what its caption says.

Classification is zero-shot CLIP (Radford et al., 2021) over the world's captions (:data:`CANDIDATES`):

* ``all`` (default): an attribute value scores its best caption's image-text cosine similarity (the maximum over
  the other attributes), so the prediction is read off the best-matching caption of the whole world: a generated
  image that draws the right shape in the wrong colour still counts as right on shape.
* ``varied``: for an image meant to show caption ``c``, the candidates for an attribute are ``c`` with that
  attribute set to each of its values (the other attributes taken from ``c``).

For real held-out images the truth is the scene's attributes; for generated images it is the prompt's.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..runtime.atomic import write_json, write_text
from ..runtime.clip import normalize_images
from ..runtime.tables import render
from . import DEMO_DIR
from .world import ATTRIBUTES, World, caption

#: How the candidate captions of an attribute are chosen (see the module docstring).
CANDIDATES = ("all", "varied")


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
        self.captions = [caption(*combo) for combo in itertools.product(*ATTRIBUTES.values())]
        with torch.no_grad():
            text = F.normalize(model.encode_text(tokenizer(self.captions)).float(), dim=-1)
        self.text = text.reshape(*(len(v) for v in ATTRIBUTES.values()), -1)  # [values of each attribute..., D]

    @torch.no_grad()
    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[B, colours, shapes]`` (one axis per attribute) of images ``[B, 3, H, W]`` in [0, 1]
        with every caption."""
        emb = F.normalize(self.model.encode_image(normalize_images(self.model, images)).float(), dim=-1)
        return (emb @ self.text.flatten(0, -2).t()).reshape(len(emb), *self.text.shape[:-1])

    def classify(self, images: torch.Tensor, meant: list[dict[str, str]] | None = None) -> dict[str, list[str]]:
        """Predicted value of each attribute for images ``[B, 3, H, W]`` in [0, 1].

        Without `meant`, a value's score is its best caption's similarity (the maximum over the other attributes),
        i.e. the attributes of the single best-matching caption of the world. With `meant` (one dict of
        attributes per image), the candidates for an attribute are the meant caption with that attribute varied.
        """
        sims = self.similarities(images)  # [B, *values]
        names = list(ATTRIBUTES)
        out: dict[str, list[str]] = {}
        for axis, a in enumerate(names):
            if meant is None:
                others = tuple(d + 1 for d in range(len(names)) if d != axis)
                scores = sims.amax(dim=others) if others else sims  # [B, values]
            else:
                index = [
                    tuple(slice(None) if d == axis else self.values[n].index(m[n]) for d, n in enumerate(names))
                    for m in meant
                ]
                scores = torch.stack([sims[b][i] for b, i in enumerate(index)])
            out[a] = [self.values[a][i] for i in scores.argmax(dim=1).tolist()]
        return out


def _score(classifier: Classifier, batches, n: int, progress: bool, desc: str, candidates: str) -> Accuracy:
    if candidates not in CANDIDATES:
        raise ValueError(f"unknown candidates {candidates!r}; choose one of {', '.join(CANDIDATES)}")
    correct = {a: [] for a in ATTRIBUTES}
    with tqdm(total=n, desc=desc, disable=not progress) as bar:
        for images, truth, meant in batches:
            predicted = classifier.classify(images, meant if candidates == "varied" else None)
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
    candidates: str = "all",
    progress: bool = False,
) -> Accuracy:
    """How often the scorer reads the attributes of `n` real `split` scenes right (truth: the scenes)."""

    def batches():
        for start in range(0, n, batch_size):
            images, scenes = world.batch(split, start, min(batch_size, n - start))
            attrs = [s.attributes() for s in scenes]
            yield images, attrs, attrs

    return _score(classifier, batches(), n, progress, "scorer accuracy", candidates)


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
    candidates: str = "all",
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

    return _score(classifier, batches(), n, progress, "generation accuracy", candidates)


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


# ------------------------------------------------------------------------------------------ measurement, report
@dataclass
class QualityRun:
    """What :func:`measure_quality` measured.

    Attributes:
        settings: model, sampling, seeds, threads, machine, and the seconds each part took (`scorer_s`,
            `generation_s`).
        scorer: the scorer's accuracy on held-out real images (:meth:`Accuracy.to_frame`).
        generation: the pipeline's caption accuracy on held-out captions.
    """

    settings: dict
    scorer: pd.DataFrame
    generation: pd.DataFrame

    def record(self) -> dict:
        """JSON-ready: the settings and both tables as records."""
        return {
            "settings": self.settings,
            "scorer": self.scorer.to_dict("records"),
            "generation": self.generation.to_dict("records"),
        }


def measure_quality(
    model: str = "demo",
    *,
    n: int = 500,
    world_seed: int = 0,
    scheduler: str,
    steps: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 50,
    clip_checkpoint: str | Path | None = None,
    progress: bool = True,
) -> QualityRun:
    """The shipped scorer's accuracy on `n` held-out real scenes, and `model`'s caption accuracy on the captions
    of `n` held-out scenes (image i from the initial noise of :func:`image_seed` ``(seed, i)``).

    Args:
        model: `demo`, `demo-dit` or a pipeline folder.
        clip_checkpoint: the scorer's weights (default: the shipped `demo-clip`).
    """
    from ..evaluation.generate import load_pipeline
    from .scorer import CLIP_CHECKPOINT, load_scorer

    world = World(world_seed)
    clip, _, tokenizer = load_scorer(clip_checkpoint or CLIP_CHECKPOINT)
    classifier = Classifier(clip, tokenizer)
    t0 = time.perf_counter()
    real = scorer_accuracy(classifier, world, n, progress=progress).to_frame()
    t1 = time.perf_counter()
    pipe = load_pipeline(model, scheduler=scheduler)
    generated = generation_accuracy(
        classifier, pipe, world, n, steps=steps, guidance=guidance, seed=seed, batch_size=batch_size, progress=progress
    ).to_frame()
    settings = dict(
        model=str(model),
        n=n,
        world_seed=world_seed,
        scheduler=scheduler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        scorer_s=t1 - t0,
        generation_s=time.perf_counter() - t1,
    )
    return QualityRun(settings, real, generated)


def _pct(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["accuracy"] = [f"{100 * a:.1f}%" for a in frame.accuracy]
    out["stderr"] = [f"{100 * s:.1f}%" for s in frame.stderr]
    return out


def quality_report(
    run: QualityRun, command: str, training: pd.DataFrame | None = None, sizes: pd.DataFrame | None = None
) -> str:
    """The Markdown report of `run` (`command` regenerates it), with the training record and shipped sizes."""
    s = run.settings
    lines = [
        "# Demo world: quality of the shipped models",
        "",
        f"Regenerate with `{command}` (took {s['scorer_s'] / 60:.1f} + {s['generation_s'] / 60:.1f} min on "
        f"{s['machine']}, {s['threads']} torch thread(s)).",
        "",
        "Classification is zero-shot CLIP with the shipped scorer `demo-clip`: an image's predicted attributes are "
        "those of the world's caption most similar to it (each attribute read separately, so a right shape in "
        "the wrong colour counts as right on shape). Standard errors are binomial.",
        "",
        f"## Scorer on {s['n']} held-out real images (world seed {s['world_seed']})",
        "",
        render(_pct(run.scorer), "markdown"),
        "",
        f"## Model `{s['model']}` on the captions of {s['n']} held-out scenes",
        "",
        f"Sampler `{s['scheduler']}`, {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']} (image i: "
        "initial noise from `SeedSequence((seed, i))`); an image counts as right when the scorer reads the "
        "caption's value.",
        "",
        render(_pct(run.generation), "markdown"),
        "",
        QUALITY_BARS.get(s["model"], QUALITY_BARS["demo"]),
    ]
    if training is not None:
        lines += [
            "",
            "## Training (`prunelab demo-train`, its record in `prune_lab/demo/`)",
            "",
            render(training.round(3), "markdown"),
        ]
    if sizes is not None:
        lines += ["", f"## Shipped weights: {sizes.size_MB.sum():.1f} MB", "", render(sizes.round(2), "markdown")]
    return "\n".join([*lines, ""])


#: The quality bar each built-in model's report states (others: the `demo` one).
QUALITY_BARS = {
    "demo": "Quality bar (issue 8): scorer >= 95% on colour and shape of real images; teacher >= 80% on colour and "
    "on shape separately.",
    "demo-dit": "Quality bar (issue 18): scorer >= 95% on colour and shape of real images; demo-dit >= 90% on colour "
    "and on shape separately.",
}

#: Training record and shipped weights folder of the built-in models (others: the `demo` ones).
SHIPPED = {"demo": ("training.json", "."), "demo-dit": ("training-dit.json", "pipeline-dit")}


def write_quality_report(run: QualityRun, out: str | Path, command: str) -> tuple[Path, Path]:
    """Write the Markdown report to `out` and the record as JSON beside it (`.json`), atomically.

    The report includes the model's training record when it is installed (`training.json`, `training-dit.json` for
    `demo-dit`), and the shipped weights' sizes (the whole demo package; `demo-dit`: its pipeline folder).

    Returns:
        the two paths written.
    """
    out = Path(out)
    record, weights = SHIPPED.get(run.settings["model"], SHIPPED["demo"])
    try:
        training = training_summary(DEMO_DIR / record)
    except FileNotFoundError:
        training = None
    write_text(out, quality_report(run, command, training, shipped_sizes(DEMO_DIR / weights)))
    return out, write_json(out.with_suffix(".json"), run.record())
