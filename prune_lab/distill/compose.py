"""Students of students: a removal searched on a pruned student, restated against the original teacher.

Progressive removal (:mod:`.progressive`) searches each round on the current student, whose units carry the
student's own module paths. :func:`origins` maps every student atom that came from the teacher to its teacher name
through `unit_map.json` (a skip by its consumer); the parameter-free substitutes of units already removed have no
origin and stay where they are. :func:`compose_plan` adds the round's removals to the teacher atoms removed before and
writes the plan against the teacher, so every plan and export stays relative to the original teacher.

Not every removal valid on the student reads as a valid plan of the teacher: a substitute keeps its slot alive in the
student, so removing the slot's last real member (a resnet beside the stand-in of an attention removed earlier) is a
valid student plan, but in the teacher that slot has lost every member while its skip is kept, which no plan can say.
:func:`restated_problem` makes the search on the student admit only removals whose teacher plan the backbone accepts
and can build (:class:`Restatement`), so whatever the search finds composes.
:func:`into_teacher_layout` places a trained student's weights back into a copy of the teacher (a dropped skip's
consumer in its leading input channels, where export slicing takes them from), and checks that rebuilding the
student's own plan from that copy gives the student back exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from ..backbones import backbone_of, build_student, make_plan
from ..plan import Plan, expand_keep
from ..search.problem import Problem
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
        ValueError: a removed student atom has no teacher origin, or the plan is no valid plan of the teacher (the
            backbone's resolution names why).
    """
    removed = list(removed)
    orphans = [a for a in removed if a not in mapped]
    if orphans:
        raise ValueError(f"{orphans[0]} has no unit of the teacher behind it (a substitute); it cannot be removed")
    gone = before | {mapped[a] for a in removed}
    keep = [u.name for u in teacher.atoms() if u.name not in gone]
    backbone = backbone_of(teacher)
    plan = make_plan(
        teacher_model, keep, source=source, actions=backbone.removal_actions(teacher, gone), meta=meta, graph=teacher
    )
    backbone.resolve(plan, teacher)
    return plan, frozenset(gone)


@dataclass(frozen=True)
class Restatement:
    """How the current student's removals read against the original teacher.

    Attributes:
        teacher_model / teacher: the original teacher and its walk.
        before: teacher atoms removed in earlier rounds.
        mapped: :func:`origins` of the current student.
    """

    teacher_model: nn.Module
    teacher: Graph
    before: frozenset[str]
    mapped: Mapping[str, str]

    def plan(
        self, removed: Iterable[str], *, source: str = "", meta: dict | None = None
    ) -> tuple[Plan, frozenset[str]]:
        """:func:`compose_plan` of the student atoms `removed`."""
        return compose_plan(
            self.teacher_model, self.teacher, self.before, self.mapped, removed, source=source, meta=meta or {}
        )

    def valid(self, removed: frozenset[str], *, expressible: bool = False) -> bool:
        """Whether removing the student atoms `removed` restates as a teacher plan the backbone accepts and builds."""
        try:
            plan, gone = self.plan(removed)
        except ValueError:  # a substitute among them, or a plan the teacher's resolution refuses
            return False
        backbone = backbone_of(self.teacher)
        return backbone.buildable(self.teacher_model, self.teacher, gone, plan, expressible=expressible)


@dataclass
class StudentProblem(Problem):
    """A search problem on a student whose every admissible removal also restates against the teacher."""

    restatement: Restatement | None = None

    def _check(self, removed: frozenset[str]) -> bool:
        if not super()._check(removed):
            return False
        return self.restatement is None or self.restatement.valid(removed, expressible=self.expressible)


def restated_problem(problem: Problem, restatement: Restatement) -> StudentProblem:
    """`problem` (built on the current student) admitting only removals `restatement` turns into teacher plans."""
    given = {f.name: getattr(problem, f.name) for f in fields(problem) if f.init}
    return StudentProblem(**given, restatement=restatement)


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
