"""Training recipe of the demo models: autoencoder, CLIP scorer, then U-Net + text encoder; all on the demo world.

Stages (:data:`STAGES`) run in order. Each is deterministic given the seed: step ``k`` draws the world's training
scenes ``k * batch .. (k + 1) * batch - 1`` and its noise from ``SeedSequence((seed, stage, k))``, so a stage
resumed from a checkpoint (every ``checkpoint_every`` steps, under ``work/STAGE/``) continues exactly. A finished
stage exports its weights under ``work/`` and is skipped next time; :func:`assemble` then writes the shipped
``pipeline/`` (a diffusers ``StableDiffusionPipeline`` folder) and ``clip/`` (open_clip config + safetensors).

Recipe, per stage:

* ``vae``: `AutoencoderKL` (32x32x3 <-> 16x16x4), L1 + MSE on the posterior mean (fixed std e^-3); latent
  scaling factor = 1 / latent std.
* ``clip``: open_clip ``demo-clip`` on world images (a quarter through the autoencoder, as generations are)
  and captions, multi-positive CLIP loss.
* ``unet``: SD-v1-topology U-Net and `CLIPTextModel` trained jointly with the DDPM epsilon loss (Ho et al.,
  2020) under SD-v1's noise schedule, Min-SNR-5 weighting (Hang et al., 2023, arXiv:2303.09556), 10% empty
  captions for classifier-free guidance (Ho & Salimans, 2022); the exported weights are an EMA of the trained ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..runtime.atomic import atomic_folder, write_json, write_with
from ..runtime.clip import normalize_images
from ..runtime.validate import read_json
from . import DEMO_DIR
from . import architecture as arch
from .scorer import CLIP_NAME, model_config, multi_positive_clip_loss, register
from .world import World


@dataclass
class StageConfig:
    """Steps, batch size and peak learning rate (AdamW) of one stage."""

    steps: int
    batch: int
    lr: float
    warmup: int = 50


@dataclass
class TrainConfig:
    """Everything a training run depends on (written next to the checkpoints; a resumed run must agree)."""

    seed: int = 0
    vae: StageConfig = field(default_factory=lambda: StageConfig(steps=1000, batch=16, lr=2e-3))
    clip: StageConfig = field(default_factory=lambda: StageConfig(steps=300, batch=64, lr=1e-3))
    unet: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch=32, lr=1e-3, warmup=100))
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    checkpoint_every: int = 100


@dataclass
class StageResult:
    """What a stage did: steps run in total, wall and process-CPU seconds summed over resumes, last losses."""

    stage: str
    steps: int
    wall_s: float
    cpu_s: float
    loss: float
    extra: dict = field(default_factory=dict)


def step_generator(seed: int, stage: str | int, step: int) -> torch.Generator:
    """The random stream of one training step (independent of how the run was interrupted); `stage` is a name in
    :data:`STAGES` or a stream number of its own (another recipe's stage)."""
    entropy = (seed, stage if isinstance(stage, int) else list(STAGES).index(stage), step)
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))


def _plain(obj):
    """`obj` with numpy scalars as Python numbers, so the checkpoint loads with `weights_only=True`."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj.item() if isinstance(obj, np.generic) else obj


def _atomic_save(obj, path: Path) -> None:
    write_with(path, lambda tmp: torch.save(_plain(obj), tmp))


def _lr_lambda(warmup: int, steps: int, cosine: bool):
    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (k - warmup) / max(1, steps - warmup))) if cosine else 1.0

    return factor


# ---------------------------------------------------------------------------------------------------------- stages
class Stage:
    """A training stage: modules to train, one deterministic step, and the export of the result."""

    name: str = ""
    cosine: bool = True  # learning rate: warmup then cosine to 0 (else constant)

    def __init__(self, config: TrainConfig, work: Path):
        self.config, self.work, self.world = config, work, World(config.seed)
        self.stage_config: StageConfig = getattr(config, self.name)

    def trainable(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def step(self, k: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def generator(self, k: int) -> torch.Generator:
        """The random stream of step `k`."""
        return step_generator(self.config.seed, self.name, k)

    def export(self) -> dict:
        raise NotImplementedError

    def state(self) -> dict:
        return {f"m{i}": m.state_dict() for i, m in enumerate(self.trainable())}

    def load_state(self, state: dict) -> None:
        for i, m in enumerate(self.trainable()):
            m.load_state_dict(state[f"m{i}"])

    def images(self, k: int) -> tuple[torch.Tensor, list]:
        b = self.stage_config.batch
        return self.world.batch("train", k * b, b)


class VaeStage(Stage):
    name = "vae"

    def __init__(self, config, work):
        super().__init__(config, work)
        self.vae = arch.build_vae(config.seed)
        with torch.no_grad():  # posterior log-variance fixed at -6 (std e^-3): see VaeStage.step
            c = self.vae.config.latent_channels
            self.vae.quant_conv.weight[c:] = 0.0
            self.vae.quant_conv.bias[c:] = -6.0

    def trainable(self):
        return [self.vae]

    def step(self, k, g):
        """L1 + MSE reconstruction of the posterior mean. The log-variance outputs are constant (-6) and untrained:
        with Adam, a KL term weighted 1e-6 as in SD still moves them at full learning rate and the sampled noise
        swamps the latents of a young autoencoder; a fixed small std keeps `AutoencoderKL`'s sampling meaningful."""
        x = self.images(k)[0] * 2 - 1
        recon = self.vae.decode(self.vae.encode(x).latent_dist.mean).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x)

    @torch.no_grad()
    def export(self):
        self.vae.eval()
        x = self.world.batch("train", 10**7, 256)[0] * 2 - 1  # scenes no training step draws
        posterior = self.vae.encode(x).latent_dist
        scaling = float(1.0 / posterior.sample(torch.Generator().manual_seed(0)).std())
        self.vae.register_to_config(scaling_factor=scaling)
        psnr = -10 * torch.log10(F.mse_loss((self.vae.decode(posterior.mean).sample + 1) / 2, (x + 1) / 2))
        self.vae.save_pretrained(self.work / "vae")
        return {"scaling_factor": scaling, "reconstruction_psnr_db": float(psnr)}


def load_vae(work: Path):
    from diffusers import AutoencoderKL

    if not (work / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{work / 'vae'}: the autoencoder is not trained yet; run the vae stage first")
    return AutoencoderKL.from_pretrained(work / "vae").eval().requires_grad_(False)


class ClipStage(Stage):
    name = "clip"

    def __init__(self, config, work):
        import open_clip

        super().__init__(config, work)
        self.vae = load_vae(work)
        tokenizer = arch.build_tokenizer()
        tok_dir = work / "tokenizer"
        tokenizer.save_pretrained(tok_dir)
        (work / f"{CLIP_NAME}.json").write_text(json.dumps(model_config(tokenizer), indent=2))
        name = register(work / f"{CLIP_NAME}.json", tok_dir)
        torch.manual_seed(config.seed)
        self.model = open_clip.create_model(name)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.captions: dict[str, int] = {}

    def trainable(self):
        return [self.model]

    def step(self, k, g):
        x, scenes = self.images(k)
        part = len(x) // 4
        with torch.no_grad():  # generations come through the decoder: show the scorer such images too
            x[:part] = ((self.vae(x[:part] * 2 - 1).sample + 1) / 2).clamp(0, 1)
            x = (x + 0.03 * torch.rand(len(x), 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)).clamp(0, 1)
        captions = [s.caption for s in scenes]
        labels = torch.tensor([self.captions.setdefault(c, len(self.captions)) for c in captions])
        image_emb = F.normalize(self.model.encode_image(normalize_images(self.model, x)), dim=-1)
        text_emb = F.normalize(self.model.encode_text(self.tokenizer(captions)), dim=-1)
        return multi_positive_clip_loss(image_emb, text_emb, labels, self.model.logit_scale)

    def export(self):
        from safetensors.torch import save_file

        out = self.work / "clip"
        out.mkdir(exist_ok=True)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, out / f"{CLIP_NAME}.safetensors")
        return {"params_M": sum(v.numel() for v in state.values()) / 1e6}


class EmaStage(Stage):
    """A stage that exports an exponential moving average of its trainable modules (constant learning rate after
    warmup: the average does the annealing)."""

    cosine = False

    def start_ema(self, copies: list[torch.nn.Module]) -> None:
        """Keep `copies` (fresh modules like :meth:`trainable`'s, in its order) as the average, starting equal."""
        self.ema = copies
        for ema, model in zip(self.ema, self.trainable()):
            ema.load_state_dict(model.state_dict())
            ema.requires_grad_(False)

    def state(self):
        return {**super().state(), **{f"ema{i}": ema.state_dict() for i, ema in enumerate(self.ema)}}

    def load_state(self, state):
        super().load_state(state)
        for i, ema in enumerate(self.ema):
            ema.load_state_dict(state[f"ema{i}"])

    @torch.no_grad()
    def after_step(self, k: int) -> None:
        decay = min(self.config.ema_decay, (1 + k) / (10 + k))
        for ema, model in zip(self.ema, self.trainable()):
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


@torch.no_grad()
def sample_latents(vae, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scaled latents (B, 4, 16, 16) of images `x` (B, 3, 32, 32) in [0, 1]: a posterior sample, noise from `g`."""
    posterior = vae.encode(x * 2 - 1).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
    return latents * vae.config.scaling_factor


def drop_captions(scenes: list, dropout: float, g: torch.Generator) -> list[str]:
    """The scenes' captions, each replaced by "" with probability `dropout` (for classifier-free guidance)."""
    keep = torch.rand(len(scenes), generator=g) >= dropout
    return [s.caption if kept else "" for s, kept in zip(scenes, keep.tolist())]


class UNetStage(EmaStage):
    name = "unet"

    def __init__(self, config, work):
        super().__init__(config, work)
        self.vae = load_vae(work)
        self.tokenizer = arch.build_tokenizer()
        self.unet = arch.build_unet(config.seed)
        self.text_encoder = arch.build_text_encoder(self.tokenizer, config.seed)
        self.start_ema([arch.build_unet(config.seed), arch.build_text_encoder(self.tokenizer, config.seed)])
        self.noise = arch.train_scheduler()
        snr = self.noise.alphas_cumprod / (1 - self.noise.alphas_cumprod)
        self.weights = snr.clamp(max=5.0) / snr  # Min-SNR-5 for epsilon prediction

    def trainable(self):
        return [self.unet, self.text_encoder]

    def step(self, k, g):
        x, scenes = self.images(k)
        b = len(x)
        latents = sample_latents(self.vae, x, g)
        captions = drop_captions(scenes, self.config.caption_dropout, g)
        ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (b,), generator=g)
        pred = self.unet(self.noise.add_noise(latents, noise, t), t, self.text_encoder(ids)[0]).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        return (self.weights[t] * per_sample).mean()

    def export(self):
        self.ema[0].save_pretrained(self.work / "unet")
        self.ema[1].save_pretrained(self.work / "text_encoder")
        return {"unet_params_M": sum(p.numel() for p in self.unet.parameters()) / 1e6}


#: Training stages in the order they run.
STAGES: dict[str, type[Stage]] = {"vae": VaeStage, "clip": ClipStage, "unet": UNetStage}


# ---------------------------------------------------------------------------------------------------------- runner
def train_stage(stage: Stage, *, progress: bool = True, stop_after: int | None = None) -> StageResult | None:
    """Run `stage` to its configured steps, resuming from ``work/STAGE/checkpoint.pt``; export at the end.

    `stop_after` ends the run after that many steps in total (checkpointed there, nothing exported; returns None),
    as an interruption would.
    """
    sc, folder = stage.stage_config, stage.work / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "result.json"
    if done.is_file():
        result = StageResult(**json.loads(done.read_text()))
        if result.steps == sc.steps:
            return result
        if stage.cosine or result.steps > sc.steps:  # a finished cosine schedule cannot be extended
            raise ValueError(
                f"{folder} finished {result.steps} {stage.name} steps; --{stage.name}-steps "
                f"{sc.steps} needs a new --work folder"
            )
    params = [p for m in stage.trainable() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=sc.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(sc.warmup, sc.steps, stage.cosine))
    ckpt = folder / "checkpoint.pt"
    start, wall, cpu, losses = 0, 0.0, 0.0, []
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        stage.load_state(state["models"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, wall, cpu, losses = state["step"], state["wall_s"], state["cpu_s"], state["losses"]
    for m in stage.trainable():
        m.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(start, sc.steps), initial=start, total=sc.steps, desc=f"train {stage.name}", disable=not progress)
    for k in bar:
        if stop_after is not None and k >= stop_after:
            return None
        loss = stage.step(k, stage.generator(k))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if hasattr(stage, "after_step"):
            stage.after_step(k)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (k + 1) % stage.config.checkpoint_every == 0 or k + 1 in (sc.steps, stop_after):
            w, c = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            _atomic_save(
                {
                    "models": stage.state(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": k + 1,
                    "wall_s": w,
                    "cpu_s": c,
                    "losses": losses,
                },
                ckpt,
            )
    wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    for m in stage.trainable():
        m.eval()
    result = StageResult(stage.name, sc.steps, wall, cpu, float(np.mean(losses[-50:])), stage.export())
    write_json(done, asdict(result))
    return result


#: What a stage checkpoint holds (anything else, or a file that is not plain tensors, is refused).
CHECKPOINT_KEYS = {"models", "optimizer", "scheduler", "step", "wall_s", "cpu_s", "losses"}


def load_checkpoint(path: Path) -> dict:
    """A stage checkpoint, unpickled with `weights_only=True` (tensors and plain containers only, never code).

    Raises:
        ValueError: the file holds other objects, is corrupt, or lacks :data:`CHECKPOINT_KEYS` (named).
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} is not a demo-train checkpoint this program wrote ({reason}); remove it, or pass another --work"
        ) from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise ValueError(f"{path} is not a demo-train checkpoint (keys missing); remove it, or pass another --work")
    return state


def _without_steps(config: dict) -> dict:
    return {k: {**v, "steps": None} if isinstance(v, dict) else v for k, v in config.items()}


def check_config(config: TrainConfig, work: Path) -> None:
    """Write `config` to ``work/config.json``, or check that a resumed run uses the same one (step counts may
    grow: a constant-learning-rate stage continues from its last checkpoint).

    Raises:
        ValueError: `work` holds a run with other settings.
    """
    path = work / "config.json"
    wanted = asdict(config)
    if path.is_file() and _without_steps(read_json(path, "demo-train config.json")) != _without_steps(wanted):
        raise ValueError(f"{work} holds a training run with other settings ({path}); pass another --work folder")
    write_json(path, wanted)


def train(
    config: TrainConfig, work: str | os.PathLike, stages: list[str] | None = None, *, progress: bool = True
) -> list[StageResult]:
    """Run the `stages` (all of :data:`STAGES` by default, in order) in `work`; see the module docstring."""
    work = Path(work)
    stages = list(STAGES) if stages is None else stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    for name in stages:  # every checkpoint readable before anything is written
        if (work / name / "checkpoint.pt").is_file():
            load_checkpoint(work / name / "checkpoint.pt")
    check_config(config, work)
    return [train_stage(STAGES[name](config, work), progress=progress) for name in STAGES if name in stages]


def assemble(work: str | os.PathLike, out: str | os.PathLike = DEMO_DIR, results: list[StageResult] = ()) -> Path:
    """Write ``out/pipeline`` (StableDiffusionPipeline, safetensors), ``out/clip`` and ``out/training.json``
    from the exported stages in `work` (each replaced whole: written aside, then renamed)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    work, out = Path(work), Path(out)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_pretrained(work / "unet"),
        vae=load_vae(work),
        text_encoder=CLIPTextModel.from_pretrained(work / "text_encoder"),
        tokenizer=arch.build_tokenizer(),
        scheduler=arch.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _replace(out / "pipeline", lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))

    def write_clip(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        shutil.copy(work / "clip" / f"{CLIP_NAME}.safetensors", tmp)
        (tmp / f"{CLIP_NAME}.json").write_text(json.dumps(model_config(pipe.tokenizer), indent=2) + "\n")

    _replace(out / "clip", write_clip)
    summary = {"config": json.loads((work / "config.json").read_text()), "stages": [asdict(r) for r in results]}
    write_json(out / "training.json", summary)
    return out


def _replace(target: Path, write) -> None:
    """`write(folder)` into a temporary folder that then replaces `target` (the package's own weights folder)."""
    with atomic_folder(target, overwrite=True) as tmp:
        tmp.rmdir()  # the writers create their folder themselves
        write(tmp)
