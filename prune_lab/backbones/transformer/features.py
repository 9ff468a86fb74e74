"""Transformer feature pairs for distillation: kept block <-> its teacher block, or Flux-Mini's uniform x <-> k x.

* `blocks`: every kept block's output is paired with the teacher block it came from (the `unit_map`).
* `uniform`: for a stack cut uniformly from n to n / k blocks, student block x is paired with teacher block k x
  (1-based; Flux-Mini's feature alignment); stacks whose lengths do not divide are left unpaired, with the reason.

A block's output is its hidden states, or `(encoder_hidden_states, hidden_states)` for MMDiT / Flux blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..features import FeaturePair, FeaturePairing, FeaturePoint
from .compaction import Resolution


def _blocks(unit_map: Mapping[str, str]) -> dict[str, str]:
    return {s: t for s, t in unit_map.items() if len(s.split(".")) == 2}


def feature_pairing(student, res: Resolution, unit_map: Mapping[str, str] | None, scope: str) -> FeaturePairing:
    """The pairs at `scope` (`blocks` or `uniform`) between the teacher of `res` and its student."""
    pairing = FeaturePairing(scope)
    if scope == "blocks":
        for s, t in _blocks(unit_map or {}).items():
            pairing.pairs.append(FeaturePair(FeaturePoint(s), FeaturePoint(t)))
        return pairing
    for stack in res.family.stacks:
        n_teacher, n_student = len(res.graph.blocks(stack.attr)), len(getattr(student, stack.attr))
        if not n_student or n_teacher % n_student:
            pairing.teacher_unpaired[stack.attr] = (
                f"{n_teacher} blocks are not a multiple of the student's {n_student}"
            )
            continue
        k = n_teacher // n_student
        for x in range(n_student):
            teacher = FeaturePoint(f"{stack.attr}.{(x + 1) * k - 1}")
            pairing.pairs.append(FeaturePair(FeaturePoint(f"{stack.attr}.{x}"), teacher))
    return pairing
