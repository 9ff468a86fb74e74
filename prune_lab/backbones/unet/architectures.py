"""Built-in U-Net architectures: the public configs of SD v1.x, v2.x and SDXL (random or `meta` weights)."""

from __future__ import annotations

_SD_V1 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
_SD_V2_BASE = dict(_SD_V1, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)

#: Public U-Net configs of the built-in architectures (diffusers `UNet2DConditionModel` keyword arguments).
ARCHITECTURES: dict[str, dict] = {
    "sd-v1": _SD_V1,
    "sd-v2-base": _SD_V2_BASE,
    "sd-v2": dict(_SD_V2_BASE, sample_size=96, upcast_attention=True),
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    ),
}
