"""The study's statistics: paired differences on shared samples, and the rank correlation between what a plan lost
and what its student achieved, with an exact or Monte-Carlo permutation p-value. numpy only."""

from __future__ import annotations

import itertools
import math

import numpy as np

#: Up to this many arms, the permutation test enumerates every ordering; above, it samples `draws` of them.
EXACT_ARMS = 8


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of ``a - b`` over shared samples ``[n]`` and its standard error ``sd(a - b, ddof=1) / sqrt(n)``.

    Raises:
        ValueError: the arrays differ in length or hold fewer than two samples.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired samples need two equal 1-D arrays of >= 2 values, got {a.shape} and {b.shape}")
    d = a - b
    return {"difference": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))), "n": len(d)}


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x`, ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of `x` and `y` (Pearson on average ranks); NaN when either is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / norm) if norm > 0 else float("nan")


def permutation_test(x: np.ndarray, y: np.ndarray, *, draws: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Spearman's rho of `x` and `y` and its two-sided permutation p-value: the share of orderings of `y` whose
    |rho| reaches the observed one (every ordering up to :data:`EXACT_ARMS` values, else `draws` seeded ones, the
    observed ordering counted as in Phipson & Smyth, 2010).

    Returns:
        ``{"rho", "p", "n", "exact"}``; rho and p are NaN with fewer than 3 values or a constant side.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equal 1-D arrays, got {x.shape} and {y.shape}")
    n = len(x)
    rho = spearman(x, y) if n >= 3 else float("nan")
    if math.isnan(rho):
        return {"rho": rho, "p": float("nan"), "n": n, "exact": n <= EXACT_ARMS}
    observed = abs(rho) - 1e-12
    if n <= EXACT_ARMS:
        hits = [abs(spearman(x, y[list(p)])) >= observed for p in itertools.permutations(range(n))]
        return {"rho": rho, "p": float(np.mean(hits)), "n": n, "exact": True}
    rng = np.random.default_rng(seed)
    hits = sum(abs(spearman(x, rng.permutation(y))) >= observed for _ in range(draws))
    return {"rho": rho, "p": (hits + 1) / (draws + 1), "n": n, "exact": False}
