"""Shared tiny models: SD-v1 and SDXL topologies at toy width, and a complete tiny SD pipeline on disk.

Everything is built here, seeded, offline. Full-size architectures appear only in tests marked `slow`.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: SD-v1 topology (4 stages, 2 layers per block, cross-attention, mid stage) at toy width.
TINY_SD = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=2,
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=8,
)

#: SDXL topology (3 stages, transformer depths 1/2/10, text_time added embeddings) at toy width.
TINY_SDXL = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 64),
    layers_per_block=2,
    attention_head_dim=(2, 4, 8),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=32,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
    norm_num_groups=8,
)


def tiny_unet(config: dict = TINY_SD, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    # diffusers zero-initialises some tensors (biases, a few projections); give them small random values so
    # that no unit is an identity by accident and weight-mapping mistakes change outputs.
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return unet


#: An unconditional pixel-space UNet2DModel (LDM-style blocks with self-attention) at toy width.
TINY_LDM = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
)


def tiny_ldm_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**TINY_LDM).eval()


def unet_inputs(unet, batch: int = 2, seed: int = 0) -> dict:
    """Deterministic inputs for `unet.forward` (SDXL's added conditions included)."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    size = cfg.sample_size
    inputs = dict(
        sample=torch.randn(batch, cfg.in_channels, size, size, generator=g),
        timestep=torch.tensor([10, 500][:batch] + [999] * max(0, batch - 2)),
    )
    if hasattr(unet.config, "cross_attention_dim") and "Cross" in "".join(cfg.down_block_types):
        inputs["encoder_hidden_states"] = torch.randn(batch, 7, cfg.cross_attention_dim, generator=g)
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=g),
            "time_ids": torch.randn(batch, 6, generator=g),
        }
    return inputs


def run_unet(unet, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


@pytest.fixture
def sd_unet():
    return tiny_unet(TINY_SD)


@pytest.fixture
def sdxl_unet():
    return tiny_unet(TINY_SDXL)


def byte_tokenizer():
    """A CLIP tokenizer over single characters (no merges), built offline."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + [" "]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_text_config(tokenizer, hidden_size: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def build_tiny_pipeline(unet_config: dict = TINY_SD, seed: int = 0):
    """A complete StableDiffusionPipeline with tiny random components."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    unet = tiny_unet(unet_config, seed)
    torch.manual_seed(seed)
    vae = tiny_vae()
    tokenizer = byte_tokenizer()
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, unet_config["cross_attention_dim"]))
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A complete tiny SDXL pipeline: two text encoders of different widths, as SDXL's are (12 + 20 =
    cross_attention_dim 32; diffusers' single-file loader tells them apart by width), pooled projection 32."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config(tokenizer, 12)),
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(tokenizer, 20, projection_dim=32)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_unet(TINY_SDXL, seed),
        scheduler=EulerDiscreteScheduler(),
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny-sd"
    build_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet") / "tiny-unet"
    tiny_unet(TINY_SD).save_pretrained(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Toy models run fastest on one thread (two threads on two shared cores oversubscribe them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def library_logs_to_current_stderr():
    """diffusers / transformers bind their log handler to the `sys.stderr` of the moment they first log; under
    pytest's capture that stream is closed by the next test, and a later warning prints a '--- Logging error ---'
    traceback into whatever test runs then. Point the handlers at this test's stderr."""
    for name in ("diffusers", "transformers"):
        if name in sys.modules:
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler:  # the library's own handler, not pytest's capture
                    handler.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ------------------------------------------------------------------------------------------ transformers
#: Tiny configs of every transformer family (2-4 blocks, width 16), by diffusers class name.
TINY_TRANSFORMERS = {
    "DiTTransformer2DModel": dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4, sample_size=8
    ),
    "PixArtTransformer2DModel": dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        cross_attention_dim=16,
        sample_size=8,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=12,
        use_additional_conditions=False,
    ),
    "SD3Transformer2DModel": dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=12,
        caption_projection_dim=16,
        pooled_projection_dim=10,
        pos_embed_max_size=16,
        dual_attention_layers=(0, 2),
        qk_norm="rms_norm",
    ),
    "FluxTransformer2DModel": dict(
        in_channels=8,
        num_layers=3,
        num_single_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=12,
        pooled_projection_dim=10,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ),
    "SanaTransformer2DModel": dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=3,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=12,
        sample_size=8,
    ),
}


def tiny_transformer(class_name: str, seed: int = 0, **overrides):
    """A tiny seeded transformer of `class_name`; zero-initialised tensors get small random values (as
    :func:`tiny_unet`), so no block or branch is an identity by accident."""
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, class_name)(**{**TINY_TRANSFORMERS[class_name], **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


def transformer_inputs(model, batch: int = 2, seed: int = 0, latent: int = 8) -> tuple:
    """`(fn, args)`: the backbone's step call with random inputs of batch `batch` (timesteps in range)."""
    from prune_lab.backbones import backbone_for

    fn, zeros = backbone_for(model).example_call(model, latent, device="cpu")
    g = torch.Generator().manual_seed(seed)
    args = []
    for t in zeros:
        if not t.is_floating_point():
            args.append(torch.randint(0, 10, (batch, *t.shape[1:]), generator=g))
        elif t.ndim == 1:
            args.append(torch.rand(batch, generator=g) * (1 if fn.__name__ == "_flux_step" else 999))
        elif t.ndim == 2 and t.shape[-1] == 3:  # Flux position ids: shared over the batch
            args.append(torch.randint(0, 8, t.shape, generator=g).float())
        else:
            shape = (batch, min(t.shape[1], 9), *t.shape[2:]) if t.ndim == 3 and t.shape[1] > 64 else t.shape
            args.append(torch.randn(batch, *shape[1:], generator=g))
    if fn.__name__ == "_flux_step":  # text ids follow the shortened text
        args[5] = args[5][: args[2].shape[1]]
    return fn, tuple(args)


def run_transformer(model, call: tuple) -> torch.Tensor:
    fn, args = call
    with torch.no_grad():
        return fn(model, *args)


@pytest.fixture(params=sorted(TINY_TRANSFORMERS))
def tiny_family(request):
    """Each transformer family's class name in turn."""
    return request.param
