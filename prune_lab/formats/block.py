"""The block-pruned export (`prunelab apply`): the compact student of a plan, initialised from the teacher.

When the backbone finds a plain diffusers config for the student, `DIR/unet` is a plain diffusers model folder
(`from_pretrained` loads it without prune_lab); otherwise it holds the compact weights and a marker with the base
config and the plan, and :func:`load_block` rebuilds the skeleton through the backbone (format
`prune_lab.pruned_unet`, version 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..backbones import backbone_for, get_backbone
from ..plan import Plan
from ..runtime.atomic import check_output_folder
from ..runtime.loading import LoadedModel
from ..runtime.validate import as_path, need
from . import BLOCK_FORMAT, PRUNED_MARKER, READERS, Reader, base_config, load_weights, save_weights, write_export

BLOCK_VERSION = 1


@dataclass
class ExportResult:
    """What `apply` produced (the CLI formats it)."""

    out_dir: Path
    expressible: bool
    teacher_params: int
    student_params: int
    config: dict | None
    unit_map: dict[str, str] = field(default_factory=dict)
    rewired: dict[str, tuple[str, str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    is_pipeline: bool = False


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_plan(
    loaded: LoadedModel, plan: Plan, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> ExportResult:
    """Export the student of `plan` to `out_dir` (`out_dir/unet`, plus the other pipeline parts if any).

    Written to a temporary folder next to `out_dir` and renamed at the end, so a failure leaves nothing behind.
    """
    if not isinstance(loaded, LoadedModel):
        raise TypeError(
            f"apply_plan: loaded must be a LoadedModel (prune_lab.load_unet(...)), got {type(loaded).__name__}"
        )
    if not isinstance(plan, Plan):
        raise TypeError(
            f"apply_plan: plan must be a Plan (Plan.load(path) or create_plan(...)), got {type(plan).__name__}"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"apply_plan: overwrite must be True or False, got {overwrite!r}")
    out_dir = as_path(out_dir, "out_dir")
    check_output_folder(out_dir, overwrite=overwrite, inputs=[loaded.root] if loaded.root else [])
    teacher = loaded.unet
    if any(p.is_meta for p in teacher.parameters()):
        raise ValueError("cannot export a model with meta (structure-only) weights; load real weights")
    backbone = backbone_for(teacher)
    compacted = backbone.build_student(teacher, plan)

    def write_model(folder: Path) -> None:
        if compacted.expressible:
            compacted.student.save_pretrained(folder, safe_serialization=True)
        else:
            marker = {
                "format": BLOCK_FORMAT,
                "version": BLOCK_VERSION,
                "backbone": backbone.name,
                "base_config": base_config(teacher),
                "plan": plan.to_dict(),
            }
            save_weights(compacted.student, folder, marker)

    umap = backbone.unit_map(compacted.student)
    write_export(
        out_dir,
        write_model,
        plan=plan,
        unit_map=umap,
        subfolder=backbone.subfolder,
        overwrite=overwrite,
        pipeline_root=loaded.root if loaded.is_pipeline else None,
        teacher=teacher,
        student=compacted.student,
        source=loaded.source,
    )
    res = compacted.resolution
    return ExportResult(
        out_dir,
        compacted.expressible,
        _params(teacher),
        _params(compacted.student),
        compacted.config,
        umap,
        res.rewired(),
        res.removed,
        loaded.is_pipeline,
    )


def load_block(folder: Path, info: dict):
    """Rebuild a block-pruned export: the backbone's compact skeleton of the plan, weights loaded strictly."""
    where = str(folder / PRUNED_MARKER)
    plan = Plan.from_dict(need(info, "plan", dict, where), where)
    backbone = get_backbone(need(info, "backbone", str, where, default="unet"))
    skeleton = backbone.rebuild(need(info, "base_config", dict, where), plan)
    return load_weights(skeleton, folder)


READERS.register(BLOCK_FORMAT, Reader(BLOCK_FORMAT, BLOCK_VERSION, load_block))
