"""ControlNet for any student: a stock diffusers `ControlNetModel` whose residuals line up with the student's skips.

`ControlNetModel.from_unet` copies the U-Net's config, so it fails for students without a mid stage (`unknown
mid_block_type : None`: the ControlNet has no mid-free form) and builds the wrong encoder for a `load_pruned`
student (whose config is the teacher's). :func:`controlnet_from_student` reads the *modules* instead: per stage the
number of layers, the transformer depth of each attention and whether a downsampler follows, so the ControlNet
returns exactly one residual per skip the student's up path consumes (`conv_in`, each layer, each downsampler).

A student without a mid stage gets the cheapest stock mid block (`UNetMidBlock2D`, one resnet, freshly initialised):
its residual goes through the zero-initialised `controlnet_mid_block`, so it is zero until trained, and diffusers
adds it to the student's bottleneck features (the input of its first up stage) just as for a U-Net with a mid stage.
Everything the student has is copied into the ControlNet as `from_unet` does (`conv_in`, time and added
embeddings, down blocks, mid block); what it lacks (a substituted layer) starts from diffusers' initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

#: The stock mid block a mid-free student's ControlNet gets (one resnet, no attention).
FILLER_MID = "UNetMidBlock2D"
_COPIED = ("conv_in", "time_embedding", "class_embedding", "add_embedding", "down_blocks", "mid_block")
_PER_STAGE = ("attention_head_dim", "num_attention_heads", "only_cross_attention")


def _depths(block: nn.Module) -> list[int]:
    """Transformer depth of each layer of a cross-attention stage (a substituted attention takes its stage's)."""
    real = [len(a.transformer_blocks) for a in block.attentions if hasattr(a, "transformer_blocks")]
    return [
        len(a.transformer_blocks) if hasattr(a, "transformer_blocks") else max(real, default=1)
        for a in block.attentions
    ]


def _layers(student: nn.Module) -> int:
    counts = [len(block.resnets) for block in student.down_blocks]
    if len(set(counts)) != 1:
        raise ValueError(
            f"the student's down stages hold {counts} layers; a stock ControlNetModel has one layers_per_block for "
            "every stage, so it cannot line up with this student (use a plan with the same number of layers kept "
            "in every down stage)"
        )
    return counts[0]


def _mid(student: nn.Module, depths: list) -> tuple[str, list]:
    """The ControlNet's `mid_block_type`, and `depths` with the mid depth where a stock ControlNet reads it."""
    mid = getattr(student, "mid_block", None)
    if mid is None or not hasattr(mid, "attentions") or not len(mid.attentions):
        return FILLER_MID if mid is None else type(mid).__name__, depths
    mid_depth = _depths(mid)[0]
    last = depths[-1]
    if last is not None and {*last} != {mid_depth}:  # ControlNetModel takes the mid depth from the last stage's
        raise ValueError(
            f"the student's last down stage has transformer depths {last} but its mid stage {mid_depth}; a stock "
            "ControlNetModel uses one value for both"
        )
    return type(mid).__name__, [*depths[:-1], mid_depth]


def controlnet_config(student: nn.Module, **overrides) -> dict:
    """The `ControlNetModel` config whose residuals line up with `student` (a diffusers `UNet2DConditionModel`,
    plain or rebuilt by :func:`prune_lab.load_pruned`).

    Raises:
        ValueError: a student whose down stages differ in layer count, or whose last stage and mid stage differ in
            transformer depth (no stock ControlNet lines up with those).
    """
    cfg, stages = dict(student.config), len(student.down_blocks)
    depths = [_depths(b) if hasattr(b, "attentions") else None for b in student.down_blocks]
    mid_type, depths = _mid(student, depths)
    per_stage = {k: list(cfg[k])[:stages] for k in _PER_STAGE if isinstance(cfg.get(k), (list, tuple))}
    return {
        **{k: cfg.get(k) for k in _FROM_UNET},
        **per_stage,
        "down_block_types": list(cfg["down_block_types"])[:stages],
        "block_out_channels": list(cfg["block_out_channels"])[:stages],
        "layers_per_block": _layers(student),
        "transformer_layers_per_block": [d if d is not None else 1 for d in depths],
        "mid_block_type": mid_type,
        **overrides,
    }


#: Config keys `ControlNetModel.from_unet` copies unchanged from the U-Net.
_FROM_UNET = (
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "only_cross_attention",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "class_embed_type",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "addition_embed_type",
    "addition_time_embed_dim",
)


def residual_channels(model: nn.Module) -> list[int]:
    """Channels of each down residual a U-Net's up path consumes, or a ControlNet returns, in order."""
    if hasattr(model, "controlnet_down_blocks"):
        return [conv.in_channels for conv in model.controlnet_down_blocks]
    channels = [model.conv_in.out_channels]
    for block, width in zip(model.down_blocks, model.config.block_out_channels):
        channels += [width] * len(block.resnets) + [width] * len(getattr(block, "downsamplers", None) or ())
    return channels


def copy_weights(controlnet: nn.Module, student: nn.Module) -> list[str]:
    """Copy every tensor of `student`'s encoder whose name and shape the ControlNet shares; the names not copied."""
    theirs = student.state_dict()
    ours = controlnet.state_dict()
    fresh = []
    for name, tensor in ours.items():
        source = theirs.get(name)
        if name.split(".")[0] not in _COPIED:
            continue
        if source is None or source.shape != tensor.shape:
            fresh.append(name)
            continue
        tensor.copy_(source)
    return fresh


def controlnet_from_student(
    student: nn.Module, *, load_weights_from_unet: bool = True, conditioning_channels: int = 3, **config
):
    """A stock `ControlNetModel` for `student`, initialised from it as `ControlNetModel.from_unet` does.

    Works for students without a mid stage (BK-SDM-Small / -Tiny), with fewer layers per stage, fewer stages, SDXL
    topology, and `load_pruned` students (substitutes, dropped skips). It plugs into
    `StableDiffusionControlNetPipeline` / `StableDiffusionXLControlNetPipeline` with the student as `unet`.

    Args:
        student: a diffusers `UNet2DConditionModel` (plain, or from :func:`prune_lab.load_pruned`).
        load_weights_from_unet: copy the student's encoder weights (else diffusers' initialisation throughout).
        conditioning_channels: channels of the control image.
        **config: other `ControlNetModel` arguments (`conditioning_embedding_out_channels` ...).

    Returns:
        A `ControlNetModel` (eval mode, on the student's device and dtype) whose `down_block_res_samples` have the
        shapes of the student's skips; all its output convolutions are zero, so it leaves the student's output
        unchanged until trained.

    Raises:
        TypeError: `student` is not a conditional diffusers U-Net.
        ValueError: a student no stock ControlNet lines up with (see :func:`controlnet_config`).
    """
    import torch
    from diffusers import ControlNetModel

    if not (
        hasattr(student, "down_blocks") and hasattr(student, "config") and "cross_attention_dim" in student.config
    ):
        raise TypeError(
            f"controlnet_from_student: expected a diffusers UNet2DConditionModel, got {type(student).__name__}"
        )
    param = next(student.parameters())
    cfg = controlnet_config(student, conditioning_channels=conditioning_channels, **config)
    controlnet = ControlNetModel(**cfg)
    if residual_channels(controlnet) != residual_channels(student):  # a guard on the construction above
        raise ValueError(
            f"the ControlNet's residual channels {residual_channels(controlnet)} do not match the student's "
            f"{residual_channels(student)}"
        )
    if load_weights_from_unet:
        with torch.no_grad():
            copy_weights(controlnet, student)
    controlnet.to(param.device)
    return (controlnet if param.dtype == controlnet.dtype else controlnet.to(param.dtype)).eval()
