"""Feature points and pairs: what a distillation run compares between teacher and student.

A backbone derives them (:meth:`prune_lab.backbones.Backbone.feature_pairs`); :mod:`prune_lab.distill.features`
captures them with hooks and the losses compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
