"""What every subcommand checks where its flags enter, before any model loads or anything is written, as one error
naming the flag: output paths (folders, files, figures), devices; and the shared help strings.

Import-cheap (no torch at import): subcommands call these first thing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .types import non_empty

#: Help of every `--preset` flag (the preset names live with the presets; listing them here would import torch).
PRESET_HELP = "a published architecture: `prunelab presets --model M` lists the ones that fit M, with their sizes"

MODEL_HELP = (
    "demo (the shipped trained miniature pipeline), a built-in architecture (sd-v1, sd-v2-base, sd-v2, sdxl: random "
    "weights), a pipeline or U-Net folder, an export of `prunelab apply`, or a hub id"
)


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

    path, inputs = Path(path), [i for i in inputs if i]  # flags not given are None
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


def out_path(text: str) -> Path:
    """Argparse `type=` of an output path: a non-empty string, as a Path."""
    return Path(non_empty(text))


def check_figure_path(path: Path, flag: str) -> Path:
    """:func:`check_file`, and a suffix matplotlib can write (png, pdf, svg ...)."""
    from matplotlib.figure import Figure

    check_file(flag, path)
    formats = Figure().canvas.get_supported_filetypes()
    if not path.suffix:
        raise ValueError(f"{flag} {path} has no suffix; add one of .png, .pdf, .svg (the figure's format)")
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"{flag} {path}: matplotlib cannot write {path.suffix} figures; use one of {', '.join(sorted(formats))}"
        )
    return path


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse, before any work, a CUDA / MPS device this machine does not have (naming `flag`)."""
    if not device or device in ("cpu", "meta"):
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{flag} {device}: CUDA is not available on this machine; use {flag} cpu")
    if device.startswith("cuda") and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} mps: MPS is not available on this machine; use {flag} cpu")


@contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """diffusers' and transformers' loading progress bars off while the block runs unless `enabled` (`--quiet`)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in libraries if not enabled else ():
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was in libraries:
            module.enable_progress_bar() if was else module.disable_progress_bar()


def model_inputs(model: str) -> list[Path]:
    """The local files a `--model` value reads (none for a built-in architecture or a hub id)."""
    from ..models import resolve_model

    path = Path(resolve_model(model))
    return [path] if path.exists() else []


def add_model_arg(p) -> None:
    """The required `--model` flag, with the help every subcommand shows."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
