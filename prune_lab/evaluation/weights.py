"""Pretrained files the metrics need, found locally first.

Each :class:`WeightsFile` names the file, where the tools that use it cache it, where it is published, and the CLI
flag that points at a local copy. :func:`locate` returns a local path: the flag's file, else a cached copy, else a
download into torch's hub cache. With ``HF_HUB_OFFLINE=1`` or ``PRUNELAB_OFFLINE=1`` (the tests set the first)
nothing is downloaded, and a missing file is a one-line :class:`FileNotFoundError` naming the flag.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

OFFLINE_VARIABLES = ("PRUNELAB_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained file: `filename` as published at `url`, also cached as any of `aliases`; `flag` takes a path."""

    what: str
    filename: str
    url: str
    flag: str
    aliases: tuple[str, ...] = ()
    #: a pickled state dict (`.pth`): checked with `torch.load(weights_only=True)` before a library unpickles it
    state_dict: bool = False

    def hint(self) -> str:
        return f"pass {self.flag} PATH to a local {self.filename} ({self.url})"


#: pytorch-fid's Inception-v3 port of the 2015 TF graph; torch-fidelity publishes the same tensors as
#: ``weights-inception-2015-12-05-6726825d.pth``. FID in ``legacy_pytorch`` mode (pytorch-fid, as BK-SDM) and IS.
INCEPTION = WeightsFile(
    "Inception-v3 weights (pytorch-fid / torch-fidelity)",
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "--inception",
    aliases=("weights-inception-2015-12-05-6726825d.pth",),
    state_dict=True,
)

#: NVIDIA's TorchScript export of the same network: FID in clean-fid's ``clean`` mode.
INCEPTION_TORCHSCRIPT = WeightsFile(
    "Inception-v3 TorchScript (clean-fid)",
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    "--inception-torchscript",
)


def offline() -> bool:
    """Whether downloads are off (:data:`OFFLINE_VARIABLES` set to 1/true/yes/on)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def _cache_dirs() -> list[Path]:
    # torch hub (pytorch-fid, torch-fidelity) and the folder clean-fid downloads its TorchScript model to
    return [Path(torch.hub.get_dir()) / "checkpoints", Path(tempfile.gettempdir())]


def locate(spec: WeightsFile, path: str | os.PathLike | None = None, *, progress: bool = False) -> Path:
    """A local copy of `spec`: `path` if given, else a cached copy, else downloaded (unless offline).

    Raises:
        FileNotFoundError: `path` does not exist, or no copy is cached and downloading is off or fails.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{spec.flag} {path}: no such file (expected {spec.what}, {spec.filename})")
        if spec.state_dict:
            check_state_dict(path, spec)
        return path
    for folder in _cache_dirs():
        for name in (spec.filename, *spec.aliases):
            if (folder / name).is_file():
                return folder / name
    if offline():
        raise FileNotFoundError(f"{spec.what} not found locally and downloads are off; {spec.hint()}")
    target = _cache_dirs()[0] / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(target), progress=progress)
    except (OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"{spec.what} could not be downloaded ({reason}); {spec.hint()}") from None
    return target


def check_state_dict(path: Path, spec: WeightsFile) -> None:
    """Refuse a user's weights file unless it unpickles as plain tensors (`weights_only=True`), before torch-fidelity
    or clean-fid load it without that guard.

    Raises:
        ValueError: the file holds code or other objects, or is not a torch file (the flag and file named).
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{spec.flag} {path} is not a plain weights file ({reason[:160]}); {spec.hint()}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{spec.flag} {path} holds a {type(state).__name__}, not a state dict; {spec.hint()}")


@contextmanager
def as_file_named(path: Path, filename: str) -> Iterator[Path]:
    """`path` linked as ``TMP/checkpoints/filename`` (for loaders that take a folder or a torch hub cache)."""
    with tempfile.TemporaryDirectory(prefix="prunelab-weights-") as tmp:
        link = Path(tmp) / "checkpoints" / filename
        link.parent.mkdir()
        os.symlink(Path(path).resolve(), link)
        yield link


@contextmanager
def torch_hub_dir(folder: Path) -> Iterator[None]:
    """Point torch's hub cache at `folder` for a while (its ``checkpoints/`` serves ``load_state_dict_from_url``)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub.set_dir(old)
