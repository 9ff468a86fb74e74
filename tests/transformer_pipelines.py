"""Tiny random text-to-image transformer pipelines, built offline: SD3, Flux, PixArt-Sigma and Sana.

Each has a tiny transformer, a tiny VAE (AutoencoderKL; Sana's DC-AE) and tiny text encoders with tokenizers made
here (CLIP over characters as in `conftest.py`; T5 and Gemma2 over a word-level `PreTrainedTokenizerFast`), so the
pipelines' own `encode_prompt`, `from_pretrained` and `__call__` run without the network.
"""

from __future__ import annotations

import torch
from conftest import byte_tokenizer, tiny_text_config, tiny_vae

#: Words of the tiny word-level vocabulary (anything else is `<unk>`).
WORDS = "a an the red green blue cat dog house tree on in of with small big photo".split()

#: The pipeline families :func:`build_pipeline` makes.
FAMILIES = ("sd3", "flux", "pixart", "sana")

#: Width of the tiny T5 / Gemma2 encoders.
TEXT_WIDTH = 32


def word_tokenizer(max_length: int = 12, eos: bool = True):
    """A word-level fast tokenizer (`<pad>` 0, `</s>` 1, `<unk>` 2) that appends `</s>` when `eos`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=max_length,
        padding_side="right",
    )


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=4 + len(WORDS), d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0
    )
    return T5EncoderModel(config).eval()


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=4 + len(WORDS),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    return Gemma2Model(config).eval()


def tiny_kl_vae(scaling_factor: float, shift_factor: float | None):
    """`conftest.tiny_vae` (4 latent channels, downsampling 2) with the given latent scaling and shift."""
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=scaling_factor, shift_factor=shift_factor)
    return vae


def tiny_dc_vae():
    """A deterministic DC-AE (Sana's autoencoder; 2 stages: downsampling 2)."""
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.4,
    )


#: Tiny configs of the four text-to-image transformers (2-3 blocks, width 16), by diffusers class name.
TINY = {
    "SD3Transformer2DModel": dict(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    ),
    "FluxTransformer2DModel": dict(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ),
    "PixArtTransformer2DModel": dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=16,
        sample_size=8,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=TEXT_WIDTH,
        use_additional_conditions=False,
    ),
    "SanaTransformer2DModel": dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=TEXT_WIDTH,
        sample_size=8,
    ),
}


def tiny_transformer(class_name: str, **overrides):
    """A tiny transformer of `class_name` (:data:`TINY`), its zero-initialised tensors given small random values so
    that no block is an identity by accident."""
    import diffusers

    model = getattr(diffusers, class_name)(**{**TINY[class_name], **overrides})
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


def _clip_pair(tokenizer, projection_dim: int):
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(tiny_text_config(tokenizer, 16, projection_dim=projection_dim)).eval()


def build_sd3(seed: int = 0, t5: bool = True):
    """StableDiffusion3Pipeline: two CLIPs (16 wide, projections 16 + 16 = pooled 32) and a T5 (32 wide)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    clip = byte_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=tiny_transformer("SD3Transformer2DModel"),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_kl_vae(scaling_factor=1.5, shift_factor=0.1),
        text_encoder=_clip_pair(clip, 16),
        tokenizer=clip,
        text_encoder_2=_clip_pair(clip, 16),
        tokenizer_2=clip,
        text_encoder_3=tiny_t5() if t5 else None,
        tokenizer_3=word_tokenizer() if t5 else None,
    )


def build_flux(seed: int = 0, guidance_embeds: bool = True):
    """FluxPipeline: CLIP (pooled 16) + T5 (32 wide), 4-channel latents packed 2x2 into 16 channels."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    clip = byte_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=16,
        max_image_seq_len=256,
    )
    return FluxPipeline(
        transformer=tiny_transformer("FluxTransformer2DModel", guidance_embeds=guidance_embeds),
        scheduler=scheduler,
        vae=tiny_kl_vae(scaling_factor=0.8, shift_factor=0.2),
        text_encoder=CLIPTextModel(tiny_text_config(clip, 16)).eval(),
        tokenizer=clip,
        text_encoder_2=tiny_t5(),
        tokenizer_2=word_tokenizer(),
    )


def build_pixart(seed: int = 0):
    """PixArtSigmaPipeline: T5 (32 wide) with its attention mask, learned-sigma transformer (8 = 2 x 4 channels)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    torch.manual_seed(seed)
    return PixArtSigmaPipeline(
        tokenizer=word_tokenizer(),
        text_encoder=tiny_t5(),
        vae=tiny_kl_vae(scaling_factor=0.5, shift_factor=None),
        transformer=tiny_transformer("PixArtTransformer2DModel"),
        scheduler=DPMSolverMultistepScheduler(),
    )


def build_sana(seed: int = 0):
    """SanaPipeline: Gemma2 (32 wide) with its attention mask, DC-AE, flow-matching DPM-Solver (flow_shift 3)."""
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline

    torch.manual_seed(seed)
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return SanaPipeline(
        tokenizer=word_tokenizer(eos=False),
        text_encoder=tiny_gemma2(),
        vae=tiny_dc_vae(),
        transformer=tiny_transformer("SanaTransformer2DModel"),
        scheduler=scheduler,
    )


BUILDERS = {"sd3": build_sd3, "flux": build_flux, "pixart": build_pixart, "sana": build_sana}


def build_pipeline(family: str, seed: int = 0):
    """The tiny pipeline of `family` (one of :data:`FAMILIES`)."""
    return BUILDERS[family](seed)


def save_pipeline(family: str, folder, seed: int = 0):
    """Build the tiny pipeline of `family` and save it to `folder` (safetensors); returns the folder."""
    pipe = build_pipeline(family, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def student_folder(teacher_dir, out_dir, drop: int = 1):
    """A copy of the pipeline at `teacher_dir` whose transformer lost block `drop` of `transformer_blocks` (not the
    last: SD3's last block is `context_pre_only`): the stock config with one layer fewer (`num_layers`), the other
    blocks' weights renumbered and copied."""
    import json
    import shutil

    import diffusers

    shutil.copytree(teacher_dir, out_dir)
    cls = getattr(diffusers, json.loads((out_dir / "model_index.json").read_text())["transformer"][1])
    teacher = cls.from_pretrained(teacher_dir / "transformer")
    config = dict(teacher.config)
    n = config["num_layers"]
    config["num_layers"] = n - 1
    student = cls.from_config(config)
    kept = [i for i in range(n) if i != drop]
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("transformer_blocks."):
            _, index, rest = key.split(".", 2)
            if int(index) == drop:
                continue
            key = f"transformer_blocks.{kept.index(int(index))}.{rest}"
        state[key] = value
    student.load_state_dict(state, strict=True)
    shutil.rmtree(out_dir / "transformer")
    student.save_pretrained(out_dir / "transformer", safe_serialization=True)
    return out_dir
