"""The demo world's CLIP scorer: a small open_clip model (config ``demo-clip``) registered with open_clip, so it
loads through open_clip's ordinary ``create_model_and_transforms("demo-clip", pretrained=CHECKPOINT)`` path, i.e.
through ``--clip-model demo-clip --clip-checkpoint prune_lab/demo/clip/demo-clip.safetensors``.

Its text tower reads the demo pipeline's own CLIP tokenizer (open_clip's ``HFTokenizer`` on the pipeline's
``tokenizer/`` folder). The shipped config names that folder relative to the demo package; :func:`register` writes
a copy with the absolute path and hands it to ``open_clip.add_model_config``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import CLIP_DIR, DEMO_DIR
from .architecture import CLIP_CONFIG

CLIP_NAME = "demo-clip"
CLIP_CONFIG_FILE = CLIP_DIR / f"{CLIP_NAME}.json"
CLIP_CHECKPOINT = CLIP_DIR / f"{CLIP_NAME}.safetensors"
TOKENIZER_REF = "pipeline/tokenizer"  # the shipped config's tokenizer folder, relative to DEMO_DIR


def model_config(tokenizer, tokenizer_ref: str = TOKENIZER_REF) -> dict:
    """The open_clip config of the scorer for `tokenizer` (vocabulary size, end / pad ids, tokenizer folder)."""
    cfg = deepcopy(CLIP_CONFIG)
    cfg["text_cfg"].update(
        vocab_size=len(tokenizer),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        hf_tokenizer_name=tokenizer_ref,
    )
    return cfg


def register(config_file: str | os.PathLike = CLIP_CONFIG_FILE, tokenizer_dir: str | os.PathLike | None = None) -> str:
    """Register the scorer's config with open_clip under the file's stem (``demo-clip``) and return that name.

    Args:
        config_file: an open_clip model config whose ``text_cfg.hf_tokenizer_name`` is relative to the demo package.
        tokenizer_dir: the tokenizer folder to use instead (training registers one in its work folder).

    Raises:
        FileNotFoundError: the config or the tokenizer folder is missing (the demo weights are not trained yet).
    """
    import open_clip

    config_file = Path(config_file)
    if not config_file.is_file():
        raise FileNotFoundError(f"open_clip config {config_file} not found; train it with `prunelab demo-train`")
    cfg = json.loads(config_file.read_text())
    tokenizer = Path(tokenizer_dir) if tokenizer_dir else DEMO_DIR / cfg["text_cfg"]["hf_tokenizer_name"]
    if not (tokenizer / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"tokenizer folder {tokenizer} not found; train it with `prunelab demo-train`")
    cfg["text_cfg"]["hf_tokenizer_name"] = str(tokenizer.resolve())
    resolved = Path(tempfile.gettempdir()) / f"prunelab-open-clip-{os.getuid()}" / config_file.name
    text = json.dumps(cfg, indent=2)
    if not resolved.is_file() or resolved.read_text() != text:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        tmp = resolved.with_name(f".{resolved.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, resolved)
    if open_clip.get_model_config(config_file.stem) != cfg:
        open_clip.add_model_config(resolved)
    return config_file.stem


def load_scorer(
    checkpoint: str | os.PathLike = CLIP_CHECKPOINT,
    device: str | torch.device = "cpu",
    *,
    config_file: str | os.PathLike = CLIP_CONFIG_FILE,
    tokenizer_dir: str | os.PathLike | None = None,
):
    """The trained scorer through open_clip: ``(model, preprocess, tokenizer)`` (model in eval mode).

    Args:
        checkpoint: the open_clip state dict (safetensors); the shipped one by default.
        device: where the model goes.
        config_file, tokenizer_dir: see :func:`register` (the shipped config and tokenizer by default).

    Raises:
        FileNotFoundError: no checkpoint at `checkpoint`.
    """
    import open_clip

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--clip-checkpoint {checkpoint} not found; train it with `prunelab demo-train`")
    name = register(config_file, tokenizer_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint), device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def normalize(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] -> the scorer's input: resized to its image size, mean / std normalised."""
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    cfg = getattr(visual, "preprocess_cfg", {})
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=images.device)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=images.device)
    return (images - mean[:, None, None]) / std[:, None, None]


def fid_extractor(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The scorer as a FID feature extractor with clean-fid's contract: float images ``[B, 3, H, W]`` in
    ``[0, 255]`` (any size, e.g. 299) -> image embeddings ``[B, embed_dim]`` (before normalisation)."""

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(normalize(model, images.float() / 255.0)).float()

    return extract


def multi_positive_clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss (Radford et al., 2021) with every same-caption pair a positive (UniCL, Yang et al., 2022,
    arXiv:2204.03610): a batch of a small world repeats captions, which plain InfoNCE would treat as negatives.

    Args:
        image_emb, text_emb: L2-normalised embeddings ``[B, D]``.
        labels: caption ids ``[B]`` (equal ids: the same caption).
        logit_scale: the model's learned log temperature (scalar).
    """
    logits = logit_scale.exp() * image_emb @ text_emb.t()  # [B, B]
    positive = (labels[:, None] == labels[None, :]).float()
    target = positive / positive.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def register_builtin(name: str) -> None:
    """Register the shipped scorer with open_clip when `name` is ``demo-clip`` (for `--clip-model` parsers: after
    this, open_clip's own `list_models` / `create_model_and_transforms` / `get_tokenizer` know it); else nothing."""
    if name == CLIP_NAME and CLIP_CONFIG_FILE.is_file():
        register()
