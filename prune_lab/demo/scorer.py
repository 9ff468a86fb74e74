"""The demo world's CLIP scorer: a small open_clip model (config ``demo-clip``) registered with open_clip, so it
loads through open_clip's ordinary ``create_model_and_transforms("demo-clip", pretrained=CHECKPOINT)`` path, and
registered with :func:`prune_lab.runtime.clip.register_clip` as ``demo-clip`` with the shipped weights, so
``load_clip("demo-clip")`` and ``--clip-model demo-clip`` find it without general code importing the demo.

Its text tower reads the demo pipeline's own CLIP tokenizer (open_clip's ``HFTokenizer`` on the pipeline's
``tokenizer/`` folder). The shipped config (``clip/demo-clip.json``, package data) names that folder relative to
the demo package; :func:`register` writes a copy with the absolute path into a private folder of this process
(``tempfile.mkdtemp``, removed at exit) and hands it to ``open_clip.add_model_config``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.atomic import write_json
from ..runtime.clip import load_clip, register_clip
from . import CLIP_DIR, DEMO_DIR

if TYPE_CHECKING:
    import torch

CLIP_NAME = "demo-clip"
CLIP_CONFIG_FILE = CLIP_DIR / f"{CLIP_NAME}.json"
CLIP_CHECKPOINT = CLIP_DIR / f"{CLIP_NAME}.safetensors"
TOKENIZER_REF = "pipeline/tokenizer"  # the shipped config's tokenizer folder, relative to DEMO_DIR

_private: list[Path] = []  # this process's folder for resolved configs (created on first registration)


def model_config(tokenizer, tokenizer_ref: str = TOKENIZER_REF) -> dict:
    """The open_clip config of the scorer for `tokenizer` (vocabulary size, end / pad ids, tokenizer folder)."""
    from .architecture import CLIP_CONFIG

    cfg = deepcopy(CLIP_CONFIG)
    cfg["text_cfg"].update(
        vocab_size=len(tokenizer),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        hf_tokenizer_name=tokenizer_ref,
    )
    return cfg


def private_folder() -> Path:
    """A folder only this process writes to (``tempfile.mkdtemp``: a random name, mode 0700), removed at exit."""
    if not _private or not _private[-1].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="prunelab-open-clip-"))
        atexit.register(shutil.rmtree, folder, True)
        _private.append(folder)
    return _private[-1]


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
    if open_clip.get_model_config(config_file.stem) != cfg:
        open_clip.add_model_config(write_json(private_folder() / config_file.name, cfg))
    return config_file.stem


def load_scorer(checkpoint: str | os.PathLike = CLIP_CHECKPOINT, device: str | torch.device = "cpu"):
    """The trained scorer through the runtime loader: ``(model, preprocess, tokenizer)`` (model in eval mode).

    Args:
        checkpoint: the open_clip state dict (safetensors); the shipped one by default.
        device: where the model goes.

    Raises:
        FileNotFoundError: no checkpoint at `checkpoint`, or the demo weights are not trained yet.
    """
    scorer = load_clip(CLIP_NAME, checkpoint=checkpoint, device=device)
    return scorer.model, scorer.preprocess, scorer.tokenizer


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
    import torch.nn.functional as F

    logits = logit_scale.exp() * image_emb @ text_emb.t()  # [B, B]
    positive = (labels[:, None] == labels[None, :]).float()
    target = positive / positive.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


register_clip(
    CLIP_NAME,
    register,
    checkpoint=CLIP_CHECKPOINT,
    description="the demo world's scorer (64-d embeddings, the demo pipeline's tokenizer)",
)
