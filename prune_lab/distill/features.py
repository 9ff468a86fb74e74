"""Which teacher and student features to distil, derived from the plan, and the hooks that capture them.

BK-SDM (Kim et al., ECCV 2024, §3.2) distils the output of every stage. The pairs come from the plan's
:class:`~prune_lab.plan.Resolution` (which teacher stage every student stage came from), never from preset names:

* each kept down stage, the mid stage (when the student keeps one) and each kept up stage is paired with the teacher
  stage it came from;
* where the student stage lacks a trailing resampler the teacher stage has (with the innermost levels removed, the
  last kept down stage loses its downsampler), the teacher feature is taken *at the input of that resampler*, i.e.
  after the teacher's last resnet/attention of the stage. This is BK-SDM-Tiny's `down_blocks.2.attentions.1` (teacher)
  vs `down_blocks.2.attentions.0` (student) pairing, derived rather than hard-coded. BK-SDM hooks the attention's
  `proj_out` (before the residual add); we take the attention block's output, the true stage output.

`units` (SSD-1B's layer-level loss, Gupta et al. 2024) pairs every kept resnet, attention block and transformer
layer with its origin in the teacher, read from the `unit_map` that `prunelab apply` writes.

Hooks go on the *unwrapped* models (`accelerator.unwrap_model`), so module paths never carry DDP's `module.` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from ..backbones.unet.resolve import Resolution

SAMPLERS = {"down_blocks": "downsamplers", "up_blocks": "upsamplers"}
UNIT_CONTAINERS = ("resnets", "attentions", "transformer_blocks")


@dataclass(frozen=True)
class FeaturePoint:
    """A place in a model where a feature is read: the `output` or the `input` of the module at `module`."""

    module: str
    at: str = "output"

    def __str__(self) -> str:
        return self.module if self.at == "output" else f"{self.module}:{self.at}"


@dataclass(frozen=True)
class FeaturePair:
    """One feature-KD term: `student` and `teacher` points whose tensors have the same shape."""

    student: FeaturePoint
    teacher: FeaturePoint

    @property
    def name(self) -> str:
        """The student module path (a loss-log column)."""
        return self.student.module


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _has_sampler(model: nn.Module, stage: str) -> bool:
    return bool(getattr(model.get_submodule(stage), SAMPLERS[stage.split(".")[0]], None))


def _stage_pair(teacher: nn.Module, student: nn.Module, s_path: str, t_path: str) -> FeaturePair:
    """Stage output vs stage output, or vs the input of the teacher's resampler the student lacks."""
    t_has, s_has = _has_sampler(teacher, t_path), _has_sampler(student, s_path)
    if s_has and not t_has:
        raise ValueError(
            f"student {s_path} has a resampler that teacher {t_path} lacks; is the student from this teacher?"
        )
    sampler = SAMPLERS[t_path.split(".")[0]]
    t_point = FeaturePoint(f"{t_path}.{sampler}.0", "input") if t_has and not s_has else FeaturePoint(t_path)
    return FeaturePair(FeaturePoint(s_path), t_point)


def stage_pairs(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str]
) -> list[FeaturePair]:
    """BK-SDM's pairs: every kept down stage, the mid stage, every kept up stage (student forward order)."""
    down = [s.path for s in resolution.down if not s.level_removed]
    up = [s.path for s in resolution.up if not s.level_removed]
    if (len(down), len(up)) != (len(student.down_blocks), len(student.up_blocks)):
        raise ValueError(
            f"the student has {len(student.down_blocks)} down / {len(student.up_blocks)} up stages but "
            f"its plan keeps {len(down)} / {len(up)}; was it exported from this plan?"
        )
    pairs = [_stage_pair(teacher, student, f"down_blocks.{k}", t) for k, t in enumerate(down)]
    if getattr(student, "mid_block", None) is not None and getattr(teacher, "mid_block", None) is not None:
        pairs.append(FeaturePair(FeaturePoint("mid_block"), FeaturePoint("mid_block")))
    pairs += [_stage_pair(teacher, student, f"up_blocks.{k}", t) for k, t in enumerate(up)]
    return pairs


def unit_pairs(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str]
) -> list[FeaturePair]:
    """SSD-1B's layer-level pairs: every kept resnet, attention block and transformer layer (student order)."""
    order = {name: i for i, (name, _) in enumerate(student.named_modules())}
    pairs = []
    for s_path, t_path in unit_map.items():
        if s_path.split(".")[-2] not in UNIT_CONTAINERS:
            continue
        if s_path not in order or _submodule(teacher, t_path) is None:
            raise ValueError(
                f"unit_map pairs student {s_path} with teacher {t_path}, but one of them does not "
                "exist; the unit_map.json does not belong to this teacher/student"
            )
        pairs.append(FeaturePair(FeaturePoint(s_path), FeaturePoint(t_path)))
    return sorted(pairs, key=lambda p: order[p.student.module])


#: `--feature-layers` choices: how feature pairs are derived.
FEATURE_LAYERS: dict[str, Callable[..., list[FeaturePair]]] = {"stages": stage_pairs, "units": unit_pairs}


def feature_pairs(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str], layers: str = "stages"
) -> list[FeaturePair]:
    """The feature pairs for `--feature-layers layers` (`stages` = BK-SDM, `units` = SSD-1B), or [] for `none`."""
    if layers == "none":
        return []
    if layers not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layers {layers!r}; choose one of: {', '.join(FEATURE_LAYERS)}, none")
    return FEATURE_LAYERS[layers](teacher, student, resolution, unit_map)


# --------------------------------------------------------------------------------------------------- hooks
def first_tensor(value) -> torch.Tensor:
    """The hidden states in a module's output: the tensor itself, a tuple's first item, or `.sample`."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return first_tensor(value[0])
    if hasattr(value, "sample"):
        return value.sample
    raise TypeError(f"cannot find a tensor in a {type(value).__name__}")


class FeatureTap:
    """Hooks that record the tensors at `points` of `model`, but only inside :meth:`capturing`.

    Outside it (validation sampling, recomputation under gradient checkpointing) the hooks do nothing, so no
    activation is kept alive by accident.

    Args:
        model: the *unwrapped* model (never a DDP/FSDP wrapper).
        points: where to read (module paths of `model`).
    """

    def __init__(self, model: nn.Module, points: Sequence[FeaturePoint]) -> None:
        self.points = list(points)
        self._values: dict[FeaturePoint, torch.Tensor] = {}
        self._active = False
        self._handles = [self._register(model, p) for p in dict.fromkeys(self.points)]

    def _register(self, model: nn.Module, point: FeaturePoint):
        module = _submodule(model, point.module)
        if module is None:
            raise ValueError(
                f"no module {point.module!r} in {type(model).__name__}; feature points must be module "
                "paths of the unwrapped model"
            )
        if point.at == "input":
            return module.register_forward_pre_hook(partial(self._store_input, point), with_kwargs=True)
        return module.register_forward_hook(partial(self._store_output, point))

    def _store_input(self, point: FeaturePoint, module, args, kwargs) -> None:
        if self._active:
            self._values[point] = args[0] if args else kwargs["hidden_states"]

    def _store_output(self, point: FeaturePoint, module, args, output) -> None:
        if self._active:
            self._values[point] = first_tensor(output)

    @contextmanager
    def capturing(self) -> Iterator[FeatureTap]:
        """Record features during one forward pass; read them with :meth:`collect`."""
        self._values.clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def collect(self) -> list[torch.Tensor]:
        """The recorded tensors in `points` order (and forget them)."""
        missing = [str(p) for p in self.points if p not in self._values]
        if missing:
            raise RuntimeError(
                f"no feature was recorded at {missing[0]} (did the forward pass run inside capturing()?)"
            )
        values = [self._values[p] for p in self.points]
        self._values.clear()
        return values

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
