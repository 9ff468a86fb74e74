"""Prompt files and MS-COCO caption sampling.

A prompt set is a DataFrame with one row per image to generate, in a fixed order (the row index is the prompt
index that seeds generation, see :mod:`prune_lab.evaluation.generate`):

* ``text``: the prompt;
* ``file_name``: the image name; its stem names the generated image (``COCO_val2014_000000000042.jpg`` ->
  ``COCO_val2014_000000000042.png``). Prompt files without one get ``000000``, ``000001``, ...

Files on disk are either a CSV with a ``text`` column and optionally ``file_name`` (BK-SDM's ``metadata.csv``
has exactly these columns) or a ``.txt`` with one prompt per line (blank lines are skipped;
:func:`prune_lab.runtime.readers.read_prompt_lines`).

COCO sampling (:func:`coco_captions`) follows the zero-shot protocol of BK-SDM (Kim et al., 2023,
arXiv:2305.15798, after GALIP / Imagen): a random subset of the images of the val2014 split with one caption each.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime.atomic import write_csv
from ..runtime.readers import MAX_CAPTION_CHARS, read_csv_records, read_prompt_lines
from ..runtime.validate import need, read_json

PROMPT_COLUMNS = ["file_name", "text"]


def _default_names(n: int) -> list[str]:
    return [f"{i:06d}" for i in range(n)]


def _check(df: pd.DataFrame, source: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"{source} holds no prompts")
    if df["text"].isna().any():
        empty = df["text"].isna()
        raise ValueError(f"{source} has {int(empty.sum())} empty prompts (first: row {empty.idxmax()})")
    long = df["text"].map(len) > MAX_CAPTION_CHARS
    if long.any():
        raise ValueError(
            f"{source} row {long.idxmax() + 1} has a prompt of {len(df['text'][long.idxmax()])} characters (at most "
            f"{MAX_CAPTION_CHARS}; text encoders read only the first 77 tokens); shorten it"
        )
    stems = df["file_name"].map(lambda name: Path(str(name)).stem)
    if stems.duplicated().any():
        raise ValueError(
            f"{source} names the image {stems[stems.duplicated()].iloc[0]!r} twice; file_name must be "
            "unique (one image per row)"
        )
    return df.reset_index(drop=True)


def read_prompts(path: str | os.PathLike) -> pd.DataFrame:
    """Read a prompt file (CSV with a ``text`` column, or ``.txt`` with one prompt per line).

    Returns:
        DataFrame with columns ``file_name`` and ``text``, one row per prompt, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no ``text`` column, empty prompts, or duplicate image names.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"prompt file {path} does not exist (make one with prunelab coco-prompts, or a .txt "
            "with one prompt per line)"
        )
    if path.suffix.lower() == ".csv":
        columns, records = read_csv_records(path, "prompt file")
        df = pd.DataFrame(records, columns=columns, dtype=str)
        df = df.mask(df == "")  # an empty cell is a missing value, as pandas' reader has it
        if "text" not in df.columns:
            raise ValueError(
                f"{path} has no 'text' column (columns: {', '.join(map(str, df.columns))}); a prompt CSV "
                "needs 'text' and optionally 'file_name'"
            )
        if "file_name" not in df.columns:
            df["file_name"] = _default_names(len(df))
    else:
        texts = read_prompt_lines(path)
        df = pd.DataFrame({"file_name": _default_names(len(texts)), "text": texts})
    return _check(df[PROMPT_COLUMNS], str(path))


def write_prompts(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a prompt set as CSV (``file_name``, ``text`` first, then any extra columns), atomically."""
    columns = PROMPT_COLUMNS + [c for c in df.columns if c not in PROMPT_COLUMNS]
    return write_csv(path, df[columns])


def _captions_by_image(annotations: list, path: Path) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for i, ann in enumerate(annotations):
        where = f"{path} annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where} is not an object with image_id, id and caption")
        need(ann, "image_id", int, where)
        need(ann, "id", int, where)
        need(ann, "caption", str, where)
        by_image[ann["image_id"]].append(ann)
    return by_image


def _image_names(images: list, path: Path) -> dict[int, str]:
    names = {}
    for i, img in enumerate(images):
        where = f"{path} images[{i}]"
        if not isinstance(img, dict):
            raise ValueError(f"{where} is not an object with id and file_name")
        names[need(img, "id", int, where)] = need(img, "file_name", str, where)
    return names


def coco_captions(annotations: str | os.PathLike, n: int | None = 30_000, seed: int = 0) -> pd.DataFrame:
    """Sample one caption for each of `n` random images of a COCO captions file (e.g. ``captions_val2014.json``).

    Sampling, reproducible from `seed`: images (those with at least one caption) are sorted by id; a
    ``numpy.random.default_rng(seed)`` draws `n` of them without replacement, then one caption per drawn image
    uniformly (captions sorted by annotation id). Rows come out sorted by image id; whitespace in captions (newlines
    included) is collapsed to single spaces.

    Args:
        annotations: the COCO ``captions_*.json`` file.
        n: how many images (30 000 or 5 000 in BK-SDM's Table 1); None takes all of them.
        seed: sampling seed.

    Returns:
        DataFrame with columns ``file_name`` (the COCO image file), ``text``, ``image_id``, ``caption_id``.
    """
    path = Path(annotations)
    if not path.exists():
        raise FileNotFoundError(
            f"--annotations {path} not found; pass annotations/captions_val2014.json from annotations_trainval2014.zip"
        )
    data = read_json(path, "--annotations COCO captions file")
    if "annotations" not in data or "images" not in data:
        raise ValueError(f"--annotations {path} is not a COCO captions file (needs 'images' and 'annotations')")
    by_image = _captions_by_image(need(data, "annotations", list, str(path)), path)
    names = _image_names(need(data, "images", list, str(path)), path)
    ids = np.array(sorted(i for i in by_image if i in names), dtype=np.int64)
    n = len(ids) if n is None else n
    if not 0 < n <= len(ids):
        raise ValueError(f"--n {n} is out of range: {path} has {len(ids)} captioned images")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ids, size=n, replace=False))
    rows = []
    for image_id in chosen.tolist():
        captions = sorted(by_image[image_id], key=lambda a: int(a["id"]))
        ann = captions[int(rng.integers(len(captions)))]
        rows.append(
            {
                "file_name": names[image_id],
                "text": " ".join(ann["caption"].split()),
                "image_id": image_id,
                "caption_id": ann["id"],
            }
        )
    return pd.DataFrame(rows)
