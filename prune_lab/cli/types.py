"""Argparse `type=` validators: a bad flag value is refused while parsing, as one line that names the flag.

They import nothing heavy (parsers and `--help` stay import-cheap). Argparse reports a `ValueError` /
`ArgumentTypeError` from them as `prunelab CMD: error: argument --flag: <message>` with exit code 2.
"""

from __future__ import annotations

import argparse
import math
import re

#: Largest seed torch and numpy both accept.
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(cpu|mps|meta|xpu|cuda(:\d+)?)$")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed: 0 .. 2**32 - 1."""
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, got {value}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def device(text: str) -> str:
    """A torch device name (`cpu`, `cuda`, `cuda:1`, `mps`); whether it exists is checked when the command runs."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps")
    return text


def non_empty(text: str) -> str:
    """A non-empty string (paths: an empty `--out ''` is refused)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
