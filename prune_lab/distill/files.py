"""What `distill` reads and writes besides the data: the student folder, checkpoints, the loss log, the export.

The student folder is what `prunelab apply` wrote (`unet/` or `transformer/`, `plan.json`, `unit_map.json`, and the
other pipeline parts when the teacher was a pipeline). The distilled student is written back in exactly that format.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from ..backbones import build_student, instantiate, resolve, walk
from ..formats import PRUNED_MARKER, WEIGHTS_NAME, WIDTH_FORMAT, export_format, load_pruned
from ..formats.card import CARD_NAME, read_card, write_card
from ..plan import Plan, fingerprint
from ..runtime.atomic import write_json
from ..runtime.loading import DENOISERS
from ..runtime.validate import read_json

CHECKPOINTS_DIR, CHECKPOINT_PREFIX = "checkpoints", "checkpoint-"


@dataclass
class StudentBundle:
    """A student loaded from an `apply` folder, checked against its teacher.

    Attributes:
        unet: the student U-Net or transformer (fp32, eval mode).
        plan / resolution: its plan, resolved against the teacher's graph.
        unit_map: student module path -> teacher module path (`unit_map.json`).
        folder: the `apply` output folder.
        subfolder: the student's folder in it, `unet` or `transformer`.
    """

    unet: nn.Module
    plan: Plan
    resolution: object  # the backbone's resolution of the plan
    unit_map: dict[str, str]
    folder: Path
    subfolder: str = "unet"

    @property
    def compact_format(self) -> bool:
        """True when `apply` wrote compact weights + plan (not a plain diffusers model)."""
        return (self.folder / self.subfolder / PRUNED_MARKER).exists()


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
    sub = next((d for d in DENOISERS if (folder / d).exists()), DENOISERS[0])
    for name in ("plan.json", "unit_map.json", sub):
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder} is not a `prunelab apply` output (no {name}); export the student "
                "with `prunelab apply --model TEACHER --keep PLAN --out DIR`"
            )
    unet_dir = folder / sub
    if not unet_dir.is_dir() or not any(p.suffix in (".safetensors", ".bin") for p in unet_dir.iterdir()):
        raise FileNotFoundError(
            f"--student {folder}: {unet_dir} holds no weights file (*.safetensors); re-export the student with "
            "`prunelab apply`"
        )
    plan = Plan.load(folder / "plan.json")
    _check_family(plan, teacher, folder)
    resolution = resolve(plan, walk(teacher), fingerprint(teacher))
    unet = load_pruned(folder)
    if export_format(folder) != WIDTH_FORMAT:  # a width student keeps every block, at narrower recorded widths
        _check_shapes(unet, teacher, plan, folder)
    umap = read_unit_map(folder / "unit_map.json")
    return StudentBundle(unet.float().eval(), plan, resolution, umap, folder, sub)


def read_unit_map(path: Path) -> dict[str, str]:
    """`unit_map.json`: student module path -> teacher module path, both strings.

    Raises:
        ValueError: not a JSON object of strings (the file and the first bad entry named).
    """
    umap = read_json(path, "unit_map.json")
    for key, value in umap.items():
        if not isinstance(value, str):
            raise ValueError(
                f"{path}: {key!r} maps to a {type(value).__name__}, not a module path; re-export with `prunelab apply`"
            )
    return umap


# ------------------------------------------------------------------------------------------------- export
def _pipeline_parts(root: Path) -> list[str]:
    index = root / "model_index.json"
    if not index.exists():
        return []
    index = json.loads(index.read_text())
    parts = [k for k, v in index.items() if isinstance(v, list) and v[0] and k not in DENOISERS]
    return ["model_index.json"] + [p for p in parts if (root / p).exists()]


def _write_unet(unet: nn.Module, bundle: StudentBundle, unet_dir: Path) -> None:
    if not bundle.compact_format:
        unet.save_pretrained(unet_dir, safe_serialization=True)
        return
    unet_dir.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, str(unet_dir / WEIGHTS_NAME))
    shutil.copy2(bundle.folder / bundle.subfolder / PRUNED_MARKER, unet_dir / PRUNED_MARKER)


def retraining_recipe(cfg, steps: int, data_size: int) -> dict:
    """What a model card says about a distillation run (`cfg` a :class:`~prune_lab.distill.recipe.DistillConfig`)."""
    return {
        "steps": steps,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "losses": {"task": cfg.lambda_task, "out": cfg.lambda_out, "feat": cfg.lambda_feat},
        "feature_layers": cfg.feature_layers,
        "mixed_precision": cfg.mixed_precision,
        "ema": cfg.ema_decay if cfg.ema else None,
        "resolution": cfg.resolution,
        "random_init": cfg.random_init,
        "data": str(cfg.data),
        "data_size": data_size,
    }


def export_student(
    unet: nn.Module, bundle: StudentBundle, out_dir, teacher_root: Path | None = None, retraining: dict | None = None
) -> Path:
    """Write the trained student in the format `apply` wrote for `bundle`, into `out_dir`.

    The other pipeline parts come from the student folder (as `apply` copied them), else from a pipeline teacher.
    The student folder's model card is carried over with the `retraining` recipe (:func:`retraining_recipe`) added.
    Everything is staged in a hidden folder and moved into place at the end.
    """
    out_dir = Path(out_dir)
    tmp = out_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_unet(unet, bundle, tmp / bundle.subfolder)
    for name in ("plan.json", "unit_map.json"):
        shutil.copy2(bundle.folder / name, tmp / name)
    source = bundle.folder if _pipeline_parts(bundle.folder) else teacher_root
    for part in _pipeline_parts(source) if source is not None else []:
        copy = shutil.copytree if (source / part).is_dir() else shutil.copy2
        copy(source / part, tmp / part)
    facts = read_card(bundle.folder)
    if facts is not None:
        facts.retraining, facts.single_file = retraining, None  # a single file of the student holds its old weights
        write_card(tmp, facts)
    elif (bundle.folder / CARD_NAME).is_file():
        shutil.copy2(bundle.folder / CARD_NAME, tmp / CARD_NAME)
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


#: `OUT/checkpoints.json`: SHA-256 of every file a checkpoint holds that deserialises by pickle, by checkpoint.
MANIFEST = "checkpoints.json"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pickled_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint folder that is not safetensors (those are inert), by relative path."""
    return {
        str(p.relative_to(folder)): _digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".safetensors"
    }


def _manifest(out_dir) -> dict:
    path = Path(out_dir) / MANIFEST
    return read_json(path, "checkpoint manifest") if path.exists() else {}


def record_checkpoint(out_dir, staging: Path, name: str) -> None:
    """Record the digests of a checkpoint (staged under `staging`, to be renamed to `name`) before it is renamed."""
    manifest = _manifest(out_dir)
    manifest[name] = _pickled_files(staging)
    write_json(Path(out_dir) / MANIFEST, manifest)


def verify_checkpoint(out_dir, path: Path) -> None:
    """Refuse a checkpoint this run's --out did not write: outside `out/checkpoints`, unrecorded, or changed since.

    Loading a checkpoint unpickles some of its files (accelerate's random states and custom objects), so only
    checkpoints whose pickled files match the digests `distill` recorded when it wrote them are loaded.

    Raises:
        ValueError: naming --resume and the checkpoint.
    """
    root = (Path(out_dir) / CHECKPOINTS_DIR).resolve()
    if path.resolve().parent != root:
        raise ValueError(
            f"--resume {path}: not a checkpoint of --out {out_dir} (checkpoints live in {root}); distill only "
            "resumes from checkpoints it wrote there, since loading one unpickles its files"
        )
    recorded = _manifest(out_dir).get(path.name)
    if recorded is None:
        raise ValueError(
            f"--resume: {path} was not written by distill in --out {out_dir} (not in {MANIFEST}); "
            "refusing to unpickle it; remove it, or use another --out"
        )
    if recorded != _pickled_files(path):
        raise ValueError(
            f"--resume: {path} changed since distill wrote it (its files differ from {MANIFEST}); "
            "refusing to unpickle it; remove it to resume from an earlier checkpoint"
        )


def find_resume(out_dir, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: None, `latest` (None when there is none yet), or a checkpoint path; a
    checkpoint is returned only after :func:`verify_checkpoint`."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(out_dir)
        if not found:
            return None
        path = found[-1][1]
    else:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(
                f"--resume: checkpoint {path} does not exist; pass --resume latest or a folder under "
                f"{Path(out_dir) / CHECKPOINTS_DIR}"
            )
    verify_checkpoint(out_dir, path)
    return path


def checkpoint_step(path: Path) -> int:
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    if not path.name.startswith(CHECKPOINT_PREFIX) or not suffix.isdigit():
        raise ValueError(f"{path} is not a distill checkpoint folder ({CHECKPOINT_PREFIX}<step>)")
    return int(suffix)


def prune_checkpoints(out_dir, limit: int | None) -> None:
    """Delete the oldest checkpoints beyond `limit` (keep all when None; the newest is always kept).

    Only checkpoint folders distill recorded in its manifest are removed (never a folder it did not write).
    """
    if limit is None:
        return
    if limit < 1:
        raise ValueError(f"--checkpoints-limit must be >= 1 (the newest checkpoint is always kept), got {limit}")
    manifest = _manifest(out_dir)
    old = [path for _, path in list_checkpoints(out_dir)[:-limit] if path.name in manifest]
    for path in old:
        shutil.rmtree(path)
        manifest.pop(path.name)
    if old:
        write_json(Path(out_dir) / MANIFEST, manifest)


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
