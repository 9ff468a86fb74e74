"""The parts of a text-to-image pipeline around the U-Net: text encoder(s) and VAE decoder.

A whole generation costs text encoder + U-Net x steps + VAE decoder (BK-SDM, Kim et al. 2023, Table 2). The
built-in architectures get their public component configs here; a pipeline folder's come from its
`model_index.json` and `<role>/config.json`. Either way only configs are read, so structure numbers need no
weights: components are built on the `meta` device.

Public configs (the `config.json` files of the released pipelines):

* SD-v1.x: CLIP ViT-L/14 text tower (`openai/clip-vit-large-patch14`, 12 layers, width 768, quick-GELU).
* SD-v2.x: OpenCLIP ViT-H/14 text tower, as converted to `CLIPTextModel` by diffusers: 23 of its 24 layers
  (SD-v2 conditions on the penultimate layer, so the last one was dropped), width 1024, GELU.
* SDXL: CLIP ViT-L/14 (`text_encoder`) plus OpenCLIP ViT-bigG/14 with its text projection
  (`text_encoder_2`, `CLIPTextModelWithProjection`, 32 layers, width 1280).
* All three: the same `AutoencoderKL` architecture (channels 128/256/512/512, 2 layers per block, 4 latent
  channels, 8x spatial factor); only scaling constants and sample sizes differ.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..runtime.counting import TEXT_TOKENS, Profile, profile_call
from ..runtime.loading import LoadedModel

#: Text length of the thop convention (CLIP's context length).
TEXT_ROLES = ("text_encoder", "text_encoder_2")
VAE_ROLE = "vae"
_LIBRARIES = ("transformers", "diffusers")


@dataclass(frozen=True)
class ComponentSpec:
    """How to build one pipeline component.

    Attributes:
        role: its name in the pipeline (`text_encoder`, `text_encoder_2`, `vae`).
        library: `transformers` or `diffusers`.
        class_name: the model class in that library.
        config: the class's config (the `config.json` contents).
        folder: where its weights live (pipeline folders only); None for built-ins.
    """

    role: str
    library: str
    class_name: str
    config: dict
    folder: Path | None = field(default=None, compare=False)

    def model_class(self) -> type[nn.Module]:
        if self.library not in _LIBRARIES:
            raise ValueError(f"{self.role}: components from {self.library!r} are not supported ({_LIBRARIES})")
        return getattr(importlib.import_module(self.library), self.class_name)


_CLIP_TEXT = dict(
    vocab_size=49408,
    max_position_embeddings=TEXT_TOKENS,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)
CLIP_VIT_L = dict(
    _CLIP_TEXT,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
OPENCLIP_VIT_H = dict(
    _CLIP_TEXT,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=512,
)
OPENCLIP_VIT_BIGG = dict(
    _CLIP_TEXT,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
)


def _text(role: str, config: dict, cls: str = "CLIPTextModel") -> ComponentSpec:
    return ComponentSpec(role, "transformers", cls, config)


def _vae(sample_size: int, scaling_factor: float = 0.18215) -> ComponentSpec:
    return ComponentSpec(
        VAE_ROLE, "diffusers", "AutoencoderKL", dict(SD_VAE, sample_size=sample_size, scaling_factor=scaling_factor)
    )


#: Public text-encoder and VAE configs of the built-in architectures (same keys as `models.ARCHITECTURES`).
BUILTIN_COMPONENTS: dict[str, tuple[ComponentSpec, ...]] = {
    "sd-v1": (_text("text_encoder", CLIP_VIT_L), _vae(512)),
    "sd-v2-base": (_text("text_encoder", OPENCLIP_VIT_H), _vae(512)),
    "sd-v2": (_text("text_encoder", OPENCLIP_VIT_H), _vae(768)),
    "sdxl": (
        _text("text_encoder", CLIP_VIT_L),
        _text("text_encoder_2", OPENCLIP_VIT_BIGG, "CLIPTextModelWithProjection"),
        _vae(1024, 0.13025),
    ),
}


def _pipeline_specs(root: Path) -> tuple[ComponentSpec, ...]:
    index = root / "model_index.json"
    if not index.exists():  # e.g. a U-Net-only `prunelab apply` output: DIR/unet and a plan, no pipeline
        return ()
    entries = json.loads(index.read_text())
    specs = []
    for role in (*TEXT_ROLES, VAE_ROLE):
        library, class_name = (entries.get(role) or [None, None])[:2]
        config_path = root / role / "config.json"
        if library is None or not config_path.exists():
            continue
        specs.append(ComponentSpec(role, library, class_name, json.loads(config_path.read_text()), root / role))
    return tuple(specs)


def component_specs(loaded: LoadedModel) -> tuple[ComponentSpec, ...]:
    """The text encoder(s) and VAE of `loaded`: built-in configs, a pipeline folder's, or none."""
    if loaded.kind == "builtin":
        return BUILTIN_COMPONENTS.get(loaded.source, ())
    if loaded.is_pipeline:
        return _pipeline_specs(loaded.root)
    return ()


def build_component(spec: ComponentSpec, *, meta: bool = True) -> nn.Module:
    """Instantiate `spec` from its config: on the `meta` device (structure only) or with random weights."""
    cls = spec.model_class()
    config = {k: v for k, v in spec.config.items() if not k.startswith("_")}
    with torch.device("meta") if meta else torch.device("cpu"):
        if spec.library == "transformers":
            return cls(cls.config_class.from_dict(config)).eval()
        return cls.from_config(config).eval()


def load_component(spec: ComponentSpec) -> nn.Module:
    """Real weights: a pipeline folder's checkpoint, or seeded random weights for built-ins."""
    if spec.folder is None:
        torch.manual_seed(0)
        return build_component(spec, meta=False)
    return spec.model_class().from_pretrained(spec.folder).eval()


def vae_scale_factor(specs: tuple[ComponentSpec, ...]) -> int:
    """Image pixels per latent pixel: 2^(VAE levels - 1), or 8 (the SD convention) when there is no VAE."""
    vae = next((s for s in specs if s.role == VAE_ROLE), None)
    return 8 if vae is None else 2 ** (len(vae.config["block_out_channels"]) - 1)


# ------------------------------------------------------------------------------------------------ costs
def _text_inputs(module: nn.Module, latent: int, device) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=device),)


def _vae_inputs(module: nn.Module, latent: int, device) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, module.config.latent_channels, latent, latent, device=device),)


def _run_text(encoder: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return encoder(ids)[0]


def _decode(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z, return_dict=False)[0]


def _decoder_params(vae: nn.Module) -> int:
    parts = (vae.decoder, getattr(vae, "post_quant_conv", None))
    return sum(p.numel() for part in parts if part is not None for p in part.parameters())


@dataclass(frozen=True)
class _Runner:
    inputs: Callable[[nn.Module, int, object], tuple[torch.Tensor, ...]]
    call: Callable
    params: Callable[[nn.Module], int] | None = None


#: How each role is run for one generation: text encoders on 77 zero tokens; the VAE *decoder* on the latent
#: (`post_quant_conv` + `decoder`, what `AutoencoderKL.decode` runs; BK-SDM counts `vae.decoder`, which is
#: 20 parameters and latent^2 x 16 MACs less).
RUNNERS: dict[str, _Runner] = {
    "text_encoder": _Runner(_text_inputs, _run_text),
    "text_encoder_2": _Runner(_text_inputs, _run_text),
    VAE_ROLE: _Runner(_vae_inputs, _decode, _decoder_params),
}


def component_call(spec: ComponentSpec, module: nn.Module, latent: int, device="meta"):
    """`(fn, args)` running `module` (built from `spec`) once as in a generation: `fn(module, *args)`."""
    runner = RUNNERS[spec.role]
    return runner.call, runner.inputs(module, latent, device)


def profile_component(spec: ComponentSpec, latent: int) -> Profile:
    """Params and MACs of one component for one generation at latent size `latent` (structure only)."""
    module = build_component(spec, meta=True)
    fn, args = component_call(spec, module, latent)
    profile = profile_call(module, fn, *args)
    runner = RUNNERS[spec.role]
    if runner.params is not None:
        profile.params = runner.params(module)
    return profile
