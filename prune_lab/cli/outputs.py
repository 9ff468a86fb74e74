"""Output paths checked where they enter: before any model loads or anything is written, as one error naming the flag.

Import-cheap (no torch): subcommands call these first thing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` that is a file (so nothing can be created under it), if any."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_folder(
    flag: str,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    resumable: bool = False,
    keep: bool = False,
) -> Path:
    """Refuse an output folder `flag` before any work (see :func:`prune_lab.runtime.atomic.check_output_folder`).

    Args:
        resumable: a non-empty folder is accepted without `overwrite` when prune_lab wrote it (its marker): the
            command resumes into it.
        keep: the command only adds files and never removes one (`generate`): any folder is accepted.

    Raises:
        FileExistsError: a file at `path` or above it, a folder that may not be replaced or resumed into.
    """
    from ..runtime.atomic import OUTPUT_MARKER, check_output_folder, check_removable

    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        raise FileExistsError(f"{flag} {path}: {blocker} is a file, not a folder; choose another {flag}")
    if keep:
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{flag} {path} exists and is not a folder; choose another {flag}")
        return path
    try:
        if resumable and not overwrite and path.is_dir() and any(path.iterdir()):
            if not (path / OUTPUT_MARKER).is_file():
                raise FileExistsError(
                    f"{path} is not empty and prune_lab did not write it (no {OUTPUT_MARKER}); "
                    "choose an empty or new folder"
                )
            check_removable(path, inputs=inputs)  # never resume into the data or the working directory
            return path
        check_output_folder(path, overwrite=overwrite, inputs=inputs)
    except FileExistsError as e:
        raise FileExistsError(f"{flag} {path}: {e}") from None
    return path


def check_file(flag: str, path: str | os.PathLike) -> Path:
    """Refuse an output file `flag` that is a folder or lies under a file, before any work.

    Raises:
        FileExistsError: `path` is a folder, or a file stands where one of its folders would be.
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{flag} {path} is a folder; give a file path")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise FileExistsError(f"{flag} {path}: {blocker} is a file, not a folder; choose another {flag}")
    return path
