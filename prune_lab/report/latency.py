"""Wall-clock latency: warm-up, then K timed runs; median and spread, with the device and dtype stated.

On CUDA every timed run is bracketed by `torch.cuda.synchronize()`, so kernels launched asynchronously are
finished before the clock stops. Structure-only (`meta`) models are materialised with freshly initialised
weights first: latency does not depend on the values, only on the shapes.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..runtime.dtypes import cast_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TARGETS = ("step", "generation")


@dataclass(frozen=True)
class LatencySettings:
    """What to time and how.

    Attributes:
        device: `cpu` or `cuda` (or `cuda:N`).
        dtype: `float32`, `float16` or `bfloat16`.
        runs: timed runs (K).
        warmup: untimed runs before them.
        target: `step` (one U-Net forward) or `generation` (text encoder(s) + steps x U-Net + VAE decoder).
        threads: CPU threads while timing (default: torch's current setting).
        progress: show a progress bar on stderr.
    """

    device: str = "cpu"
    dtype: str = "float32"
    runs: int = 10
    warmup: int = 2
    target: str = "step"
    threads: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown latency target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.runs < 1 or self.warmup < 0:
            raise ValueError(f"need --runs >= 1 and --warmup >= 0, got {self.runs} and {self.warmup}")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available here; use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {self.device!r}; use cpu or cuda")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class Latency:
    """Timings of K runs, in milliseconds."""

    target: str
    device: str
    dtype: str
    warmup: int
    times_ms: list[float] = field(repr=False)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Inter-quartile range (0 for fewer than two runs)."""
        if len(self.times_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[2] - q[0]

    def to_dict(self) -> dict:
        return {
            "latency_target": self.target,
            "latency_device": self.device,
            "latency_dtype": self.dtype,
            "latency_runs": len(self.times_ms),
            "latency_warmup": self.warmup,
            "latency_median_ms": round(self.median_ms, 3),
            "latency_iqr_ms": round(self.iqr_ms, 3),
            "latency_min_ms": round(min(self.times_ms), 3),
            "latency_max_ms": round(max(self.times_ms), 3),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _cpu_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe_device(device: str) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (2 threads)`: what the numbers were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


@torch.no_grad()
def time_calls(fn: Callable[[], object], settings: LatencySettings) -> list[float]:
    """Run `fn` `warmup` times untimed, then `runs` times timed; milliseconds per run."""
    device = torch.device(settings.device)
    for _ in range(settings.warmup):
        fn()
    times = []
    for _ in tqdm(range(settings.runs), desc=f"timing on {device}", disable=not settings.progress, leave=False):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def measure(target: str, fn: Callable[[], object], settings: LatencySettings) -> Latency:
    """:func:`time_calls` under the settings' CPU thread count, with the device described."""
    with _cpu_threads(settings.threads):
        times = time_calls(fn, settings)
        return Latency(target, describe_device(settings.device), settings.dtype, settings.warmup, times)


def _initialise(module: nn.Module) -> None:
    with torch.no_grad():
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            elif any(True for _ in sub.parameters(recurse=False)):
                for p in sub.parameters(recurse=False):
                    p.normal_(0.0, 0.02)
        for b in module.buffers():
            b.zero_()


def materialise(module: nn.Module, settings: LatencySettings) -> nn.Module:
    """`module` on the timing device and dtype; a copy unless it is already there (the caller's stays put).

    `meta` weights become freshly initialised ones (`reset_parameters`); buffers are zeroed, which is right for
    U-Nets (they have none) but not for modules with index buffers, which should be built for real instead.
    """
    device, dtype = torch.device(settings.device), settings.torch_dtype
    params = list(module.parameters())
    if any(p.is_meta for p in params):
        real = copy.deepcopy(module).to_empty(device=device)
        _initialise(real)
        return cast_model(real, dtype).eval()
    if all(p.device == device and p.dtype == dtype for p in params):
        return module.eval()
    return cast_model(copy.deepcopy(module).to(device), dtype).eval()
