"""Students of students: a removal searched on a pruned student, restated against the original teacher.

Progressive removal (:mod:`.progressive`) searches each round on the current student, whose units carry the
student's own module paths. :func:`origins` maps every student atom that came from the teacher to its teacher name
through `unit_map.json` (a skip by its consumer); the parameter-free substitutes of units already removed have no
origin and stay where they are. :func:`compose_plan` adds the round's removals to the teacher atoms removed before and
writes the plan against the teacher, so every plan and export stays relative to the original teacher.
:func:`into_teacher_layout` places a trained student's weights back into a copy of the teacher (a dropped skip's
consumer in its leading input channels, where export slicing takes them from), and checks that rebuilding the
student's own plan from that copy gives the student back exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from ..backbones import backbone_of, build_student, make_plan
from ..plan import Plan, expand_keep
from ..units import Graph


def origins(student: Graph, teacher: Graph, unit_map: Mapping[str, str]) -> dict[str, str]:
    """Student atom -> teacher atom, for every student atom that came from the teacher.

    Args:
        student / teacher: the two walks.
        unit_map: student module path -> teacher module path (`unit_map.json`; identity for the teacher itself).
    """
    skips = {u.consumer: u.name for u in teacher.atoms() if u.consumer is not None}
    out = {}
    for unit in student.atoms():
        origin = unit_map.get(unit.consumer if unit.consumer is not None else unit.name)
        name = skips.get(origin) if unit.consumer is not None else origin
        if name is not None and name in teacher:
            out[unit.name] = name
    return out


def removed_atoms(teacher: Graph, plan: Plan | None) -> frozenset[str]:
    """The teacher atoms `plan` removes (none for no plan)."""
    if plan is None:
        return frozenset()
    kept = expand_keep(teacher, plan.keep)
    return frozenset(u.name for u in teacher.atoms() if u.name not in kept)


def compose_plan(
    teacher_model: nn.Module,
    teacher: Graph,
    before: frozenset[str],
    mapped: Mapping[str, str],
    removed: Iterable[str],
    *,
    source: str,
    meta: dict,
) -> tuple[Plan, frozenset[str]]:
    """The teacher-relative plan removing `before` and the teacher origins of the student atoms `removed`.

    Args:
        teacher_model / teacher: the original teacher and its walk.
        before: teacher atoms removed in earlier rounds.
        mapped: :func:`origins` of the current student.
        removed: student atoms this round removes; ones without an origin must not be among them.

    Returns:
        (plan, every teacher atom it removes).

    Raises:
        ValueError: a removed student atom has no teacher origin.
    """
    removed = list(removed)
    orphans = [a for a in removed if a not in mapped]
    if orphans:
        raise ValueError(f"{orphans[0]} has no unit of the teacher behind it (a substitute); it cannot be removed")
    gone = before | {mapped[a] for a in removed}
    keep = [u.name for u in teacher.atoms() if u.name not in gone]
    actions = backbone_of(teacher).removal_actions(teacher, gone)
    plan = make_plan(teacher_model, keep, source=source, actions=actions, meta=meta, graph=teacher)
    return plan, frozenset(gone)


def _teacher_key(key: str, unit_map: Mapping[str, str]) -> str:
    """The teacher's name of a student state-dict key: its longest mapped module prefix replaced."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in unit_map:
            return ".".join([unit_map[prefix], *parts[cut:]])
    return key


@torch.no_grad()
def into_teacher_layout(teacher: nn.Module, student: nn.Module, plan: Plan, unit_map: Mapping[str, str]) -> nn.Module:
    """A copy of `teacher` holding `student`'s weights wherever `plan` kept a module.

    A tensor the student holds narrower (a consumer whose skip was dropped) fills the leading slice of the teacher's,
    the channels the export keeps. The copy is checked: `build_student(copy, plan)` must equal `student` exactly.

    Raises:
        ValueError: a student tensor has no place in the teacher, or the check fails.
    """
    full = copy.deepcopy(teacher)
    target = full.state_dict()
    for key, value in student.state_dict().items():
        slot = target.get(_teacher_key(key, unit_map))
        if slot is None or slot.dim() != value.dim() or any(s < v for s, v in zip(slot.shape, value.shape)):
            raise ValueError(f"the student's {key} {tuple(value.shape)} has no place in the teacher; re-export it")
        slot[tuple(slice(0, n) for n in value.shape)].copy_(value)
    rebuilt = build_student(full, plan).student.state_dict()
    state = student.state_dict()
    if rebuilt.keys() != state.keys() or not all(torch.equal(rebuilt[k], state[k]) for k in state):
        raise ValueError("the student's weights do not rebuild from the teacher's layout; re-export the student")
    return full
