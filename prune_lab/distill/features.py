"""Which teacher and student features to distil (the backbone's pairing), and the hooks that capture them.

The pairs come from the student's backbone (:meth:`prune_lab.backbones.Backbone.feature_pairs`; the U-Net's are
documented in :mod:`prune_lab.backbones.unet.features`): `--feature-layers stages` (BK-SDM's stage outputs) or `units`
(SSD-1B's layer-level loss), each pair of equal shape, with every feature left without a counterpart recorded in the
:class:`~prune_lab.backbones.features.FeaturePairing` the recipe writes into `distill_config.json`.

Each paired point carries its resolution level, and :class:`FeatureTap` checks every captured tensor against it, so a
wrong pairing fails as a `RuntimeError` (a bug), never as a shape error in the loss. Hooks go on the *unwrapped*
models (`accelerator.unwrap_model`), so module paths never carry DDP's `module.` prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn

from ..backbones import backbone_for, feature_scopes
from ..backbones.features import FeaturePair, FeaturePairing, FeaturePoint
from ..runtime.modules import find_submodule

#: `--feature-layers` choices besides `none`: every registered backbone's scopes.
FEATURE_LAYERS = tuple(feature_scopes())


def feature_pairing(
    teacher: nn.Module, student: nn.Module, resolution, unit_map: dict[str, str], layers: str = "stages"
) -> FeaturePairing:
    """The pairing for `--feature-layers layers` (`none`: no pairs), from the student's backbone."""
    if layers == "none":
        return FeaturePairing("none")
    backbone = backbone_for(student)
    if layers not in backbone.feature_scopes:
        raise ValueError(
            f"unknown feature layers {layers!r}; choose one of: {', '.join(backbone.feature_scopes)}, none"
        )
    return backbone.feature_pairs(teacher, student, resolution, unit_map, layers)


def feature_pairs(
    teacher: nn.Module, student: nn.Module, resolution, unit_map: dict[str, str], layers: str = "stages"
) -> list[FeaturePair]:
    """The feature pairs of :func:`feature_pairing` alone."""
    return feature_pairing(teacher, student, resolution, unit_map, layers).pairs


# --------------------------------------------------------------------------------------------------- hooks
def first_tensor(value, index: int = 0) -> torch.Tensor:
    """The hidden states in a module's output: the tensor itself, a tuple's item `index` (the image stream the
    backbone names, :meth:`~prune_lab.backbones.Backbone.image_stream`: SD3 / Flux blocks return `(context, image)`),
    or `.sample`."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return first_tensor(value[index])
    if hasattr(value, "sample"):
        return value.sample
    raise TypeError(f"cannot find a tensor in a {type(value).__name__}")


def _sizes_at(size: int, level: int) -> set[int]:
    """The possible edge lengths `level` downsamplings after `size` (stride-2 convolutions round up or down)."""
    low = high = size
    for _ in range(level):
        low, high = low // 2, -(-high // 2)
    return {low, high}


class FeatureTap:
    """Hooks that record the tensors at `points` of `model`, but only inside :meth:`capturing`.

    Outside it (validation sampling, recomputation under gradient checkpointing) the hooks do nothing, so no
    activation is kept alive by accident. A point with a `level` is checked against the input's resolution: a tensor
    of another resolution means the pairing is wrong, and :meth:`collect` raises a `RuntimeError` (a bug).

    Args:
        model: the *unwrapped* model (never a DDP/FSDP wrapper).
        points: where to read (module paths of `model`).
    """

    def __init__(self, model: nn.Module, points: Sequence[FeaturePoint]) -> None:
        self.points = list(points)
        self._values: dict[FeaturePoint, torch.Tensor] = {}
        self._input_size: tuple[int, int] | None = None
        self._active = False
        self._handles = [self._register(model, p) for p in dict.fromkeys(self.points)]
        if any(p.level is not None for p in self.points):
            self._handles.append(model.register_forward_pre_hook(self._store_input_size, with_kwargs=True))

    def _register(self, model: nn.Module, point: FeaturePoint):
        module = find_submodule(model, point.module)
        if module is None:
            raise ValueError(
                f"no module {point.module!r} in {type(model).__name__}; feature points must be module "
                "paths of the unwrapped model"
            )
        if point.at == "input":
            return module.register_forward_pre_hook(partial(self._store_input, point), with_kwargs=True)
        stream = backbone_for(model).image_stream(model, point.module)
        return module.register_forward_hook(partial(self._store_output, point, stream))

    def _store_input_size(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if self._active and isinstance(sample, torch.Tensor):
            self._input_size = tuple(sample.shape[-2:])

    def _store_input(self, point: FeaturePoint, module, args, kwargs) -> None:
        if self._active:
            self._values[point] = args[0] if args else kwargs["hidden_states"]

    def _store_output(self, point: FeaturePoint, stream: int, module, args, output) -> None:
        if self._active:
            self._values[point] = first_tensor(output, stream)

    @contextmanager
    def capturing(self) -> Iterator[FeatureTap]:
        """Record features during one forward pass; read them with :meth:`collect`."""
        self._values.clear()
        self._input_size = None
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def _check_level(self, point: FeaturePoint, value: torch.Tensor) -> None:
        """Raise RuntimeError when `value` (B, C, h, w) or (B, h·w, C) is not at `point.level` of the input."""
        if point.level is None or self._input_size is None or value.dim() not in (3, 4):
            return
        heights, widths = (_sizes_at(n, point.level) for n in self._input_size)
        if value.dim() == 4:
            fits = value.shape[-2] in heights and value.shape[-1] in widths
        else:
            fits = value.shape[1] in {h * w for h in heights for w in widths}
        if not fits:
            raise RuntimeError(
                f"the feature at {point} has shape {tuple(value.shape)}, not resolution level {point.level} of the "
                f"{self._input_size[0]}x{self._input_size[1]} input its pairing expects: the feature pairing is "
                "wrong (a prune_lab bug; please report it with the plan)"
            )

    def collect(self) -> list[torch.Tensor]:
        """The recorded tensors in `points` order (and forget them).

        Raises:
            RuntimeError: a point recorded nothing, or recorded a tensor of another resolution than its level.
        """
        values, self._values = self._values, {}  # forgotten even when a check fails
        missing = [str(p) for p in self.points if p not in values]
        if missing:
            raise RuntimeError(
                f"no feature was recorded at {missing[0]} (did the forward pass run inside capturing()?)"
            )
        for point in self.points:
            self._check_level(point, values[point])
        return [values[p] for p in self.points]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
