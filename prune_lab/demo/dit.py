"""The demo world's flow-matching transformer `demo-dit`: an SD3 (MMDiT) pipeline at toy size and its training stage.

The pipeline is a stock diffusers `StableDiffusion3Pipeline` without T5 (``text_encoder_3=None``): two small
`CLIPTextModelWithProjection` encoders reading the demo's word-level tokenizer (prompts padded to
:data:`TEXT_TOKENS`), an `SD3Transformer2DModel` of :data:`TRANSFORMER_CONFIG` (12 joint blocks, width 64, 2x2
patches on the 16x16x4 latents: 64 image tokens) and the U-Net demo's frozen autoencoder (copied in, so the folder
loads with `from_pretrained` on its own). Sampling: :data:`prune_lab.demo.DIT_SAMPLING`.

Without T5 the pipeline appends `max_sequence_length` (256) zero vectors to the CLIP tokens. They enter every block
as the same token, and every operation of a block but attention is per token, so they stay identical: in joint
attention they act as one key whose softmax weight counts 256 times. Training runs that single token with log(256)
added to its attention logit (:class:`RepeatedTokenJointAttnProcessor`), which is exactly the pipeline's forward
at a fifth of the tokens; the exported model has diffusers' own processors.

Recipe (:class:`DitStage`, run by :func:`train_dit` like :mod:`prune_lab.demo.train`'s stages: deterministic per
step, checkpointed, resumable, EMA export): the transformer and both text encoders trained jointly with the
rectified-flow loss (Esser et al., 2024: x_t = (1 - σ)·x_0 + σ·ε, target ε - x_0, σ logit-normal, through
:func:`prune_lab.runtime.schedule.noised`), 10% empty captions for classifier-free guidance.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ..runtime.atomic import write_json
from ..runtime.schedule import TimestepSampling, noised
from ..runtime.validate import read_json
from . import DEMO_DIR, PIPELINE_DIR
from . import architecture as arch
from .train import (
    EmaStage,
    StageConfig,
    StageResult,
    _replace,
    check_config,
    drop_captions,
    load_checkpoint,
    sample_latents,
    step_generator,
    train_stage,
)

#: CLIP tokens per prompt (a world caption is at most 5 with the start and end tokens).
TEXT_TOKENS = 8

#: The MMDiT: SD3's block layout at toy width on 16x16x4 latents in 2x2 patches.
TRANSFORMER_CONFIG = dict(
    sample_size=16,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=12,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=128,  # the two encoders' hidden states side by side (64 + 64)
    caption_projection_dim=64,
    pooled_projection_dim=128,  # the two pooled projections side by side (64 + 64)
    pos_embed_max_size=16,
)

#: Each text encoder (transformers `CLIPTextConfig` keyword arguments; vocabulary from the tokenizer).
TEXT_CONFIG = dict(arch.TEXT_CONFIG, max_position_embeddings=TEXT_TOKENS, projection_dim=64)

#: The flow-matching schedule (no resolution shift: SD3's shift 3.0 is for 1024-pixel images).
SCHEDULE = dict(num_train_timesteps=1000, shift=1.0)

#: Stream number of the stage's random draws (after the U-Net recipe's vae, clip, unet).
STREAM = 3

#: The pipeline folder and the training record, under the demo package (or `assemble_dit`'s `out`).
FOLDER, RECORD = "pipeline-dit", "training-dit.json"


@dataclass
class DitTrainConfig:
    """Everything a `demo-train --backbone sd3` run depends on (written next to its checkpoints)."""

    seed: int = 0
    dit: StageConfig = field(default_factory=lambda: StageConfig(steps=4000, batch=16, lr=5e-4, warmup=200))
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    checkpoint_every: int = 100
    timesteps: str = "logit_normal"
    transformer: dict = field(default_factory=lambda: dict(TRANSFORMER_CONFIG))


def build_tokenizer() -> CLIPTokenizer:
    """The demo's word-level tokenizer, padding to :data:`TEXT_TOKENS`."""
    tokenizer = arch.build_tokenizer()
    tokenizer.model_max_length = TEXT_TOKENS
    return tokenizer


def build_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(arch.text_config(tokenizer, **TEXT_CONFIG))


def build_transformer(seed: int, config: dict | None = None) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**(config or TRANSFORMER_CONFIG))


def load_vae() -> AutoencoderKL:
    """The U-Net demo's trained autoencoder, frozen, with latent shift 0 stated (SD3's pipeline decodes
    z / scaling_factor + shift_factor and needs a number)."""
    if not (PIPELINE_DIR / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{PIPELINE_DIR / 'vae'}: the demo autoencoder is missing; run `prunelab demo-train`")
    vae = AutoencoderKL.from_pretrained(PIPELINE_DIR / "vae").eval().requires_grad_(False)
    vae.register_to_config(shift_factor=vae.config.shift_factor or 0.0)
    return vae


def build_pipeline(transformer, text_encoder, text_encoder_2, vae=None) -> StableDiffusion3Pipeline:
    """The SD3 pipeline of `demo-dit` around the given modules (no T5)."""
    tokenizer = build_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULE),
        vae=vae if vae is not None else load_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


#: The zero tokens the pipeline appends without T5 (its `max_sequence_length` default).
T5_TOKENS = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default


class RepeatedTokenJointAttnProcessor:
    """SD3's joint attention (diffusers' `JointAttnProcessor2_0`, no qk-norm) where the last context token stands
    for `repeats` identical tokens: its key gets log(repeats) added to every attention logit.

    Args:
        repeats: how many copies the last context token stands for.
    """

    def __init__(self, repeats: int) -> None:
        self.bias = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        """(B, N, D) image and (B, M, D) context tokens -> their attention outputs (context None after the last
        block, whose context is not used further)."""
        b, n = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q = torch.cat([heads(attn.to_q(hidden_states)), heads(attn.add_q_proj(encoder_hidden_states))], dim=2)
        k = torch.cat([heads(attn.to_k(hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))], dim=2)
        v = torch.cat([heads(attn.to_v(hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))], dim=2)
        mask = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
        mask[-1] = self.bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.view(1, 1, 1, -1))
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        image, context = out[:, :n], out[:, n:]
        image = attn.to_out[1](attn.to_out[0](image))
        if attn.context_pre_only:
            return image, context
        return image, attn.to_add_out(context)


def prompt_embeds(pipe: StableDiffusion3Pipeline, captions: list[str], zero_tokens: int = T5_TOKENS):
    """The pipeline's own text conditioning of `captions` (gradients kept): (B, L + `zero_tokens`, 128) states and
    (B, 128) pooled projections."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        captions, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=zero_tokens
    )
    return embeds, pooled


class DitStage(EmaStage):
    """The transformer and both text encoders, trained jointly (see the module docstring)."""

    name = "dit"

    def __init__(self, config: DitTrainConfig, work: Path):
        super().__init__(config, work)
        tokenizer = build_tokenizer()
        self.transformer = build_transformer(config.seed, config.transformer)
        encoders = [build_text_encoder(tokenizer, config.seed + i) for i in (0, 1)]
        self.pipe = build_pipeline(self.transformer, *encoders)
        self.start_ema(
            [build_transformer(config.seed, config.transformer)]
            + [build_text_encoder(tokenizer, config.seed + i) for i in (0, 1)]
        )
        self.transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(T5_TOKENS))
        self.noise = FlowMatchEulerDiscreteScheduler(**SCHEDULE)  # its training sigma grid
        self.sampling = TimestepSampling(config.timesteps)

    def trainable(self):
        return [self.transformer, self.pipe.text_encoder, self.pipe.text_encoder_2]

    def generator(self, k):
        return step_generator(self.config.seed, STREAM, k)

    def step(self, k, g):
        x, scenes = self.images(k)
        latents = sample_latents(self.pipe.vae, x, g)
        embeds, pooled = prompt_embeds(self.pipe, drop_captions(scenes, self.config.caption_dropout, g), 1)
        noise = torch.randn(latents.shape, generator=g)
        noisy, t, target = noised(self.noise, latents, noise, g, self.sampling)
        pred = self.transformer(
            hidden_states=noisy, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        return F.mse_loss(pred, target)

    def export(self):
        for name, module in zip(("transformer", "text_encoder", "text_encoder_2"), self.ema):
            module.save_pretrained(self.work / name)
        return {"transformer_params_M": sum(p.numel() for p in self.transformer.parameters()) / 1e6}


def train_dit(config: DitTrainConfig, work: str | os.PathLike, *, progress: bool = True) -> StageResult | None:
    """Run (or resume) the stage in `work`; see the module docstring."""
    work = Path(work)
    if (work / "dit" / "checkpoint.pt").is_file():  # readable before anything is written
        load_checkpoint(work / "dit" / "checkpoint.pt")
    check_config(config, work)
    return train_stage(DitStage(config, work), progress=progress)


def assemble_dit(
    work: str | os.PathLike, out: str | os.PathLike = DEMO_DIR, result: StageResult | None = None
) -> Path:
    """Write ``out/pipeline-dit`` (the `demo-dit` pipeline, safetensors, the autoencoder copied in) from the stage's
    export in `work`, and ``out/training-dit.json`` (its training record) when `result` is given; each replaced
    whole."""
    work, out = Path(work), Path(out)
    pipe = build_pipeline(
        SD3Transformer2DModel.from_pretrained(work / "transformer"),
        CLIPTextModelWithProjection.from_pretrained(work / "text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(work / "text_encoder_2"),
    )
    _replace(out / FOLDER, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
    if result is not None:
        config = read_json(work / "config.json", "demo-train config.json")
        write_json(out / RECORD, {"config": config, "stages": [asdict(result)]})
    return out / FOLDER
