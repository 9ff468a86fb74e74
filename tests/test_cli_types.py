"""prune_lab.cli.types: argparse validators refuse bad values with a message naming the problem."""

from __future__ import annotations

import argparse

import pytest

from prune_lab.cli import types as T


@pytest.mark.parametrize(
    "fn,good,bad",
    [
        (T.positive_int, [("1", 1), ("12", 12)], ["0", "-3", "1.5", "x"]),
        (T.non_negative_int, [("0", 0), ("7", 7)], ["-1", "nan"]),
        (T.seed, [("0", 0), (str(T.MAX_SEED), T.MAX_SEED)], ["-1", str(T.MAX_SEED + 1)]),
        (T.finite_float, [("-2.5", -2.5), ("1e-3", 1e-3)], ["nan", "inf", "-inf", "x"]),
        (T.positive_float, [("0.1", 0.1)], ["0", "-1", "nan"]),
        (T.non_negative_float, [("0", 0.0)], ["-0.5", "inf"]),
        (T.fraction, [("0", 0.0), ("1", 1.0), ("0.25", 0.25)], ["1.01", "-0.1"]),
        (T.device, [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("mps", "mps")], ["gpu", "cuda:x", ""]),
        (T.non_empty, [("a", "a")], ["", "  "]),
    ],
)
def test_validators(fn, good, bad):
    for text, value in good:
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)
