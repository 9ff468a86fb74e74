"""The distillation recipe: a typed config and `setup / train / save_checkpoint / export / cleanup` (torchtune-style).

One recipe retrains every student (preset, budgeted or hand-written plan) with BK-SDM's objective (§3.2): AdamW at a
constant learning rate, gradient accumulation, teacher frozen in the mixed-precision dtype. It runs on accelerate,
so the same code runs on CPU, one GPU and `accelerate launch` with several processes (DDP; FSDP / DeepSpeed through
the accelerate config).

Exact resumption: `save_state` stores the weights, optimizer, EMA, the step and the RNG states; the data position is
a function of the step (micro-batches consumed = step x grad-accum, a seeded permutation per epoch, hashed flips),
and every micro-step's noise comes from a generator seeded by (seed, micro-step, process). A resumed run therefore
reproduces the loss curve of an uninterrupted one, and a killed run loses at most the steps since its last
checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration
from diffusers.training_utils import EMAModel
from torch.utils.data import BatchSampler, DataLoader
from tqdm.auto import tqdm

from ..formats import WIDTH_FORMAT, export_format
from ..models import load_unet, resolve_model
from ..pipelines import offline_message
from ..runtime.atomic import OUTPUT_MARKER, write_json
from ..runtime.dtypes import cast_model
from ..runtime.generation import check_resolution
from ..runtime.schedule import noise_scheduler
from ..runtime.validate import read_json
from .data import EpochSampler, LatentCache, collate, open_dataset
from .encoders import FrozenEncoders, load_encoders
from .features import FEATURE_LAYERS, feature_pairing
from .files import (
    LossLog,
    checkpoint_path,
    checkpoint_step,
    export_student,
    find_resume,
    list_checkpoints,
    load_student,
    prune_checkpoints,
    record_checkpoint,
    retraining_recipe,
)
from .losses import FEATURE_LOSSES, DistillationLoss
from .projection import feature_projections
from .step import DistillStep, step_generator
from .validation import ValidationSampler

MIXED_PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LOSS_COLUMNS = ["loss", "task", "out", "feat"]


class DivergedError(RuntimeError):
    """The loss became NaN/inf; training stopped without writing a checkpoint or an export."""


@dataclass
class DistillConfig:
    """Everything `prunelab distill` takes. Defaults follow BK-SDM (AdamW, constant lr 5e-5, grad-accum 4)."""

    teacher: str
    student: str
    data: str
    out: str
    max_steps: int = 50_000
    batch_size: int = 64
    grad_accum: int = 4
    lr: float = 5e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0
    feature_layers: str = "stages"
    feature_loss: str = "mse"
    mixed_precision: str = "no"
    ema: bool = False
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    checkpoints_limit: int | None = None
    resume: str | None = None
    seed: int = 0
    resolution: int = 512
    flip: bool = True
    random_init: bool = False
    num_workers: int = 2
    report_to: str | None = None
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 1000
    validation_steps: int = 25
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError naming the first bad value."""
        positive = {
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "resolution": self.resolution,
            "validation_every": self.validation_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for name in ("lambda_task", "lambda_out", "lambda_feat", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.lr) and 0 <= self.ema_decay <= 1):
            raise ValueError(f"--lr must be finite and --ema-decay in [0, 1], got {self.lr} and {self.ema_decay}")
        for name in ("checkpoint_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.checkpoints_limit is not None and self.checkpoints_limit < 1:
            raise ValueError(
                f"--checkpoints-limit must be >= 1 (the newest checkpoint is kept), got {self.checkpoints_limit}"
            )
        if self.validation_steps < 1:
            raise ValueError(f"--validation-steps must be >= 1, got {self.validation_steps}")
        check_resolution(self.resolution)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.feature_layers not in (*FEATURE_LAYERS, "none"):
            raise ValueError(f"--feature-layers must be one of {', '.join(FEATURE_LAYERS)}, none")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"--feature-loss must be one of {', '.join(FEATURE_LOSSES)}, got {self.feature_loss!r}")
        if self.report_to not in (None, "tensorboard"):
            raise ValueError(f"--report-to {self.report_to!r}: only tensorboard is supported")
        if self.report_to and not importlib.util.find_spec("tensorboard"):
            raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")


#: Settings a resumed run must share with the run it continues (`--max-steps` and bookkeeping flags may change).
RESUME_KEYS = (
    "teacher", "student", "data", "batch_size", "grad_accum", "lr", "weight_decay", "max_grad_norm", "lambda_task",
    "lambda_out", "lambda_feat", "feature_layers", "feature_loss", "mixed_precision", "ema", "ema_decay", "seed",
    "resolution", "flip", "random_init",
)  # fmt: skip


def check_resume_settings(cfg: DistillConfig, out: Path) -> None:
    """Refuse to resume a run in `out` with other settings than its `distill_config.json` (both values named).

    Raises:
        ValueError: a :data:`RESUME_KEYS` setting differs.
    """
    path = out / "distill_config.json"
    if cfg.resume is None or not path.exists():
        return
    old, new = read_json(path, "distill_config.json"), asdict(cfg)
    for key in RESUME_KEYS:
        a, b = old.get(key), new[key]
        if key in ("teacher", "student", "data") and isinstance(a, str):
            a, b = str(Path(resolve_model(a)).resolve()), str(Path(resolve_model(b)).resolve())
        if key in old and a != b:
            raise ValueError(
                f"--{key.replace('_', '-')} {new[key]} differs from {old.get(key)} of the run being resumed "
                f"in {path}; pass the same value to resume, or another --out"
            )


@dataclass
class TrainResult:
    """What a run did (the CLI formats it)."""

    out_dir: Path
    step: int
    resumed_from: Path | None
    last: dict[str, float]
    bad_images: list[str]
    exported: Path | None = None


class TrainProgress:
    """The optimizer-step counter, saved with every checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh default initialisation of every layer (the `--random-init` ablation of BK-SDM Table 4)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class DistillRecipe:
    """Feature-level knowledge distillation of a pruned student from its teacher (BK-SDM §3.2)."""

    def __init__(self, cfg: DistillConfig) -> None:
        cfg.check()
        self.cfg, self.out = cfg, Path(cfg.out)
        self.progress, self.ema, self.resumed_from = TrainProgress(), None, None
        self.bad_images: set[str] = set()
        self.dataset = None
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def validate(self) -> None:
        """The cheap checks, before any model loads or anything is written: the output folder, a resumed run's
        settings and checkpoint, the teacher's name, and the data against the batch size."""
        cfg = self.cfg
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"--out {self.out} is a file; pass a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and cfg.resume is None:
            raise FileExistsError(
                f"--out {self.out} is not empty; pass --resume latest to continue that run, or another --out"
            )
        find_resume(self.out, cfg.resume)  # a checkpoint this run's --out did not write is refused here
        check_resume_settings(cfg, self.out)
        teacher = resolve_model(cfg.teacher)
        if not Path(teacher).exists() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
            raise FileNotFoundError(f"--teacher: {offline_message(cfg.teacher)}")
        for flag, path in (("--student", cfg.student), ("--data", cfg.data)):
            if not Path(path).exists():
                raise FileNotFoundError(f"{flag} {path} does not exist")
        self.dataset = open_dataset(cfg.data, cfg.resolution, cfg.seed, cfg.flip, scan=True)
        self.bad_images.update(getattr(self.dataset, "skipped", []))
        size = len(self.dataset)
        if size < cfg.batch_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than the {size} samples of --data {cfg.data}; "
                f"pass --batch-size {size} or less"
            )

    def setup(self) -> None:
        cfg = self.cfg
        plugin = GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False)
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_plugin=plugin,
            log_with=cfg.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        if self.out.exists() and any(self.out.iterdir()) and cfg.resume is None:
            raise FileExistsError(
                f"{self.out} is not empty; pass --resume latest to continue that run, or another --out"
            )
        self.accelerator.wait_for_everyone()  # every process has checked before anything is written
        self.dtype = MIXED_PRECISION[self.accelerator.mixed_precision]
        self._setup_models()
        self._setup_data()
        self._setup_training()
        self._resume()
        self._setup_logs()

    def _setup_models(self) -> None:
        cfg, device = self.cfg, self.accelerator.device
        loaded = load_unet(cfg.teacher)
        self.teacher = loaded.unet.requires_grad_(False).eval()
        self.bundle = load_student(cfg.student, self.teacher)
        cast_model(self.teacher.to(device), self.dtype)
        student = self.bundle.unet
        if cfg.random_init:
            reinitialize(student, cfg.seed)
        student.train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        roots = [r for r in (loaded.root if loaded.is_pipeline else None, self.bundle.folder) if r is not None]
        self.pipeline_root = next((r for r in roots if (r / "model_index.json").exists()), None)
        self.teacher_root = loaded.root if loaded.is_pipeline else None

    def _setup_data(self) -> None:
        cfg = self.cfg
        if getattr(self, "dataset", None) is None:
            self.dataset = open_dataset(cfg.data, cfg.resolution, cfg.seed, cfg.flip, scan=True)
        if isinstance(self.dataset, LatentCache):
            meta = self.dataset.meta
            self.encoders = FrozenEncoders(None, None, meta["scaling_factor"], meta.get("shift_factor", 0.0))
            self._check_cache(self.dataset)
        elif self.pipeline_root is None:
            raise ValueError(
                "training from images needs a pipeline teacher (VAE + text encoder); pass one as "
                "--teacher, or write a latents cache with `prunelab cache-latents`"
            )
        else:
            self.encoders = load_encoders(self.pipeline_root, dtype=self.dtype, device=self.accelerator.device)
        self.sampler = EpochSampler(len(self.dataset), cfg.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=BatchSampler(self.sampler, cfg.batch_size, True),
            collate_fn=collate,
            num_workers=cfg.num_workers,
        )
        self.scheduler = self._noise_scheduler()

    def _check_cache(self, cache: LatentCache) -> None:
        item = cache[0]
        channels = self.teacher.config.in_channels
        if item["moments"].shape[0] != 2 * channels:
            raise ValueError(
                f"the cache holds {item['moments'].shape[0] // 2}-channel latents but the teacher takes "
                f"{channels}; write the cache from the teacher's pipeline"
            )
        width = self.teacher.config.get("cross_attention_dim")
        cond = item["cond"].get("encoder_hidden_states")
        if cond is not None and width is not None and cond.shape[-1] != width:
            raise ValueError(
                f"the cache's text embeddings are {cond.shape[-1]} wide but the teacher expects {width}; "
                "write the cache from the teacher's pipeline"
            )

    def _noise_scheduler(self):
        candidates = [self.pipeline_root / "scheduler"] if self.pipeline_root else []
        candidates.append(Path(self.cfg.data) / "scheduler")
        for folder in candidates:
            if (folder / "scheduler_config.json").exists():
                return noise_scheduler(folder)
        raise ValueError("no noise scheduler config found: pass a pipeline --teacher or a cache written from one")

    def _setup_training(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        layers = cfg.feature_layers if cfg.lambda_feat > 0 else "none"  # no hooks when the term is off
        bundle = self.bundle
        self.pairing = feature_pairing(self.teacher, bundle.unet, bundle.resolution, bundle.unit_map, layers)
        self.pairs = self.pairing.pairs
        self.projections = self._projections()
        trained = [*self.bundle.unet.parameters(), *(self.projections.parameters() if self.projections else ())]
        optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.student, self.optimizer, self.loader = acc.prepare(self.bundle.unet, optimizer, self.loader)
        if self.projections is not None:
            self.projections = acc.prepare(self.projections)  # trained, synchronised and checkpointed with the student
        if len(self.loader) == 0:
            raise ValueError(
                f"{len(self.dataset)} samples make no full batch of {cfg.batch_size} per process; lower --batch-size"
            )
        self.unwrapped = acc.unwrap_model(self.student)
        acc.register_for_checkpointing(self.progress)
        if cfg.ema:
            self.ema = EMAModel(self.unwrapped.parameters(), decay=cfg.ema_decay)
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        loss = DistillationLoss(cfg.lambda_task, cfg.lambda_out, cfg.lambda_feat, cfg.feature_loss)
        self.kd = DistillStep(
            self.teacher,
            self.student,
            self.encoders,
            self.scheduler,
            loss,
            self.pairs,
            unwrapped_student=self.unwrapped,
            autocast=self.accelerator.autocast,
            project=self.projections,
        )

    def _projections(self):
        """Learnable 1x1 projections for a width-pruned student's narrower features (None for block students)."""
        if export_format(self.bundle.folder) != WIDTH_FORMAT:
            return None
        projections = feature_projections(self.teacher, self.bundle.unet.to(self.accelerator.device), self.pairs)
        return projections.to(self.accelerator.device) if projections is not None else None

    def _resume(self) -> None:
        path = find_resume(self.out, self.cfg.resume)
        if path is None:
            return
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        if self.progress.step != checkpoint_step(path):
            raise ValueError(f"{path} holds step {self.progress.step}, not the step its name says")
        self.resumed_from = path

    def _setup_logs(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        self.columns = LOSS_COLUMNS + [f"feat:{p.name}" for p in self.pairs]
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / OUTPUT_MARKER).write_text("written by prune_lab distill\n")
            record = {**asdict(cfg), "feature_pairs": self.pairing.to_dict()}  # which features were distilled
            write_json(self.out / "distill_config.json", record)
            step = self.progress.step if self.resumed_from else None
            self.log = LossLog(self.out / "losses.csv", self.columns, resume_step=step)
        if cfg.report_to:
            acc.init_trackers(
                "distill", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
            )
        self.validator = ValidationSampler(self, cfg) if cfg.validation_prompts else None
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------ train
    def _batches(self, micro_step: int) -> Iterator[dict]:
        epoch, offset = divmod(micro_step, len(self.loader))
        while True:
            loader = self.accelerator.skip_first_batches(self.loader, offset) if offset else self.loader
            loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            yield from loader
            epoch, offset = epoch + 1, 0

    def train(self) -> TrainResult:
        """Run optimizer steps until `max_steps` (from the resumed step, if any)."""
        cfg, acc = self.cfg, self.accelerator
        micro = self.progress.step * cfg.grad_accum
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.progress.step,
            desc="distill",
            disable=not (cfg.progress and acc.is_main_process),
        )
        batches, sums = self._batches(micro), None
        while self.progress.step < cfg.max_steps:
            batch = next(batches)
            with acc.accumulate(self.student):
                terms = self.kd(batch, step_generator(cfg.seed, micro, acc.process_index, acc.device))
                acc.backward(terms.total)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.student.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro += 1
            values = torch.stack([terms.total, terms.task, terms.out, terms.feat, *terms.per_feature]).detach()
            sums = values if sums is None else sums + values
            self.bad_images.update(batch.get("bad", []))
            if acc.sync_gradients:
                self._finish_step(sums / cfg.grad_accum)
                sums = None
                bar.update(1)
                bar.set_postfix(loss=f"{self.last['loss']:.4g}")
        bar.close()
        return TrainResult(self.out, self.progress.step, self.resumed_from, self.last, sorted(self.bad_images))

    def _finish_step(self, means: torch.Tensor) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.progress.step += 1
        step = self.progress.step
        if self.ema is not None:
            self.ema.step(self.unwrapped.parameters())
        self.last = dict(zip(self.columns, acc.reduce(means, reduction="mean").tolist()))
        if acc.is_main_process:
            self.log.write(step, self.last)
        if not all(torch.isfinite(torch.tensor(list(self.last.values())))):
            raise DivergedError(self._diverged_message(step))
        if cfg.report_to:
            acc.log(self.last, step=step)
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
            self.save_checkpoint()
        if self.validator is not None and step % cfg.validation_every == 0:
            self.validator.sample(step)

    def _diverged_message(self, step: int) -> str:
        found = list_checkpoints(self.out)
        keep = f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint was written yet"
        return (
            f"loss is {self.last['loss']} at step {step}; stopped ({keep}). Lower --lr, or use "
            "--mixed-precision bf16 / no"
        )

    def save_checkpoint(self) -> Path:
        """`accelerate.save_state` into `checkpoints/checkpoint-<step>` (staged, then renamed) + the total limit."""
        acc, step = self.accelerator, self.progress.step
        final = checkpoint_path(self.out, step)
        staging = final.with_name(f".{final.name}.tmp")
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        acc.wait_for_everyone()
        if acc.is_main_process:
            record_checkpoint(self.out, staging, final.name)  # before the rename: a listed checkpoint is recorded
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            prune_checkpoints(self.out, self.cfg.checkpoints_limit)
        acc.wait_for_everyone()
        return final

    # ---------------------------------------------------------------------------------------- export, cleanup
    def ema_weights(self):
        """Context in which the unwrapped student holds its EMA weights (a no-op without --ema)."""
        return _SwappedWeights(self.ema, self.unwrapped) if self.ema is not None else nullcontext()

    def export(self) -> Path | None:
        """Write the student (EMA weights if enabled) into `out`, in the format `apply` wrote. Main process only."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            with self.ema_weights():
                recipe = retraining_recipe(self.cfg, self.progress.step, len(self.dataset))
                path = export_student(self.unwrapped, self.bundle, self.out, self.teacher_root, recipe)
        acc.wait_for_everyone()
        return path

    def cleanup(self) -> None:
        kd = getattr(self, "kd", None)
        if kd is not None:
            kd.remove_hooks()
        if getattr(self, "accelerator", None) is not None and self.cfg.report_to:
            self.accelerator.end_training()

    def run(self) -> TrainResult:
        """setup, train, export, cleanup (cleanup also after an error; nothing is exported then)."""
        self.validate()
        fresh = not self.out.exists()
        try:
            self.setup()
            result = self.train()
            result.exported = self.export()
            return result
        except BaseException:
            main = getattr(self, "accelerator", None) is None or self.accelerator.is_main_process
            if fresh and main and self.out.is_dir() and not list_checkpoints(self.out):
                shutil.rmtree(self.out, ignore_errors=True)  # this run made it and saved nothing to resume from
            raise
        finally:
            self.cleanup()


class _SwappedWeights:
    def __init__(self, ema: EMAModel, model: nn.Module) -> None:
        self.ema, self.model = ema, model

    def __enter__(self) -> None:
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())

    def __exit__(self, *exc) -> None:
        self.ema.restore(self.model.parameters())
