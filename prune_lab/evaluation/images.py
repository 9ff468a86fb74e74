"""Image folders: listing, pairing images with prompts, the evaluation resize, and batched loading.

The resize is BK-SDM's (Kim et al., 2023): a square PIL bicubic resize of the whole image (no crop), applied in
memory to generated and real images alike before any metric sees them (512 -> 256 in the paper's protocol).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..runtime.readers import read_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_name(file_name: str, ext: str = "png") -> str:
    """The generated image's file name for a prompt row: the stem of `file_name` plus `ext`."""
    return f"{Path(str(file_name)).stem}.{ext.lstrip('.')}"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def paired_images(folder: str | os.PathLike, prompts: pd.DataFrame) -> list[Path]:
    """The image of every prompt row, in row order, matched by file stem (any image extension).

    Raises:
        FileNotFoundError: some rows have no image; the message says how many and which one comes first.
    """
    by_stem = {p.stem: p for p in list_images(folder)}
    names = [str(name) for name in prompts["file_name"]]
    missing = [n for n in names if Path(n).stem not in by_stem]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(names)} images named by the prompt file are missing from "
            f"{folder} (first: {missing[0]}); finish them with prunelab generate (it resumes)"
        )
    return [by_stem[Path(n).stem] for n in names]


def resize_image(img: Image.Image, size: int | None) -> Image.Image:
    """Square bicubic resize to `size` x `size` (None: unchanged), as BK-SDM's ``change_img_size``."""
    if size is None or img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC)


class NumpyResize:
    """:func:`resize_image` on HxWx3 uint8 arrays: clean-fid's ``custom_image_tranform`` hook (picklable)."""

    def __init__(self, size: int | None):
        self.size = size

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(resize_image(Image.fromarray(img), self.size))


class ImageFiles(Dataset):
    """Images read as RGB, resized by :func:`resize_image`, then passed through `transform`."""

    def __init__(self, files: Sequence[Path], size: int | None, transform: Callable[[Image.Image], torch.Tensor]):
        self.files, self.size, self.transform = list(files), size, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(resize_image(read_rgb(self.files[i]), self.size))


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size ({sorted(shapes)[:2]} ...); pass --resize N")
    return torch.stack(items)


def image_batches(
    files: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    size: int | None,
    batch_size: int,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of transformed images in file order (images of different sizes raise ValueError: pass a resize)."""
    return DataLoader(
        ImageFiles(files, size, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_stack,
    )
