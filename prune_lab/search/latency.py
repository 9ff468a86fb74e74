"""Per-unit latency: one U-Net step timed module by module, with the reporter's timing settings.

Forward hooks around every unit module (and the samplers and skip consumers' input layers the cost model needs)
record each call's wall-clock time, bracketed by `torch.cuda.synchronize()` on CUDA. The whole step is timed
separately without hooks (:func:`prune_lab.report.time_calls`), so the hooks' overhead never enters the base.
Inputs are the reporter's thop-convention zeros (:func:`prune_lab.report.unet_call`); `meta` models are
materialised with fresh weights (latency depends on shapes only).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..report import LatencySettings, time_calls, unet_call
from ..report.latency import materialise
from ..units import Graph


@dataclass
class UnitLatency:
    """Median milliseconds of one step and of every timed module.

    Attributes:
        total_ms: the whole step, timed without hooks.
        module_ms: module path -> median time of its call inside the step.
        settings: how it was timed.
    """

    total_ms: float
    module_ms: dict[str, float]
    settings: LatencySettings

    def cost(self, path: str) -> float:
        return self.module_ms.get(path, 0.0)


def timed_paths(unet: nn.Module, graph: Graph) -> list[str]:
    """Unit modules, samplers, and the layers a dropped skip shrinks (`norm1`, `conv1`, `conv_shortcut`)."""
    paths = [u.name for u in graph.units if u.kind != "skip"]
    for name, _ in unet.named_modules():
        if ".downsamplers." in name or ".upsamplers." in name:
            paths.append(name)
    for skip in graph.of_kind("skip"):
        paths += [f"{skip.consumer}.{a}" for a in ("norm1", "conv1", "conv_shortcut")]
    modules = dict(unet.named_modules())
    return [p for p in dict.fromkeys(paths) if modules.get(p) is not None]


def _hooks(model: nn.Module, paths: list[str], device: torch.device, samples: dict[str, list[float]]) -> list:
    starts: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def pre(path):
        def hook(module, args):
            sync()
            starts[path] = time.perf_counter()

        return hook

    def post(path):
        def hook(module, args, output):
            sync()
            samples[path].append(1000 * (time.perf_counter() - starts.pop(path)))

        return hook

    handles = []
    for path in paths:
        module = model.get_submodule(path)
        handles += [module.register_forward_pre_hook(pre(path)), module.register_forward_hook(post(path))]
    return handles


def unit_latency(unet: nn.Module, graph: Graph, latent: int, settings: LatencySettings) -> UnitLatency:
    """Time one U-Net step and each of its units (see the module docstring).

    Args:
        unet: the teacher (real or `meta` weights; left untouched).
        graph: its walk.
        latent: latent side of the zero inputs.
        settings: device, dtype, warm-up and timed runs (as `prunelab report --latency`).
    """
    real = materialise(unet, settings)
    fn, args = unet_call(real, latent, settings.device, settings.torch_dtype)
    total = statistics.median(time_calls(lambda: fn(real, *args), settings))
    samples: dict[str, list[float]] = defaultdict(list)
    handles = _hooks(real, timed_paths(real, graph), torch.device(settings.device), samples)
    try:
        time_calls(lambda: fn(real, *args), settings)
    finally:
        for handle in handles:
            handle.remove()
    per_module = {p: statistics.median(t[-settings.runs :]) for p, t in samples.items()}
    return UnitLatency(total, per_module, settings)
