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

A student feature and the teacher feature it came from are paired only when both run at the same *resolution level*
(:func:`stage_levels`: 0 at the input latent, one more after every downsampler, one less after every upsampler), read
from each model's own structure. Removing the innermost levels moves a kept mid stage to a finer level than the
teacher's mid stage, where the teacher has no mid stage to compare it with: the teacher's and the student's
`mid_block` (and, for `units`, their members) are then left unpaired. :class:`FeaturePairing` records the pairs and
every feature of either model left without a counterpart, with the reason; the recipe writes it into the run's
`distill_config.json`. Each paired point carries its level, and :class:`FeatureTap` checks every captured tensor
against it, so a wrong pairing fails as a `RuntimeError` (a bug), never as a shape error in the loss.

Hooks go on the *unwrapped* models (`accelerator.unwrap_model`), so module paths never carry DDP's `module.` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torch.nn as nn

from ..backbones.unet.resolve import Resolution

SAMPLERS = {"down_blocks": "downsamplers", "up_blocks": "upsamplers"}
UNIT_CONTAINERS = ("resnets", "attentions", "transformer_blocks")
UNIT_KINDS = ("resnet", "attention", "transformer_layer")


@dataclass(frozen=True)
class FeaturePoint:
    """A place in a model where a feature is read: the `output` or the `input` of the module at `module`.

    `level` is the resolution level the tensor there has (set by the pairing, checked by :class:`FeatureTap`; None:
    not checked). It takes no part in equality.
    """

    module: str
    at: str = "output"
    level: int | None = field(default=None, compare=False)

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


@dataclass
class FeaturePairing:
    """What a run distils: the feature pairs, and the features of either model that have no counterpart.

    Attributes:
        layers: `stages`, `units` or `none`.
        pairs: the pairs, in student forward order.
        teacher_unpaired / student_unpaired: feature point -> why it has no counterpart (forward order).
    """

    layers: str
    pairs: list[FeaturePair] = field(default_factory=list)
    teacher_unpaired: dict[str, str] = field(default_factory=dict)
    student_unpaired: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready record (the `feature_pairs` entry of `distill_config.json`)."""
        pairs = [{"teacher": str(p.teacher), "student": str(p.student), "level": p.teacher.level} for p in self.pairs]
        return {
            "layers": self.layers,
            "pairs": pairs,
            "teacher_unpaired": dict(self.teacher_unpaired),
            "student_unpaired": dict(self.student_unpaired),
        }


# -------------------------------------------------------------------------------------------------- levels
def stage_levels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Stage path -> (resolution level its blocks run at, level of its output), from the model's own resamplers.

    Level 0 is the input latent's resolution; each downsampler adds one level, each upsampler takes one away.
    """
    levels, level = {}, 0
    for i, block in enumerate(model.down_blocks):
        after = level + (1 if getattr(block, "downsamplers", None) else 0)
        levels[f"down_blocks.{i}"], level = (level, after), after
    levels["mid_block"] = (level, level)
    for k, block in enumerate(model.up_blocks):
        after = level - (1 if getattr(block, "upsamplers", None) else 0)
        levels[f"up_blocks.{k}"], level = (level, after), after
    return levels


def stage_of(module: str) -> str:
    """The stage a module path lies in (`down_blocks.2.attentions.1` -> `down_blocks.2`)."""
    parts = module.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def point_level(levels: dict[str, tuple[int, int]], point: FeaturePoint) -> int:
    """The resolution level of the tensor at `point`, given :func:`stage_levels` of its model."""
    parts, stage = point.module.split("."), stage_of(point.module)
    if stage not in levels:
        raise RuntimeError(f"feature point {point} is not inside a stage of the model")
    inner, outer = levels[stage]
    ends_stage = point.module == stage or (len(parts) == 4 and parts[2] in SAMPLERS.values())
    return outer if ends_stage and point.at == "output" else inner


# --------------------------------------------------------------------------------------------------- pairing
def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _has_sampler(model: nn.Module, stage: str) -> bool:
    return bool(getattr(model.get_submodule(stage), SAMPLERS[stage.split(".")[0]], None))


def _stage_points(teacher: nn.Module, student: nn.Module, s_path: str, t_path: str) -> tuple[FeaturePoint, ...]:
    """Stage output vs stage output, or vs the input of the teacher's resampler the student lacks."""
    t_has, s_has = _has_sampler(teacher, t_path), _has_sampler(student, s_path)
    if s_has and not t_has:
        raise ValueError(
            f"student {s_path} has a resampler that teacher {t_path} lacks; is the student from this teacher?"
        )
    sampler = SAMPLERS[t_path.split(".")[0]]
    t_point = FeaturePoint(f"{t_path}.{sampler}.0", "input") if t_has and not s_has else FeaturePoint(t_path)
    return FeaturePoint(s_path), t_point


def _match(
    teacher: nn.Module, student: nn.Module, layers: str, candidates: Sequence[tuple[FeaturePoint, FeaturePoint]]
) -> tuple[FeaturePairing, dict[str, str]]:
    """Pair each (student, teacher) candidate, by origin, whose two points run at the same resolution level.

    Only the mid stage (and its members) can run at another level than where it came from: removing the innermost
    levels moves it to a finer one. Such candidates stay unpaired; any other disagreement is a bug.

    Returns:
        the pairing (no teacher features recorded as unpaired yet) and, per teacher module left unpaired because
        its student counterpart moved level, the reason.

    Raises:
        RuntimeError: a unit outside the mid stage at another level than its origin (a bug, not a user error).
    """
    t_levels, s_levels = stage_levels(teacher), stage_levels(student)
    pairing, moved = FeaturePairing(layers), {}
    for s_point, t_point in candidates:
        s_level, t_level = point_level(s_levels, s_point), point_level(t_levels, t_point)
        if s_level == t_level:
            pairing.pairs.append(FeaturePair(replace(s_point, level=s_level), replace(t_point, level=t_level)))
            continue
        if stage_of(s_point.module) != "mid_block" or stage_of(t_point.module) != "mid_block":
            raise RuntimeError(
                f"student {s_point} comes from teacher {t_point} but runs at resolution level {s_level}, not "
                f"{t_level}: the student's structure disagrees with its plan (a prune_lab bug)"
            )
        moved[t_point.module] = (
            f"runs at resolution level {t_level}; the student's {s_point}, which comes from it, runs at level "
            f"{s_level} (the plan removes the innermost levels)"
        )
        pairing.student_unpaired[str(s_point)] = (
            f"runs at resolution level {s_level}; the teacher's {t_point}, which it comes from, runs at level "
            f"{t_level} (the plan removes the innermost levels)"
        )
    return pairing, moved


def _stage_candidates(
    teacher: nn.Module, student: nn.Module, resolution: Resolution
) -> list[tuple[FeaturePoint, FeaturePoint]]:
    """(student, teacher) stage points by origin: kept down stages, the mid stage, kept up stages."""
    down = [s.path for s in resolution.down if not s.level_removed]
    up = [s.path for s in resolution.up if not s.level_removed]
    if (len(down), len(up)) != (len(student.down_blocks), len(student.up_blocks)):
        raise ValueError(
            f"the student has {len(student.down_blocks)} down / {len(student.up_blocks)} up stages but "
            f"its plan keeps {len(down)} / {len(up)}; was it exported from this plan?"
        )
    candidates = [_stage_points(teacher, student, f"down_blocks.{k}", t) for k, t in enumerate(down)]
    if getattr(student, "mid_block", None) is not None and getattr(teacher, "mid_block", None) is not None:
        candidates.append((FeaturePoint("mid_block"), FeaturePoint("mid_block")))
    return candidates + [_stage_points(teacher, student, f"up_blocks.{k}", t) for k, t in enumerate(up)]


def stage_pairing(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str]
) -> FeaturePairing:
    """BK-SDM's pairs: every kept down stage, the mid stage, every kept up stage (student forward order)."""
    pairing, moved = _match(teacher, student, "stages", _stage_candidates(teacher, student, resolution))
    paired = {stage_of(p.teacher.module) for p in pairing.pairs}
    removed = {s.path for s in resolution.down + resolution.up if s.level_removed}
    stages = (
        [s.path for s in resolution.down] + (["mid_block"] if resolution.mid else []) + [s.path for s in resolution.up]
    )
    for path in stages:
        if path in moved:
            pairing.teacher_unpaired[path] = moved[path]
        elif path in removed:
            pairing.teacher_unpaired[path] = "the plan removes its resolution level"
        elif path not in paired:
            pairing.teacher_unpaired[path] = "the plan removes the whole stage"
    return pairing


def _student_units(student: nn.Module) -> list[str]:
    """Module paths of the student's resnets, attention blocks and transformer layers (substitutes included)."""
    return [n for n, _ in student.named_modules() if n.count(".") >= 2 and n.split(".")[-2] in UNIT_CONTAINERS]


def unit_pairing(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str]
) -> FeaturePairing:
    """SSD-1B's layer-level pairs: every kept resnet, attention block and transformer layer (student order)."""
    units = _student_units(student)
    order = {name: i for i, name in enumerate(units)}
    candidates = []
    for s_path, t_path in unit_map.items():
        if s_path.split(".")[-2] not in UNIT_CONTAINERS:
            continue
        if s_path not in order or _submodule(teacher, t_path) is None:
            raise ValueError(
                f"unit_map pairs student {s_path} with teacher {t_path}, but one of them does not "
                "exist; the unit_map.json does not belong to this teacher/student"
            )
        candidates.append((FeaturePoint(s_path), FeaturePoint(t_path)))
    candidates.sort(key=lambda c: order[c[0].module])
    pairing, moved = _match(teacher, student, "units", candidates)
    paired = {p.teacher.module for p in pairing.pairs}
    for unit in resolution.graph.of_kind(*UNIT_KINDS):
        if unit.name in moved:
            pairing.teacher_unpaired[unit.name] = moved[unit.name]
        elif unit.name not in paired:
            kept = unit.name in resolution.kept
            pairing.teacher_unpaired[unit.name] = "no student unit comes from it" if kept else "the plan removes it"
    substitute = "a parameter-free substitute for a removed teacher unit"
    moved_students = pairing.student_unpaired
    pairing.student_unpaired = {  # student forward order
        name: moved_students.get(name, substitute) for name in units if name in moved_students or name not in unit_map
    }
    return pairing


#: `--feature-layers` choices: how feature pairs are derived.
FEATURE_LAYERS: dict[str, Callable[..., FeaturePairing]] = {"stages": stage_pairing, "units": unit_pairing}


def feature_pairing(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str], layers: str = "stages"
) -> FeaturePairing:
    """The pairing for `--feature-layers layers` (`stages` = BK-SDM, `units` = SSD-1B; `none`: no pairs)."""
    if layers == "none":
        return FeaturePairing("none")
    if layers not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layers {layers!r}; choose one of: {', '.join(FEATURE_LAYERS)}, none")
    return FEATURE_LAYERS[layers](teacher, student, resolution, unit_map)


def feature_pairs(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str], layers: str = "stages"
) -> list[FeaturePair]:
    """The feature pairs of :func:`feature_pairing` alone."""
    return feature_pairing(teacher, student, resolution, unit_map, layers).pairs


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
        module = _submodule(model, point.module)
        if module is None:
            raise ValueError(
                f"no module {point.module!r} in {type(model).__name__}; feature points must be module "
                "paths of the unwrapped model"
            )
        if point.at == "input":
            return module.register_forward_pre_hook(partial(self._store_input, point), with_kwargs=True)
        return module.register_forward_hook(partial(self._store_output, point))

    def _store_input_size(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample")
        if self._active and isinstance(sample, torch.Tensor):
            self._input_size = tuple(sample.shape[-2:])

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
