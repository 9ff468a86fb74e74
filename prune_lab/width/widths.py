"""Per-module widths: what a width-pruned U-Net records, and how a fresh skeleton is resized to match it.

A width-pruned U-Net has the config of its base model but narrower layers, so diffusers' `from_pretrained` cannot
rebuild it (nanoGPT's rule, config and weights changed together, is kept by recording the new widths). Widths live
on the leaf layers only (:data:`LAYERS`: conv, linear, GroupNorm, LayerNorm); the diffusers containers' own width
attributes (`Downsample2D.channels`, `ResnetBlock2D.in_channels`, `Attention.inner_dim` ...) are derived from their
layers by :data:`CONTAINERS`, after pruning and after rebuilding alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D

from ..runtime.modules import set_submodule


@dataclass(frozen=True)
class LayerWidths:
    """How one leaf-layer type records its widths and is rebuilt with others (on the `meta` device)."""

    read: Callable[[nn.Module], dict[str, int]]
    rebuild: Callable[[nn.Module, dict[str, int]], nn.Module]


def _conv(m: nn.Conv2d, w: dict[str, int]) -> nn.Conv2d:
    return nn.Conv2d(
        w["in_channels"],
        w["out_channels"],
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        m.groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
        device="meta",
    )


def _linear(m: nn.Linear, w: dict[str, int]) -> nn.Linear:
    return nn.Linear(w["in_features"], w["out_features"], bias=m.bias is not None, device="meta")


def _group_norm(m: nn.GroupNorm, w: dict[str, int]) -> nn.GroupNorm:
    return nn.GroupNorm(m.num_groups, w["num_channels"], m.eps, m.affine, device="meta")


def _layer_norm(m: nn.LayerNorm, w: dict[str, int]) -> nn.LayerNorm:
    return nn.LayerNorm(w["features"], m.eps, m.elementwise_affine, bias=m.bias is not None, device="meta")


#: Leaf layers whose widths are recorded, by exact type (subclasses are not resized silently).
LAYERS: dict[type, LayerWidths] = {
    nn.Conv2d: LayerWidths(lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels}, _conv),
    nn.Linear: LayerWidths(lambda m: {"in_features": m.in_features, "out_features": m.out_features}, _linear),
    nn.GroupNorm: LayerWidths(lambda m: {"num_channels": m.num_channels}, _group_norm),
    nn.LayerNorm: LayerWidths(lambda m: {"features": m.normalized_shape[-1]}, _layer_norm),
}


def _sampler(m: nn.Module) -> dict[str, int]:
    conv = getattr(m, "conv", None)
    return {"channels": conv.in_channels, "out_channels": conv.out_channels} if isinstance(conv, nn.Conv2d) else {}


def _transformer(m: Transformer2DModel) -> dict[str, int]:
    if getattr(m, "proj_in", None) is None or not hasattr(m, "norm"):
        return {}
    inner = m.proj_in.out_channels if isinstance(m.proj_in, nn.Conv2d) else m.proj_in.out_features
    out = m.proj_out.out_channels if isinstance(m.proj_out, nn.Conv2d) else m.proj_out.out_features
    return {"in_channels": m.norm.num_channels, "inner_dim": inner, "out_channels": out}


def _attention(m: Attention) -> dict[str, int]:
    return {
        "query_dim": m.to_q.in_features,
        "inner_dim": m.to_q.out_features,
        "inner_kv_dim": m.to_k.out_features,
        "out_dim": m.to_out[0].out_features,
    }


#: diffusers containers whose width attributes follow from their layers (some are asserted in `forward`).
CONTAINERS: dict[type, Callable[[nn.Module], dict[str, int]]] = {
    ResnetBlock2D: lambda m: {"in_channels": m.conv1.in_channels, "out_channels": m.conv2.out_channels},
    Downsample2D: _sampler,
    Upsample2D: _sampler,
    Transformer2DModel: _transformer,
    Attention: _attention,
}


def sync_attributes(model: nn.Module) -> None:
    """Set every container's width attributes from its (pruned or resized) layers."""
    for module in model.modules():
        rule = CONTAINERS.get(type(module))
        if rule is not None:
            for name, value in rule(module).items():
                setattr(module, name, value)


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Widths of every recorded leaf layer, by module path."""
    return {name: LAYERS[type(m)].read(m) for name, m in model.named_modules() if type(m) in LAYERS}


def changed_widths(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """The layers of `model` whose widths differ from `reference` (the unpruned architecture), by module path."""
    before = layer_widths(reference)
    return {name: w for name, w in layer_widths(model).items() if before.get(name) != w}


def resize(skeleton: nn.Module, widths: dict[str, dict[str, int]]) -> nn.Module:
    """Replace the layers named in `widths` by `meta` layers of those widths, then sync the containers.

    Raises:
        ValueError: a path that is not a recorded layer type in `skeleton`.
    """
    for name, w in widths.items():
        try:
            module = skeleton.get_submodule(name)
        except AttributeError:
            module = None
        if type(module) not in LAYERS:
            raise ValueError(
                f"width file names {name!r}, which is not a conv/linear/norm layer of the base model; "
                "was it written for another architecture?"
            )
        set_submodule(skeleton, name, LAYERS[type(module)].rebuild(module, w))
    sync_attributes(skeleton)
    return skeleton


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(model: nn.Module) -> bool:
    return any(p.device == torch.device("meta") for p in model.parameters())
