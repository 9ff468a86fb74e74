"""What `distill` reads and writes besides the data: the student folder, checkpoints, the loss log, the export.

The student folder is what `prunelab apply` wrote (`unet/`, `plan.json`, `unit_map.json`, and the other pipeline
parts when the teacher was a pipeline). The distilled student is written back in exactly that format.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from ..backbones import build_student, instantiate, resolve, walk
from ..formats import PRUNED_MARKER, WEIGHTS_NAME, WIDTH_FORMAT, export_format, load_pruned
from ..plan import Plan, fingerprint

CHECKPOINTS_DIR, CHECKPOINT_PREFIX = "checkpoints", "checkpoint-"


@dataclass
class StudentBundle:
    """A student loaded from an `apply` folder, checked against its teacher.

    Attributes:
        unet: the student U-Net (fp32, eval mode).
        plan / resolution: its plan, resolved against the teacher's graph.
        unit_map: student module path -> teacher module path (`unit_map.json`).
        folder: the `apply` output folder.
    """

    unet: nn.Module
    plan: Plan
    resolution: object  # the backbone's resolution of the plan
    unit_map: dict[str, str]
    folder: Path

    @property
    def compact_format(self) -> bool:
        """True when `apply` wrote compact weights + plan (not a plain diffusers U-Net)."""
        return (self.folder / "unet" / PRUNED_MARKER).exists()


def _check_family(plan: Plan, teacher: nn.Module, folder: Path) -> None:
    expected = fingerprint(teacher)
    if plan.base.get("fingerprint") not in (None, expected):
        raise ValueError(
            f"student {folder} was pruned from architecture {plan.base['fingerprint']} "
            f"({plan.base.get('source', '?')}), but the teacher is {expected}; pass the --teacher the "
            "student was pruned from"
        )


def _check_shapes(unet: nn.Module, teacher: nn.Module, plan: Plan, folder: Path) -> None:
    skeleton = instantiate(type(teacher), {k: v for k, v in dict(teacher.config).items() if not k.startswith("_")})
    expected = {k: tuple(v.shape) for k, v in build_student(skeleton, plan).student.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    if expected != actual:
        diff = sorted(set(expected.items()) ^ set(actual.items()))[0][0]
        raise ValueError(
            f"the student in {folder} does not match its plan.json on this teacher (first difference: "
            f"{diff}); re-export it with `prunelab apply`"
        )


def load_student(folder, teacher: nn.Module) -> StudentBundle:
    """Load an `apply` output folder and check that it was pruned from `teacher`.

    Raises:
        FileNotFoundError: not an `apply` output folder.
        ValueError: the student comes from another architecture, or its weights disagree with its plan.
    """
    folder = Path(folder)
    for name in ("plan.json", "unit_map.json", "unet"):
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder} is not a `prunelab apply` output (no {name}); export the student "
                "with `prunelab apply --model TEACHER --keep PLAN --out DIR`"
            )
    plan = Plan.load(folder / "plan.json")
    _check_family(plan, teacher, folder)
    resolution = resolve(plan, walk(teacher), fingerprint(teacher))
    unet = load_pruned(folder)
    if export_format(folder) != WIDTH_FORMAT:  # a width student keeps every block, at narrower recorded widths
        _check_shapes(unet, teacher, plan, folder)
    umap = json.loads((folder / "unit_map.json").read_text())
    return StudentBundle(unet.float().eval(), plan, resolution, umap, folder)


# ------------------------------------------------------------------------------------------------- export
def _pipeline_parts(root: Path) -> list[str]:
    index = root / "model_index.json"
    if not index.exists():
        return []
    parts = [k for k, v in json.loads(index.read_text()).items() if isinstance(v, list) and v[0] and k != "unet"]
    return ["model_index.json"] + [p for p in parts if (root / p).exists()]


def _write_unet(unet: nn.Module, bundle: StudentBundle, unet_dir: Path) -> None:
    if not bundle.compact_format:
        unet.save_pretrained(unet_dir, safe_serialization=True)
        return
    unet_dir.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, str(unet_dir / WEIGHTS_NAME))
    shutil.copy2(bundle.folder / "unet" / PRUNED_MARKER, unet_dir / PRUNED_MARKER)


def export_student(unet: nn.Module, bundle: StudentBundle, out_dir, teacher_root: Path | None = None) -> Path:
    """Write the trained student in the format `apply` wrote for `bundle`, into `out_dir`.

    The other pipeline parts come from the student folder (as `apply` copied them), else from a pipeline teacher.
    Everything is staged in a hidden folder and moved into place at the end.
    """
    out_dir = Path(out_dir)
    tmp = out_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_unet(unet, bundle, tmp / "unet")
    for name in ("plan.json", "unit_map.json"):
        shutil.copy2(bundle.folder / name, tmp / name)
    source = bundle.folder if _pipeline_parts(bundle.folder) else teacher_root
    for part in _pipeline_parts(source) if source is not None else []:
        copy = shutil.copytree if (source / part).is_dir() else shutil.copy2
        copy(source / part, tmp / part)
    for entry in tmp.iterdir():
        target = out_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()
    return out_dir


# -------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(out_dir) -> list[tuple[int, Path]]:
    """Finished checkpoints under `out_dir/checkpoints` as (step, path), oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    found = []
    for path in root.glob(f"{CHECKPOINT_PREFIX}*") if root.is_dir() else []:
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def checkpoint_path(out_dir, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{step:07d}"


def find_resume(out_dir, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: None, `latest` (None when there is none yet), or a checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass --resume latest or a folder under "
            f"{Path(out_dir) / CHECKPOINTS_DIR}"
        )
    return path


def checkpoint_step(path: Path) -> int:
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    if not path.name.startswith(CHECKPOINT_PREFIX) or not suffix.isdigit():
        raise ValueError(f"{path} is not a distill checkpoint folder ({CHECKPOINT_PREFIX}<step>)")
    return int(suffix)


def prune_checkpoints(out_dir, limit: int | None) -> None:
    """Delete the oldest checkpoints beyond `limit` (keep all when None)."""
    if limit is None:
        return
    for _, path in list_checkpoints(out_dir)[:-limit] if limit > 0 else list_checkpoints(out_dir):
        shutil.rmtree(path)


# -------------------------------------------------------------------------------------------------- loss log
class LossLog:
    """`losses.csv`: one row per optimizer step with every loss component.

    On resume, rows after the resumed step are dropped, so the file always describes one continuous run.
    """

    def __init__(self, path, columns: list[str], resume_step: int | None = None) -> None:
        self.path, self.columns = Path(path), ["step", *columns]
        rows = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({"step": step, **values})
