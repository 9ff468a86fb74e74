"""Readers for the data prune_lab is given: image-text folders, prompt files, and images.

* An image-text folder (Hugging Face's `imagefolder` layout) holds images plus `metadata.csv` or
  `metadata.jsonl` with the columns `file_name,text`; :func:`read_image_text` lists its rows after checking every
  one (columns present, `file_name` inside the folder, image on disk), naming the file and row of the first problem.
* A prompt file has one prompt per line: :func:`read_prompt_lines` (blank lines skipped, whitespace stripped).
* :func:`read_rgb` opens an image as RGB; :func:`crop_tensor` makes the training / calibration view of it
  (smaller edge resized to R, bilinear with antialiasing, center crop, values in [-1, 1]).

Bad rows, decided once for every reader: a metadata problem (not UTF-8, invalid CSV or JSON, a row without
`file_name` / `text`, a `file_name` outside the folder, a missing image or a folder in its place, a caption over
:data:`MAX_CAPTION_CHARS` characters) is an error naming the file and the row. An image that does not decode is
skipped by training and caching (`distill`, `cache-latents`: each one named in the output, with the count; one
corrupt file should not stop a long run) and refused by `eval` and by calibration (`score`, `width`) through
:func:`check_images` before any model loads (a metric or a score over the readable subset would describe other
images).

Text is read exactly as written (csv / json strings, never type-inferred), so a caption `1.50` stays `1.50`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from .validate import read_text

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
#: Longest caption accepted (characters): far beyond the 77 tokens a CLIP text encoder reads, so only a broken
#: metadata file (a whole document in one cell) trips it.
MAX_CAPTION_CHARS = 4096
COLUMNS = ("file_name", "text")


@dataclass(frozen=True)
class ImageText:
    """One row of an image-text folder.

    Attributes:
        path: the image file (`folder / file_name`).
        file_name: the name as listed in the metadata (relative to the folder).
        text: its caption.
    """

    path: Path
    file_name: str
    text: str


def read_csv_records(path: str | os.PathLike, what: str = "CSV file") -> tuple[list[str], list[dict]]:
    """The header and rows of a CSV file, strictly parsed (an unbalanced quote is an error, not one huge cell).

    Raises:
        FileNotFoundError / ValueError: as :func:`read_text`; invalid CSV (the line named).
    """
    text = read_text(path, what)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        return list(reader.fieldnames or []), list(reader)
    except csv.Error as e:
        raise ValueError(f"{what} {path} line {reader.line_num} is not valid CSV ({e}); check its quotes") from None


def read_prompt_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a prompts file, stripped, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no prompt.
    """
    path = Path(path)
    text = read_text(path, "prompts file", "pass a text file with one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} is empty; put one prompt per line")
    return prompts


def metadata_file(folder: str | os.PathLike) -> Path:
    """The metadata file of an image-text folder (`metadata.csv` first, then `metadata.jsonl`).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: neither metadata file is there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image-text folder {folder} does not exist; pass a folder of images with metadata.csv or "
            "metadata.jsonl (columns file_name,text)"
        )
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if not found:
        raise ValueError(f"{folder} has no captions: add metadata.csv or metadata.jsonl with columns file_name,text")
    return found[0]


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    text = read_text(path, "metadata file")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        for number, row in enumerate(reader, start=1):
            yield f"row {number} (line {reader.line_num})", row
    except csv.Error as e:
        raise ValueError(f"{path} line {reader.line_num} is not valid CSV ({e}); check its quotes") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    text = read_text(path, "metadata file")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for row, (n, line) in enumerate(lines, start=1):
        where = f"row {row} (line {n})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} {where} is not valid JSON ({e.msg}); write one JSON object per line") from None
        except RecursionError:
            raise ValueError(f"{path} {where} is nested too deeply; write one flat JSON object per line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} {where} is not a JSON object; write one object with file_name,text per line")
        yield where, record


def _check_row(meta: Path, where: str, row: dict) -> tuple[str, str]:
    missing = [c for c in COLUMNS if row.get(c) is None or (c == "file_name" and not row[c])]
    if missing:
        raise ValueError(f"{meta} {where} has no {' or '.join(missing)}; every row needs file_name,text")
    if len(str(row["text"])) > MAX_CAPTION_CHARS:
        raise ValueError(
            f"{meta} {where} has a caption of {len(str(row['text']))} characters (at most {MAX_CAPTION_CHARS}; text "
            "encoders read only the first 77 tokens); shorten it"
        )
    name = str(row["file_name"])
    relative = PurePath(os.path.normpath(name))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise ValueError(
            f"{meta} {where} names the image {name!r}, which is not inside {meta.parent}; file_name must be a "
            "path relative to the folder (no absolute paths, no '..')"
        )
    return name, str(row["text"])


def read_image_text(folder: str | os.PathLike) -> list[ImageText]:
    """The rows of an image-text folder, in metadata order, every one checked.

    `file_name` is checked by its spelling (absolute paths and `..` that leave the folder are refused); images may
    be symbolic links to files elsewhere.

    Raises:
        FileNotFoundError: no such folder, or a listed image is missing (the first one, its row, and the count).
        ValueError: no metadata file, a row without `file_name` / `text`, a `file_name` outside the folder,
            invalid JSON, or no rows.
    """
    meta = metadata_file(folder)
    folder = meta.parent
    rows = _csv_rows(meta) if meta.suffix == ".csv" else _jsonl_rows(meta)
    checked = [(where, *_check_row(meta, where, row)) for where, row in rows]
    if not checked:
        raise ValueError(f"{meta} lists no images; add rows file_name,text")
    folders = [(where, name) for where, name, _ in checked if (folder / name).is_dir()]
    if folders:
        where, name = folders[0]
        raise ValueError(f"{meta} {where} lists {name}, which is a folder in {folder}, not an image file")
    missing = [(where, name) for where, name, _ in checked if not (folder / name).is_file()]
    if missing:
        where, name = missing[0]
        raise FileNotFoundError(
            f"{meta} {where} lists {name}, which is not in {folder} ({len(missing)} missing image(s) in all)"
        )
    return [ImageText(folder / name, name, text) for _, name, text in checked]


def check_images(files: Sequence[Path]) -> None:
    """Refuse a folder with an image that does not decode (PIL's `verify`: header and checksums), before any network
    loads: a metric over the readable subset would silently describe other images.

    Raises:
        ValueError: naming the first unreadable file and the count.
    """
    from PIL import Image

    bad = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as e:
            bad.append((path, e))
    if bad:
        path, e = bad[0]
        raise ValueError(
            f"{path} is not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            f"{len(bad)} unreadable in all); regenerate or remove it"
        )


def read_rgb(path: str | os.PathLike):
    """The image at `path` as an RGB `PIL.Image` (the file is closed on return)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def crop_tensor(image, resolution: int):
    """Resize the smaller edge to `resolution` (bilinear, antialiased), center-crop a square, scale to [-1, 1].

    Args:
        image: an RGB `PIL.Image`.
        resolution: the output side R.

    Returns:
        `(pixels, (top, left))`: pixels (3, R, R) float32 in [-1, 1], and the crop's top-left corner in the
        resized image.
    """
    from torchvision.transforms import functional as TF

    image = TF.resize(image, resolution, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    top, left = (image.height - resolution) // 2, (image.width - resolution) // 2
    return TF.to_tensor(TF.center_crop(image, [resolution, resolution])) * 2.0 - 1.0, (top, left)
