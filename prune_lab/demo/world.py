"""The demo world: procedurally drawn, captioned 32x32 scenes of one coloured shape on a grey background.

Every scene is a pure function of ``(seed, split, index)``: its attributes come from numpy's
``SeedSequence((seed, SPLITS[split], index))``, so the world is unlimited, reproducible sample by sample, and the
splits share no scene seed. A caption names the scene's colour and shape ("a red circle"); the attributes are kept
as ground truth for measuring what a generator or a scorer got right. The continuous variables (size, a small
offset from the centre, background grey level, colour tint) change only pixels.

Shapes are large (radius 27-32% of the side) and near the centre: at the 2x-downsampled latent resolution a circle
and a square of half the size differ by about one latent pixel at the corners, which a 3M-parameter U-Net learned
slowly (an earlier world with three named positions and smaller shapes reached 69% shape accuracy after 1,500
steps, with position at chance).

Rendering is vectorised over a batch: the shape's coverage is computed on a 4x supersampled grid and averaged
down (anti-aliased edges), then the colour is blended over the background.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ..runtime.atomic import atomic_folder

#: Shape colours (RGB in [0, 1]) by caption word.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}

#: Shapes by caption word.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: The attributes a caption names, with their values (the candidates a classifier chooses between).
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES}

#: Split name -> the second entry of every scene's seed sequence (so splits never share a scene seed).
SPLITS: dict[str, int] = {"train": 0, "heldout": 1}

IMAGE_SIZE = 32
SUPERSAMPLE = 4


def caption(colour: str, shape: str) -> str:
    """The caption of a scene, e.g. ``caption("red", "circle") == "a red circle"``."""
    return f"a {colour} {shape}"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in first-use order."""
    words: list[str] = []
    for colour in COLOURS:
        for shape in SHAPES:
            words += [w for w in caption(colour, shape).split() if w not in words]
    return words


@dataclass(frozen=True)
class Scene:
    """One scene: the named attributes (ground truth) and the continuous ones that only change pixels.

    Attributes:
        colour, shape: caption words (keys of :data:`COLOURS`, entries of :data:`SHAPES`).
        cx, cy: shape centre in pixels.
        radius: shape size in pixels (circle radius; squares and triangles are scaled to similar area).
        background: grey level of the background in [0, 1].
        tint: RGB offset added to the shape colour.
    """

    colour: str
    shape: str
    cx: float
    cy: float
    radius: float
    background: float
    tint: tuple[float, float, float]

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape)

    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape}


@dataclass(frozen=True)
class World:
    """The scene distribution, seeded: ``World(seed).scenes("train", 0, 64)`` are always the same 64 scenes."""

    seed: int = 0
    size: int = IMAGE_SIZE

    def scene(self, split: str, index: int) -> Scene:
        """Scene `index` (any integer >= 0) of `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, SPLITS[split], index)))
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        s = self.size
        return Scene(
            colour=colour,
            shape=shape,
            cx=float(s / 2 + rng.uniform(-0.05, 0.05) * s),
            cy=float(s / 2 + rng.uniform(-0.05, 0.05) * s),
            radius=float(rng.uniform(0.27, 0.32) * s),
            background=float(rng.uniform(0.15, 0.45)),
            tint=tuple(float(t) for t in rng.uniform(-0.06, 0.06, size=3)),
        )

    def scenes(self, split: str, start: int, count: int) -> list[Scene]:
        """Scenes ``start .. start + count - 1`` of `split`."""
        return [self.scene(split, i) for i in range(start, start + count)]

    def render(self, scenes: list[Scene]) -> torch.Tensor:
        """Images ``[B, 3, size, size]`` in [0, 1] (float32) of `scenes`."""
        coverage = shape_coverage(scenes, self.size)  # [B, 1, H, W]
        colour = torch.tensor([[c + t for c, t in zip(COLOURS[sc.colour], sc.tint)] for sc in scenes])
        background = torch.tensor([sc.background for sc in scenes])
        fg = colour.clamp(0, 1)[:, :, None, None]
        bg = background[:, None, None, None].expand(-1, 3, 1, 1)
        return bg * (1 - coverage) + fg * coverage

    def batch(self, split: str, start: int, count: int) -> tuple[torch.Tensor, list[Scene]]:
        """Images ``[count, 3, size, size]`` in [0, 1] and their scenes."""
        scenes = self.scenes(split, start, count)
        return self.render(scenes), scenes


def _inside(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean mask of points ``(dx, dy)`` (offsets from the centre, y down) inside `shape` of size `r`."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":  # half-side 0.886 r: the circle's area
        h = 0.886 * r
        return (dx.abs() <= h) & (dy.abs() <= h)
    if shape == "triangle":  # upward equilateral with circumradius 1.4 r
        R = 1.4 * r
        apex, base = -R, R / 2
        half_width = (dy - apex) / (base - apex) * (R * 3**0.5 / 2)
        return (dy >= apex) & (dy <= base) & (dx.abs() <= half_width)
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def shape_coverage(scenes: list[Scene], size: int) -> torch.Tensor:
    """Fraction ``[B, 1, size, size]`` of each pixel covered by its scene's shape (4x4 supersampling)."""
    n = size * SUPERSAMPLE
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    masks = []
    for sc in scenes:
        r = torch.tensor(sc.radius)
        masks.append(_inside(sc.shape, xs - sc.cx, ys - sc.cy, r).float())
    return F.avg_pool2d(torch.stack(masks)[:, None], SUPERSAMPLE)


def write_folder(
    world: World, split: str, start: int, count: int, out: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write scenes ``start .. start + count - 1`` of `split` as an image-text folder: ``NNNNNN.png`` plus
    ``metadata.csv`` (``file_name,text`` and the attributes), the layout that ``prunelab distill --data``,
    ``score --calib-dir``, ``generate --prompts`` and ``eval --real`` read.

    The folder is written aside and renamed into place, so it is either whole or absent.

    Raises:
        FileExistsError: `out` exists and `overwrite` is off.
        ValueError: `count` < 1.
    """
    out = Path(out)
    if count < 1:
        raise ValueError(f"-n must be >= 1, got {count}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    with atomic_folder(out, overwrite=overwrite) as tmp:
        _draw_into(tmp, world, split, start, count)
    return out


def _draw_into(tmp: Path, world: World, split: str, start: int, count: int) -> None:
    rows = []
    for first in range(start, start + count, 256):
        images, scenes = world.batch(split, first, min(256, start + count - first))
        pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, (array, scene) in enumerate(zip(pixels, scenes)):
            name = f"{first + i:06d}.png"
            Image.fromarray(array).save(tmp / name)
            rows.append({"file_name": name, "text": scene.caption, **scene.attributes()})
    pd.DataFrame(rows).to_csv(tmp / "metadata.csv", index=False)
