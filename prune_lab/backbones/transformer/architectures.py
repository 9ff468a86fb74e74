"""Built-in transformer architectures: the public configs of DiT-XL/2, PixArt-Sigma, SD3 / SD3.5, Flux.1, Sana.

Each is the `transformer/config.json` of the released diffusers repository (keys at their class defaults left out):

* `dit-xl-2`: facebook/DiT-XL-2-256 (28 layers, 16 x 72 heads, learned sigma: 8 output channels).
* `pixart-sigma`: PixArt-alpha/PixArt-Sigma-XL-2-1024-MS (28 layers, T5 captions of 4096, no size conditions).
* `sd3-medium`: stabilityai/stable-diffusion-3-medium-diffusers (24 MMDiT blocks, width 1536).
* `sd3.5-large`: stabilityai/stable-diffusion-3.5-large (38 blocks, width 2432, RMS qk-norm).
* `sd3.5-medium`: stabilityai/stable-diffusion-3.5-medium (24 blocks, dual attention in blocks 0-12, RMS qk-norm).
* `flux-dev`, `flux-schnell`: black-forest-labs/FLUX.1-dev / FLUX.1-schnell (19 double + 38 single blocks; dev is
  guidance-distilled: `guidance_embeds`).
* `sana-1600m`: Efficient-Large-Model/Sana_1600M_1024px_diffusers (20 blocks, width 2240, linear attention).
"""

from __future__ import annotations

_DIT_XL_2 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
)
_PIXART_SIGMA = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    cross_attention_dim=1152,
    attention_bias=True,
    sample_size=128,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=4096,
    interpolation_scale=2,
    use_additional_conditions=False,
)
_SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
)
_FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

#: Built-in name -> (diffusers class name, public config).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "dit-xl-2": ("DiTTransformer2DModel", _DIT_XL_2),
    "pixart-sigma": ("PixArtTransformer2DModel", _PIXART_SIGMA),
    "sd3-medium": ("SD3Transformer2DModel", _SD3_MEDIUM),
    "sd3.5-large": (
        "SD3Transformer2DModel",
        dict(_SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm"),
    ),
    "sd3.5-medium": (
        "SD3Transformer2DModel",
        dict(_SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
    ),
    "flux-dev": ("FluxTransformer2DModel", _FLUX_DEV),
    "flux-schnell": ("FluxTransformer2DModel", dict(_FLUX_DEV, guidance_embeds=False)),
    "sana-1600m": (
        "SanaTransformer2DModel",
        dict(
            in_channels=32,
            out_channels=32,
            num_attention_heads=70,
            attention_head_dim=32,
            num_layers=20,
            num_cross_attention_heads=20,
            cross_attention_head_dim=112,
            cross_attention_dim=2240,
            caption_channels=2304,
            mlp_ratio=2.5,
            attention_bias=False,
            sample_size=32,
            patch_size=1,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ),
    ),
}
