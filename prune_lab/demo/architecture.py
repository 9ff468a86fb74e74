"""What the demo models are: a word-level CLIP tokenizer for the world's vocabulary and the configs of the
Stable-Diffusion-layout parts (SD-v1 U-Net topology at toy width, a 2x `AutoencoderKL`, a small `CLIPTextModel`)
and of the open_clip scorer.

The U-Net keeps everything that makes SD-v1 SD-v1 for prune_lab (4 stages: 3 cross-attention down stages and a
plain one, 2 layers per block, a mid stage, the mirrored up path with 3 resnets per up block), so `walk` finds
the same units with the same names as on `sd-v1`.
"""

from __future__ import annotations

import string
from collections import Counter

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..runtime.counting import TEXT_TOKENS  # SD's text length: the pipeline pads every prompt to it
from .world import IMAGE_SIZE, vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

#: The U-Net: SD-v1's topology (`prune_lab.models.ARCHITECTURES["sd-v1"]`) on 16x16x4 latents, channels / 10-20.
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 2,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=2,
    attention_head_dim=4,
    cross_attention_dim=64,
    norm_num_groups=8,
)

#: The autoencoder: one downsampling (32x32x3 images <-> 16x16x4 latents).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)

#: The text encoder (transformers `CLIPTextConfig` keyword arguments, vocabulary size added by the builder).
TEXT_CONFIG = dict(
    hidden_size=UNET_CONFIG["cross_attention_dim"],
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=TEXT_TOKENS,
)

#: SD-v1's noise schedule (DDPM training, DPM-Solver++ sampling by default in the shipped pipeline).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

#: The open_clip scorer (`open_clip.create_model` config): open_clip's ModifiedResNet image tower (a CNN: a small
#: ViT stayed at chance on shape and position for 300 steps here, learning colour only) and a 2-layer text
#: transformer that reads the pipeline's tokenizer, whose path is filled in when the config is registered (see
#: :mod:`prune_lab.demo.scorer`).
CLIP_CONFIG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=IMAGE_SIZE, layers=[1, 1, 1, 1], width=16, head_width=16),
    text_cfg=dict(context_length=16, width=64, heads=4, layers=2, mlp_ratio=2.0, pool_type="eos"),
)


def train_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges (Sennrich et al., 2016) learned until every word in `words` is a single token.

    Encoding a learned word replays the merges in rank order, which rebuilds the whole word (ties between
    equally frequent pairs go to the first seen, so the result is deterministic).
    """
    pieces = [list(w[:-1]) + [w[-1] + END_OF_WORD] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(p) > 1 for p in pieces):
        pairs = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = max(pairs, key=lambda pair: pairs[pair])  # Counter keeps first-seen order among ties
        merges.append(best)
        pieces = [_merge(p, best) for p in pieces]
    return merges


def _merge(pieces: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            out.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def build_tokenizer(words: list[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary holds every world word as one token, plus single characters (so any
    text still tokenizes) and the start / end tokens (end last: it has the highest id, as in CLIP)."""
    words = vocabulary() if words is None else words
    merges = train_bpe(words)
    vocab = {BOS: 0}
    for ch in string.ascii_lowercase + string.digits + ",.'":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + END_OF_WORD, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_TOKENS)


def text_config(tokenizer: CLIPTokenizer, **config) -> CLIPTextConfig:
    """A `CLIPTextConfig` of `config` (:data:`TEXT_CONFIG` by default) reading `tokenizer`'s vocabulary."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(config or TEXT_CONFIG),
    )


def build_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(text_config(tokenizer))


def build_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sample_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(**SCHEDULE, prediction_type="epsilon", steps_offset=1)
