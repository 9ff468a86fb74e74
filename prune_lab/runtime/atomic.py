"""The one atomic writer: every file and folder prune_lab writes appears whole or not at all.

Each writer puts its output in a temporary sibling (`.NAME.<random>.tmp`, same folder, so the final
`os.replace` is a rename on one file system) and renames it into place at the end; on any failure, the
temporary is removed and the destination is exactly as it was. Folders are written through
:func:`atomic_folder`, which yields the temporary folder to fill.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _remove(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` when the block succeeds.

    Args:
        path: the destination file (its parent folder is created).
        suffix: the temporary's suffix (default: `path`'s own, so writers that infer a format from it work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix if suffix is None else suffix
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path` (for writers that take a path: savefig, save_file)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, **kwargs) -> Path:
    """Write `data` as JSON (trailing newline) to `path` atomically; `kwargs` go to `json.dumps`."""
    return write_text(path, json.dumps(data, indent=indent, **kwargs) + "\n")


def write_csv(path: str | os.PathLike, frame, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV to `path` atomically (`index=False` unless given)."""
    kwargs.setdefault("index", False)
    return write_with(path, lambda tmp: frame.to_csv(tmp, **kwargs))


def write_figure(path: str | os.PathLike, figure, **kwargs) -> Path:
    """Save a matplotlib figure to `path` atomically; the format comes from `path`'s suffix, never the temporary's."""
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or None
    return write_with(path, lambda tmp: figure.savefig(tmp, format=fmt, **kwargs))


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open` a temporary beside `path` for writing; it replaces `path` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


#: Written into every folder prune_lab creates, so that `--overwrite` can prove a folder is its own before removing it.
OUTPUT_MARKER = ".prunelab-output"


def check_removable(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse (FileExistsError) to remove `path` unless it is a folder prune_lab wrote and holds nothing the run reads.

    A folder qualifies when it holds :data:`OUTPUT_MARKER` and is neither the file-system root, the working
    directory or one of its parents, an input of the run, nor a parent of one.
    """
    path = Path(path).resolve()
    here = Path.cwd().resolve()
    if path == Path(path.anchor) or path == here or path in here.parents:
        raise FileExistsError(
            f"refusing to replace {path}: it is the working directory, a parent of it, or /; "
            "choose another output folder"
        )
    for item in inputs:
        item = Path(item).resolve()
        if item == path or path in item.parents:
            raise FileExistsError(
                f"refusing to replace {path}: it holds the input {item}; choose another output folder"
            )
    if not (path / OUTPUT_MARKER).is_file():
        raise FileExistsError(
            f"refusing to replace {path}: prune_lab did not write it (no {OUTPUT_MARKER}); "
            "remove it yourself or choose another output folder"
        )


def check_output_folder(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> None:
    """Refuse an output folder before any work: a file there, or a non-empty folder that may not be replaced.

    Raises:
        FileExistsError: `path` is a file; or a non-empty folder, without `overwrite` or not :func:`check_removable`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {path} exists and is not empty; pass --overwrite or another --out")
        check_removable(path, inputs=inputs)


@contextmanager
def atomic_folder(
    path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it becomes `path`, marked as prune_lab's, when the block ends.

    Args:
        path: the destination folder; if it exists and is not empty it is replaced only with `overwrite`, and only
            when :func:`check_removable` allows it (checked before any work).
        inputs: what the run reads (never replaced, nor a folder holding one).

    Raises:
        FileExistsError: `path` is a file, or a non-empty folder that may not be replaced.
    """
    path = Path(path)
    check_output_folder(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.mkdir(exist_ok=True)
        (tmp / OUTPUT_MARKER).write_text("written by prune_lab; --overwrite may replace this folder\n")
        if path.exists():
            shutil.rmtree(path) if any(path.iterdir()) else path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
