"""U-Net feature pairs for distillation, derived from the plan's resolution, never from preset names.

BK-SDM (Kim et al., ECCV 2024, §3.2) distils the output of every stage (`stages`):

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
`mid_block` (and, for `units`, their members) are then left unpaired, with the reason, in the
:class:`~prune_lab.backbones.features.FeaturePairing`. Each paired point carries its level, which
:class:`prune_lab.distill.features.FeatureTap` checks on every captured tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch.nn as nn

from ...runtime.modules import find_submodule
from ..features import FeaturePair, FeaturePairing, FeaturePoint
from .graph import walk
from .resolve import Resolution

SAMPLERS = {"down_blocks": "downsamplers", "up_blocks": "upsamplers"}
UNIT_CONTAINERS = ("resnets", "attentions", "transformer_blocks")
UNIT_KINDS = ("resnet", "attention", "transformer_layer")


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
    candidates += [_stage_points(teacher, student, f"up_blocks.{k}", t) for k, t in enumerate(up)]
    # a stage that keeps no slot passes its input through: comparable with the teacher's stage output only when the
    # widths agree (else it is left unpaired, as a removed stage is)
    emptied = [(s, t) for s, t in candidates if not len(student.get_submodule(s.module).resnets)]
    if emptied:
        s_graph, t_graph = walk(student), walk(teacher)
        narrower = [
            (s, t) for s, t in emptied if s_graph[s.module].out_channels != t_graph[stage_of(t.module)].out_channels
        ]
        candidates = [c for c in candidates if c not in narrower]
    return candidates


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
            pairing.teacher_unpaired[path] = "the plan removes every slot of the stage"
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
        if s_path not in order or find_submodule(teacher, t_path) is None:
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


#: feature scope -> how its pairs are derived.
SCOPES: dict[str, Callable[..., FeaturePairing]] = {"stages": stage_pairing, "units": unit_pairing}


def feature_pairing(
    teacher: nn.Module, student: nn.Module, resolution: Resolution, unit_map: dict[str, str], layers: str
) -> FeaturePairing:
    """The pairing at scope `layers` (`stages` = BK-SDM, `units` = SSD-1B)."""
    return SCOPES[layers](teacher, student, resolution, unit_map)
