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

The transformer pipelines (text length: each pipeline's default `max_sequence_length` in the installed diffusers,
read from its `__call__` signature, :func:`sequence_length`; CLIP towers 77, or their
`max_position_embeddings` when shorter, as the `demo-dit` towers of 8):

* DiT-XL/2 (`DiTPipeline`): class-conditional, no text tower; SD's VAE (`sd-vae-ft-ema`).
* PixArt-Sigma: T5-XXL encoder (`google/t5-v1_1-xxl`, 24 layers, width 4096, gated GELU) at 300 tokens; SDXL's VAE.
* SD3 / SD3.5: CLIP-L and OpenCLIP-bigG with projections, T5-XXL at 256 tokens; a 16-channel `AutoencoderKL`
  (no quant convolutions).
* Flux.1: CLIP-L (`CLIPTextModel`), T5-XXL at 512 tokens (Flux-schnell: 256, the length it was distilled with and
  its model card passes); a 16-channel `AutoencoderKL` with Flux's scaling and shift.
* Sana: Gemma-2-2B (`Gemma2Model`, 26 layers, width 2304) at 300 tokens; the 32x deep-compression autoencoder
  `AutoencoderDC` (f32c32, 32 latent channels).
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

#: The text towers a pipeline may have (SD3 has three).
TEXT_ROLES = ("text_encoder", "text_encoder_2", "text_encoder_3")
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
        tokens: text length a text tower runs at (77 for CLIP; T5 / Gemma: the pipeline's `max_sequence_length`).
    """

    role: str
    library: str
    class_name: str
    config: dict
    folder: Path | None = field(default=None, compare=False)
    tokens: int = TEXT_TOKENS

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


T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    is_encoder_decoder=False,
)
GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0,
)
_EFFICIENT_VIT = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
DC_AE_F32C32 = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=_EFFICIENT_VIT,
    decoder_block_types=_EFFICIENT_VIT,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


def _text(role: str, config: dict, cls: str = "CLIPTextModel", tokens: int = TEXT_TOKENS) -> ComponentSpec:
    return ComponentSpec(role, "transformers", cls, config, tokens=tokens)


def _vae(sample_size: int, scaling_factor: float = 0.18215, **flow) -> ComponentSpec:
    """SD's `AutoencoderKL`; `flow` changes for SD3 / Flux (16 latent channels, shift, no quant convolutions)."""
    return ComponentSpec(
        VAE_ROLE,
        "diffusers",
        "AutoencoderKL",
        dict(SD_VAE, sample_size=sample_size, scaling_factor=scaling_factor, **flow),
    )


def sequence_length(pipeline_class: str) -> int | None:
    """The default `max_sequence_length` of a diffusers pipeline class's `__call__` (its T5 / Gemma text length)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    param = inspect.signature(cls.__call__).parameters.get("max_sequence_length") if cls is not None else None
    return None if param is None else param.default


def _t5(role: str, pipeline: str) -> ComponentSpec:
    return _text(role, T5_XXL, "T5EncoderModel", sequence_length(pipeline))


def _sd3() -> tuple[ComponentSpec, ...]:
    return (
        _text("text_encoder", CLIP_VIT_L, "CLIPTextModelWithProjection"),
        _text("text_encoder_2", OPENCLIP_VIT_BIGG, "CLIPTextModelWithProjection"),
        _t5("text_encoder_3", "StableDiffusion3Pipeline"),
        _vae(1024, 1.5305, latent_channels=16, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
    )


def _flux(tokens: int | None = None) -> tuple[ComponentSpec, ...]:
    t5 = _t5("text_encoder_2", "FluxPipeline")
    return (
        _text("text_encoder", CLIP_VIT_L),
        t5 if tokens is None else _text("text_encoder_2", T5_XXL, "T5EncoderModel", tokens),
        _vae(1024, 0.3611, latent_channels=16, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
    )


#: Flux-schnell's T5 length: the FluxPipeline default is 512, but schnell was distilled with (and its model card
#: passes) 256.
FLUX_SCHNELL_TOKENS = 256


def _transformer_components() -> dict[str, tuple[ComponentSpec, ...]]:
    return {
        "dit-xl-2": (_vae(256),),
        "pixart-sigma": (_t5("text_encoder", "PixArtSigmaPipeline"), _vae(1024, 0.13025)),
        "sd3-medium": _sd3(),
        "sd3.5-large": _sd3(),
        "sd3.5-medium": _sd3(),
        "flux-dev": _flux(),
        "flux-schnell": _flux(FLUX_SCHNELL_TOKENS),
        "sana-1600m": (
            _text("text_encoder", GEMMA2_2B, "Gemma2Model", sequence_length("SanaPipeline")),
            ComponentSpec(VAE_ROLE, "diffusers", "AutoencoderDC", DC_AE_F32C32),
        ),
    }


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
    long_text = sequence_length(entries.get("_class_name", "")) or TEXT_TOKENS
    specs = []
    for role in (*TEXT_ROLES, VAE_ROLE):
        library, class_name = (entries.get(role) or [None, None])[:2]
        config_path = root / role / "config.json"
        if library is None or not config_path.exists():
            continue
        config = json.loads(config_path.read_text())
        clip = min(TEXT_TOKENS, config.get("max_position_embeddings", TEXT_TOKENS))  # a small tower runs shorter
        tokens = clip if class_name.startswith("CLIP") else long_text
        specs.append(ComponentSpec(role, library, class_name, config, root / role, tokens))
    return tuple(specs)


def component_specs(loaded: LoadedModel) -> tuple[ComponentSpec, ...]:
    """The text encoder(s) and VAE of `loaded`: built-in configs, a pipeline folder's, or none."""
    if loaded.kind == "builtin":
        return BUILTIN_COMPONENTS.get(loaded.source) or _transformer_components().get(loaded.source, ())
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
    if vae is None:
        return 8
    levels = vae.config.get("block_out_channels") or vae.config["decoder_block_out_channels"]  # AutoencoderDC
    return 2 ** (len(levels) - 1)


# ------------------------------------------------------------------------------------------------ costs
def _text_inputs(spec: ComponentSpec, module: nn.Module, latent: int, device) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, spec.tokens, dtype=torch.long, device=device),)


def _vae_inputs(spec: ComponentSpec, module: nn.Module, latent: int, device) -> tuple[torch.Tensor, ...]:
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
    inputs: Callable[[ComponentSpec, nn.Module, int, object], tuple[torch.Tensor, ...]]
    call: Callable
    params: Callable[[nn.Module], int] | None = None


#: How each role is run for one generation: text encoders on `spec.tokens` zero tokens; the VAE *decoder* on the latent
#: (`post_quant_conv` + `decoder`, what `AutoencoderKL.decode` runs; BK-SDM counts `vae.decoder`, which is
#: 20 parameters and latent^2 x 16 MACs less).
RUNNERS: dict[str, _Runner] = {
    "text_encoder": _Runner(_text_inputs, _run_text),
    "text_encoder_2": _Runner(_text_inputs, _run_text),
    "text_encoder_3": _Runner(_text_inputs, _run_text),
    VAE_ROLE: _Runner(_vae_inputs, _decode, _decoder_params),
}


def component_call(spec: ComponentSpec, module: nn.Module, latent: int, device="meta"):
    """`(fn, args)` running `module` (built from `spec`) once as in a generation: `fn(module, *args)`."""
    runner = RUNNERS[spec.role]
    return runner.call, runner.inputs(spec, module, latent, device)


def profile_component(spec: ComponentSpec, latent: int) -> Profile:
    """Params and MACs of one component for one generation at latent size `latent` (structure only)."""
    module = build_component(spec, meta=True)
    fn, args = component_call(spec, module, latent)
    profile = profile_call(module, fn, *args)
    runner = RUNNERS[spec.role]
    if runner.params is not None:
        profile.params = runner.params(module)
    return profile
