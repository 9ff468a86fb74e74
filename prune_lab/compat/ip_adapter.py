"""The IP-Adapter check, offline: an IP-Adapter state dict shaped for the student (image projection + one
`to_k_ip` / `to_v_ip` pair per cross-attention, numbered in the student's processor order as diffusers' loader
numbers them), written as a local file and loaded through the pipeline's ordinary `load_ip_adapter`, then driven with
precomputed image embeddings (`ip_adapter_image_embeds`), so no CLIP image encoder is needed.

A published IP-Adapter cannot be loaded onto a student as it is: diffusers numbers the adapter's layers by position
among the U-Net's attention processors, so once blocks are removed the teacher's numbers point at other layers.
"""

from __future__ import annotations

from pathlib import Path

from .checks import needs_pipeline, register_check
from .export import Export, pipeline_call, same

#: Width of the image embedding the test adapter projects (a CLIP image encoder's, in real adapters).
IMAGE_EMBED_DIM = 32
#: Image tokens of a plain IP-Adapter's projection (diffusers' loader assumes 4).
IMAGE_TOKENS = 4


def _hidden_size(unet, name: str) -> int:
    """Width of the attention `name` (a processor path), read from the module itself."""
    return unet.get_submodule(name.rsplit(".", 1)[0]).to_q.in_features


def ip_adapter_state_dict(unet, seed: int = 0, embed_dim: int = IMAGE_EMBED_DIM) -> dict:
    """A random IP-Adapter for `unet` in the original file layout (`image_proj.*`, `ip_adapter.<id>.to_k_ip.weight`).

    The widths are the student's own; diffusers' loader derives them from the config, so a `load_pruned` student
    whose config does not describe its stages fails to load it (which the check reports).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": 0.1 * torch.randn(cross * IMAGE_TOKENS, embed_dim, generator=g),
        "image_proj.proj.bias": torch.zeros(cross * IMAGE_TOKENS),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        width = _hidden_size(unet, name)
        state[f"ip_adapter.{key}.to_k_ip.weight"] = 0.1 * torch.randn(width, cross, generator=g)
        state[f"ip_adapter.{key}.to_v_ip.weight"] = 0.1 * torch.randn(width, cross, generator=g)
        key += 2
    return state


@register_check(
    "ip-adapter",
    "IP-Adapter (a test adapter built for the student, loaded with load_ip_adapter, driven by image embeddings)",
    needs_pipeline,
)
def ip_adapter(export: Export, tmp: Path) -> None:
    import torch
    from safetensors.torch import save_file

    pipe = export.pipeline()
    save_file(ip_adapter_state_dict(pipe.unet), str(tmp / "ip_adapter.safetensors"))
    plain = pipeline_call(pipe)
    pipe.load_ip_adapter(str(tmp), subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder=None)
    embeds = [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(1))]  # (negative, positive)
    pipe.set_ip_adapter_scale(0.0)
    same(pipeline_call(pipe, ip_adapter_image_embeds=embeds), plain, "IP-Adapter at scale 0 against none", atol=1e-5)
    pipe.set_ip_adapter_scale(1.0)
    steered = pipeline_call(pipe, ip_adapter_image_embeds=embeds)
    if abs(steered - plain).max() == 0:
        raise AssertionError("the IP-Adapter's image tokens left the images unchanged")
