"""The demo world's study metrics, registered with :mod:`prune_lab.study.metrics`: caption accuracy (colour, shape,
both; per prompt) and FID in the demo scorer's embedding space against real held-out scenes."""

from __future__ import annotations

import numpy as np

from ..study.metrics import MetricInputs, StudyMetric, register_metric
from .world import ATTRIBUTES


def _images(inputs: MetricInputs):
    """The generated images ``[n, 3, H, W]`` in [0, 1]."""
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in inputs.files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _classifier(inputs: MetricInputs):
    if "demo-classifier" not in inputs.cache:
        from .quality import Classifier
        from .scorer import load_scorer

        model, _, tokenizer = load_scorer()
        inputs.cache["demo-classifier"] = Classifier(model, tokenizer)
    return inputs.cache["demo-classifier"]


def meant(text: str) -> dict[str, str]:
    """The attributes a world caption names (``"a red circle"`` -> colour red, shape circle).

    Raises:
        ValueError: a prompt that is not a caption of the demo world.
    """
    words = text.split()
    found = {a: next((w for w in words if w in values), None) for a, values in ATTRIBUTES.items()}
    missing = [a for a, v in found.items() if v is None]
    if missing:
        raise ValueError(f"prompt {text!r} names no {', '.join(missing)}; demo metrics need demo-world captions")
    return found


def accuracy(inputs: MetricInputs) -> dict[str, np.ndarray]:
    """Per prompt: does the scorer read the caption's colour, shape, and both off the image (1.0 / 0.0)."""
    truth = [meant(t) for t in inputs.prompts["text"]]
    predicted = _classifier(inputs).classify(_images(inputs))
    correct = {a: np.array([p == t[a] for p, t in zip(predicted[a], truth)], dtype=float) for a in ATTRIBUTES}
    return {"colour+shape": correct["colour"] * correct["shape"], **correct}


def demo_fid(inputs: MetricInputs) -> dict[str, float]:
    """FID in the demo scorer's space against the real held-out scenes 0..n of world seed 0 (as `demo-run`)."""
    from .run_eval import fid
    from .world import World

    n = len(inputs.files)
    if ("demo-real", n) not in inputs.cache:
        inputs.cache["demo-real", n] = World(0).batch("heldout", 0, n)[0]
    return {"demo_fid": fid(_classifier(inputs).model, _images(inputs), inputs.cache["demo-real", n])}


register_metric(
    "demo-accuracy",
    StudyMetric(
        accuracy,
        ("colour+shape", "colour", "shape"),
        {"colour+shape": True, "colour": True, "shape": True},
        description="demo world: the demo-clip scorer reads the caption's colour / shape (per prompt)",
    ),
)
register_metric(
    "demo-fid",
    StudyMetric(
        demo_fid, ("demo_fid",), {"demo_fid": False}, description="demo world: FID in demo-clip space vs real scenes"
    ),
)
