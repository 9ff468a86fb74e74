"""The demo world: procedurally drawn, captioned 32x32 scenes of one coloured shape on a grey background.

Every scene is a pure function of ``(seed, split, index)``: its attributes come from numpy's
``SeedSequence((seed, SPLITS[split], index))``, so the world is unlimited, reproducible sample by sample, and the
splits share no scene seed. A caption names the scene's colour, shape and position ("a red circle on the left");
the attributes are kept as ground truth for measuring what a generator or a scorer got right.

Rendering is vectorised over a batch: the shape's coverage is computed on a 4x supersampled grid and averaged
down (anti-aliased edges), then the colour is blended over the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Shape colours (RGB in [0, 1]) by caption word.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}

#: Shapes by caption word.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Positions by name: (caption phrase, horizontal centre as a fraction of the width).
POSITIONS: dict[str, tuple[str, float]] = {
    "left": ("on the left", 0.28),
    "middle": ("in the middle", 0.50),
    "right": ("on the right", 0.72),
}

#: The attributes a caption names, with their values (the candidates a classifier chooses between).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
}

#: Split name -> the second entry of every scene's seed sequence (so splits never share a scene seed).
SPLITS: dict[str, int] = {"train": 0, "heldout": 1}

IMAGE_SIZE = 32
SUPERSAMPLE = 4


def caption(colour: str, shape: str, position: str) -> str:
    """The caption of a scene, e.g. ``caption("red", "circle", "left") == "a red circle on the left"``."""
    return f"a {colour} {shape} {POSITIONS[position][0]}"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in first-use order."""
    words: list[str] = []
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                words += [w for w in caption(colour, shape, position).split() if w not in words]
    return words


@dataclass(frozen=True)
class Scene:
    """One scene: the named attributes (ground truth) and the continuous ones that only change pixels.

    Attributes:
        colour, shape, position: caption words (keys of :data:`COLOURS`, :data:`SHAPES`, :data:`POSITIONS`).
        cx, cy: shape centre in pixels.
        radius: shape size in pixels (circle radius; squares and triangles are scaled to similar area).
        background: grey level of the background in [0, 1].
        tint: RGB offset added to the shape colour.
    """

    colour: str
    shape: str
    position: str
    cx: float
    cy: float
    radius: float
    background: float
    tint: tuple[float, float, float]

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.position)

    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape, "position": self.position}


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
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        s = self.size
        return Scene(
            colour=colour,
            shape=shape,
            position=position,
            cx=float(POSITIONS[position][1] * s + rng.uniform(-0.04, 0.04) * s),
            cy=float(s / 2 + rng.uniform(-0.12, 0.12) * s),
            radius=float(rng.uniform(0.20, 0.26) * s),
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
