"""The ControlNet check: :func:`~prune_lab.compat.controlnet.controlnet_from_student` on the export's student."""

from __future__ import annotations

import math
from pathlib import Path

from .checks import always, register_check
from .controlnet import controlnet_from_student
from .export import LATENT, Export, finite_images, forward, pipeline_call, same, unet_inputs


def control_residuals(controlnet, inputs: dict, cond):
    """`(down residuals, mid residual)` of `controlnet` for the U-Net `inputs` and control image `cond`
    (B, C, H, W) at the pixel size its conditioning embedding brings down to the latent size."""
    import torch

    with torch.no_grad():
        return controlnet(
            inputs["sample"],
            inputs["timestep"],
            inputs["encoder_hidden_states"],
            cond,
            added_cond_kwargs=inputs.get("added_cond_kwargs"),
            return_dict=False,
        )


def excite(controlnet, seed: int = 0) -> None:
    """Give the ControlNet's zero-initialised output convolutions small random weights (as training would)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))


def embedding_channels(scale_factor: int) -> tuple[int, ...]:
    """`conditioning_embedding_out_channels` that bring a control image down by `scale_factor` (the VAE's)."""
    return tuple(16 * 2**i for i in range(int(math.log2(scale_factor)) + 1))


def residuals_matter(student, controlnet, inputs: dict, cond) -> None:
    """Zero-initialised: the student's output exactly unchanged; excited: changed."""
    plain = forward(student, inputs)
    down, mid = control_residuals(controlnet, inputs, cond)
    controlled = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    same(forward(student, inputs, **controlled), plain, "the student with a zero-initialised ControlNet")
    excite(controlnet)
    down, mid = control_residuals(controlnet, inputs, cond)
    changed = forward(student, inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    if (changed - plain).abs().max() == 0:
        raise AssertionError("a non-zero ControlNet residual left the student's output unchanged")


@register_check(
    "controlnet",
    "prune_lab.controlnet_from_student: residuals line up; zero-initialised = unchanged; saved, reloaded and run in "
    "the ControlNet pipeline",
    always,
)
def controlnet(export: Export, tmp: Path) -> None:
    import torch
    from diffusers import AutoPipelineForText2Image, ControlNetModel

    pipe = export.pipeline() if export.pipeline_class else None
    factor = pipe.vae_scale_factor if pipe is not None else 8
    net = controlnet_from_student(export.unet, conditioning_embedding_out_channels=embedding_channels(factor))
    cond = torch.rand(1, 3, LATENT * factor, LATENT * factor, generator=torch.Generator().manual_seed(0))
    residuals_matter(export.unet, net, unet_inputs(export.unet), cond)
    net.save_pretrained(tmp / "controlnet")
    reloaded = ControlNetModel.from_pretrained(tmp / "controlnet")
    if pipe is None:
        return
    control = AutoPipelineForText2Image.from_pipe(pipe, controlnet=reloaded)
    finite_images(pipeline_call(control, image=cond), control, "ControlNet pipeline")
