"""The one CLIP loader and scorer (open_clip), and the registry of named CLIP scorers.

:func:`load_clip` turns a `--clip-model` value into a :class:`ClipScorer` (model, image transform, tokenizer):

* a name registered with :func:`register_clip` (its `setup` makes the architecture known to open_clip; its
  `checkpoint` is the default weights), e.g. the demo world's ``demo-clip``;
* an open_clip model name (``ViT-g-14``) with a pretrained tag or a local checkpoint;
* a model config ``.json`` (registered with ``open_clip.add_model_config`` under the file's stem);
* ``local-dir:DIR`` / ``hf-hub:ORG/REPO`` (open_clip reads config and weights from there).

Registered scorers live in :data:`CLIP_SCORERS`; its loader imports the modules of :data:`BUILTIN_SCORERS` on
first lookup, so general code finds ``demo-clip`` without importing the demo (only the demo knows the demo).

The CLIP score (Hessel et al., 2021, arXiv:2104.08718) is the cosine between image and text embeddings, raw
(not x100, not clipped at 0), as BK-SDM's ``eval_clip_score.py``. torch and open_clip are imported on use, so
looking a name up stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import Registry

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP_MODEL = "ViT-g-14"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b88k"
#: open_clip's schemas: the config and weights come from the named folder or hub repository.
SCHEMAS = ("local-dir:", "hf-hub:")
#: Modules whose import registers the built-in CLIP scorers (module paths: runtime imports none of them).
BUILTIN_SCORERS: tuple[str, ...] = ("prune_lab.demo.scorer",)
#: Image normalisation of OpenAI's CLIP, open_clip's default when a model states none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipSpec:
    """A registered CLIP scorer.

    Attributes:
        setup: makes the architecture known to open_clip (e.g. ``open_clip.add_model_config``) and returns the
            open_clip model name; called on every load (it should be cheap when already done).
        checkpoint: the local weights used when no checkpoint is given (None: a pretrained tag is needed).
        description: one line for listings.
    """

    setup: Callable[[], str]
    checkpoint: Path | None = None
    description: str = ""


def _import_builtins() -> None:
    for module in BUILTIN_SCORERS:
        importlib.import_module(module)


#: Named CLIP scorers: :func:`register_clip` adds one, :func:`load_clip` looks names up here first.
CLIP_SCORERS: Registry[ClipSpec] = Registry(
    "CLIP scorer", loader=_import_builtins, hint="or an open_clip model name, a config .json, local-dir:DIR"
)


def register_clip(
    name: str,
    setup: Callable[[], str],
    *,
    checkpoint: str | os.PathLike | None = None,
    description: str = "",
    replace: bool = False,
) -> ClipSpec:
    """Register a named CLIP scorer, so that `load_clip(name)` (and ``--clip-model NAME``) loads it.

    Args:
        name: the `--clip-model` value.
        setup: see :class:`ClipSpec`.
        checkpoint: default local weights.
        replace: re-register `name` on purpose.

    Raises:
        ValueError: `name` is taken and `replace` is false.
    """
    spec = ClipSpec(setup, Path(checkpoint) if checkpoint is not None else None, description)
    return CLIP_SCORERS.register(name, spec, replace=replace)


# ------------------------------------------------------------------------------------------------------- scorer
def normalize_images(model, images: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] -> an open_clip model's image input: resized (bilinear, antialiased) to its
    image size when needed, then normalised with its mean / std (:data:`CLIP_MEAN` / :data:`CLIP_STD` if unset)."""
    import torch
    import torch.nn.functional as F

    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    cfg = getattr(visual, "preprocess_cfg", {})
    mean = torch.tensor(cfg.get("mean", CLIP_MEAN), device=images.device)
    std = torch.tensor(cfg.get("std", CLIP_STD), device=images.device)
    return (images - mean[:, None, None]) / std[:, None, None]


def fid_extractor(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """An open_clip model as a FID feature extractor with clean-fid's contract: float images ``[B, 3, H, W]`` in
    ``[0, 255]`` (any size, e.g. 299) -> image embeddings ``[B, embed_dim]`` (before normalisation)."""
    import torch

    def extract(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_image(normalize_images(model, images.float() / 255.0)).float()

    return extract


@dataclass
class ClipScorer:
    """An open_clip model (eval mode) with its image transform and tokenizer, on `device`.

    Attributes:
        name: what was loaded (model name and weights), for result records.
    """

    model: Any
    preprocess: Callable
    tokenizer: Callable
    device: Any = "cpu"
    name: str = ""

    def __call__(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """CLIP score ``[N]`` of PIL images and their texts (each image through `preprocess`)."""
        import torch

        return self.similarity(torch.stack([self.preprocess(im) for im in images]), texts)

    def similarity(self, pixels: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity ``[N]`` (float32) between preprocessed images ``[N, 3, S, S]`` and their texts."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            image = F.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1)
            tokens = self.tokenizer(list(texts)).to(self.device)
            text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return (image * text).sum(dim=-1)

    def fid_extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This model as a FID feature extractor (:func:`fid_extractor`)."""
        return fid_extractor(self.model)


# ------------------------------------------------------------------------------------------------------- loader
def clip_model_name(name: str) -> tuple[str, ClipSpec | None]:
    """The open_clip model name for a `--clip-model` value (made known to open_clip), and its registration.

    Raises:
        FileNotFoundError: a config ``.json`` that does not exist.
        ValueError: an unknown name (with the closest known one).
    """
    import open_clip

    if name in CLIP_SCORERS:
        spec = CLIP_SCORERS.get(name)
        return spec.setup(), spec
    if name.startswith(SCHEMAS):
        return name, None
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--clip-model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem, None
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, [*CLIP_SCORERS.names(), *open_clip.list_models()], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown --clip-model {name!r}; {hint}pass a registered CLIP scorer ({', '.join(CLIP_SCORERS.names())}),"
            f" an open_clip model name (e.g. {DEFAULT_CLIP_MODEL}), a model config .json or local-dir:DIR"
        )
    return name, None


def _check_pretrained(model: str, pretrained: str | None) -> None:
    import open_clip

    if pretrained and not model.startswith(SCHEMAS) and not open_clip.get_pretrained_cfg(model, pretrained):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(
            f"open_clip has no weights {pretrained!r} for {model}; known: {tags} (or pass --clip-checkpoint PATH)"
        )


def _missing_weights(model: str, pretrained: str | None, error: Exception) -> FileNotFoundError:
    import open_clip

    hub = (open_clip.get_pretrained_cfg(model, pretrained) or {}).get("hf_hub", "")
    where = f" (open_clip_pytorch_model.bin from https://huggingface.co/{hub.rstrip('/')})" if hub else ""
    return FileNotFoundError(
        f"CLIP weights {model} {pretrained} are not cached and cannot be fetched ({str(error).splitlines()[0]}); "
        f"pass --clip-checkpoint PATH to a local copy{where}"
    )


def check_clip_checkpoint(path: Path) -> None:
    """Refuse a user's CLIP checkpoint that is not a readable safetensors file, or a torch file that does not load
    with `weights_only=True` (a pickle that could run code when loaded)."""
    import pickle

    import torch
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        raise ValueError(f"--clip-checkpoint {path} is a folder; pass the weights file")
    if not path.is_file():
        raise FileNotFoundError(f"--clip-checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except SafetensorError as e:
            raise ValueError(f"--clip-checkpoint {path} is not a readable safetensors file ({e})") from None
        return
    try:
        torch.load(path, map_location="meta", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
        raise ValueError(
            f"--clip-checkpoint {path} does not load as plain weights ({str(e).splitlines()[0][:100]}); prune_lab "
            "refuses checkpoints that could run code when loaded: use a .safetensors copy"
        ) from None


def load_clip(
    name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    checkpoint: str | os.PathLike | None = None,
    device: Any = "cpu",
) -> ClipScorer:
    """A CLIP scorer: `name`'s architecture (see the module docstring) with the weights of `checkpoint` (a local
    file), else the registered scorer's checkpoint, else the `pretrained` tag (cached or downloaded).

    Raises:
        FileNotFoundError: `checkpoint` is missing, or the tag's weights are not cached and cannot be fetched (the
            message names ``--clip-checkpoint``).
        ValueError: an unknown model or pretrained tag.
    """
    import open_clip

    model, spec = clip_model_name(name)
    if checkpoint is not None:
        check_clip_checkpoint(Path(checkpoint))
    if checkpoint is None and spec is not None:
        checkpoint = spec.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--clip-checkpoint {checkpoint}: no such file")
    if checkpoint is None:
        _check_pretrained(model, pretrained)
    source = str(checkpoint) if checkpoint is not None else None if model.startswith(SCHEMAS) else pretrained
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=source, device=device)
    except RuntimeError as e:
        if checkpoint is not None:
            raise ValueError(f"cannot load CLIP weights {checkpoint} into {model}: {str(e).splitlines()[0]}") from e
        if model.startswith(SCHEMAS):
            raise
        raise _missing_weights(model, pretrained, e) from None
    label = " ".join(filter(None, (name, source)))
    return ClipScorer(net.eval(), preprocess, open_clip.get_tokenizer(model), device, label)
