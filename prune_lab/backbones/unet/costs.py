"""The U-Net under the thop convention, and its cost unit by unit.

Inputs follow BK-SDM's measurement (Kim et al. 2023; Nota's `get_macs_params`): zeros, batch 1, latent =
image / 8, a zero timestep and 77 zero text tokens of the cross-attention width; SDXL's added conditions are a
pooled text embedding (1280 wide for SDXL) and the 6 `time_ids`.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn as nn

from ...runtime.counting import TEXT_TOKENS, Profile
from ...units import OTHER, atoms_of
from ..base import UnitCosts
from .graph import UNetGraph

UNIT_COLUMNS = [
    "name",
    "label",
    "kind",
    "parent",
    "level",
    "params",
    "macs",
    "attention_macs",
    "macs_with_attention",
    "params_M",
    "macs_G",
    "macs_with_attention_G",
    "macs_pct",
]


def _text_width(config) -> int | None:
    width = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
    return width[0] if isinstance(width, (list, tuple)) else width


def _conditional_call(
    unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *added: torch.Tensor
) -> torch.Tensor:
    added_cond = {"text_embeds": added[0], "time_ids": added[1]} if added else None
    return unet(sample, timestep, text, added_cond_kwargs=added_cond, return_dict=False)[0]


def _unconditional_call(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    return unet(sample, timestep, return_dict=False)[0]


def unet_call(
    unet: nn.Module,
    latent: int,
    device="meta",
    dtype: torch.dtype = torch.float32,
) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """`(fn, args)` for one denoising step under the thop convention: `fn(unet, *args)` is the forward.

    Args:
        unet: a `UNet2DConditionModel` or `UNet2DModel`.
        latent: latent height = width.
        device / dtype: where to make the zero inputs (`meta` for counting).

    Returns:
        `fn` and its tensors: sample (1, C_in, latent, latent), timestep (1,), and for conditional U-Nets the
        text states (1, 77, D_text), plus SDXL's `text_embeds` (1, D_pooled) and `time_ids` (1, 6).
    """
    cfg = unet.config
    zeros = dict(device=device, dtype=dtype)
    base = (torch.zeros(1, cfg.in_channels, latent, latent, **zeros), torch.zeros(1, **zeros))
    width = _text_width(cfg)
    if width is None:
        return _unconditional_call, base
    args = (*base, torch.zeros(1, TEXT_TOKENS, width, **zeros))
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        args = (*args, torch.zeros(1, pooled, **zeros), torch.zeros(1, 6, **zeros))
    return _conditional_call, args


def _unit_row(unit, profile: Profile) -> dict:
    module = None if unit.kind == "skip" else unit.name
    macs = profile.module_macs.get(module, 0)
    attention = profile.module_attention_macs.get(module, 0)
    return {
        "name": unit.name,
        "label": unit.label,
        "kind": unit.kind,
        "parent": unit.parent,
        "level": unit.level,
        "params": unit.params,
        "macs": macs,
        "attention_macs": attention,
    }


def _other_row(rows: list[dict], profile: Profile) -> dict:
    top = [r for r in rows if r["parent"] is None]
    return {
        "name": OTHER,
        "label": OTHER,
        "kind": OTHER,
        "parent": None,
        "level": None,
        "params": profile.params - sum(r["params"] for r in top),
        "macs": profile.macs - sum(r["macs"] for r in top),
        "attention_macs": profile.attention_macs - sum(r["attention_macs"] for r in top),
    }


def unit_table(graph: UNetGraph, profile: Profile) -> pd.DataFrame:
    """Params and MACs of every graph-walker unit, from the per-module counts of one profiled forward.

    Units nest (a stage holds its resnets and attention blocks, an attention block its transformer layers), so
    only the top-level rows (stages and the mid stage, `parent` empty) add up: they plus the final `other` row
    (conv_in, time / added embeddings, conv_norm_out, conv_out: what no unit owns) equal the whole U-Net.
    A stage's figure includes its down/upsampler; a skip costs nothing (a concatenation).

    Returns:
        One row per unit in forward order, then `other`; columns :data:`UNIT_COLUMNS`.
    """
    rows = [_unit_row(u, profile) for u in graph.units]
    rows.append(_other_row(rows, profile))
    df = pd.DataFrame(rows)
    df["macs_with_attention"] = df["macs"] + df["attention_macs"]
    df["params_M"] = (df["params"] / 1e6).round(3)
    df["macs_G"] = (df["macs"] / 1e9).round(3)
    df["macs_with_attention_G"] = (df["macs_with_attention"] / 1e9).round(3)
    df["macs_pct"] = (100 * df["macs"] / max(profile.macs, 1)).round(2)
    df["level"] = df["level"].astype("Int64")
    return df[UNIT_COLUMNS]


# ------------------------------------------------------------------------------------- what removals save
def unit_costs(unet: nn.Module, graph: UNetGraph, resource: str, cost: Callable[[str], float]) -> UnitCosts:
    """What removing each atom saves of `resource` (see :mod:`prune_lab.search.costs`).

    Own costs: a unit's module cost minus its nested transformer layers; a dropped skip saves its share of the
    consumer's input channels. Removing an innermost level also removes its two samplers (`extra`), and a kept mid
    stage then runs at a finer resolution (`grows`).
    """
    own = {**_own(graph, cost), **_skip_drop(unet, graph, resource, cost)}
    mid = atoms_of(graph, ["mid_block"]) if "mid_block" in graph else frozenset()
    return UnitCosts(own, _levels(graph), _level_extra(unet, graph, cost), mid)


def _own(graph: UNetGraph, cost: Callable[[str], float]) -> dict[str, float]:
    out = {}
    for unit in graph.atoms():
        if unit.kind == "skip":
            continue
        nested = [c for c in unit.children if graph[c].kind == "transformer_layer"]
        out[unit.name] = cost(unit.name) - sum(cost(c) for c in nested)
    return out


def _skip_drop(unet: nn.Module, graph: UNetGraph, resource: str, cost: Callable[[str], float]) -> dict[str, float]:
    """What dropping each skip saves in its consumer (`conv1`, `conv_shortcut`, `norm1` input channels; nothing in
    the parameter-free substitute of a consumer removed earlier, as in a progressive round's student)."""
    out = {}
    for skip in graph.of_kind("skip"):
        consumer = unet.get_submodule(skip.consumer)
        share = skip.out_channels / graph[skip.consumer].in_channels
        parts = [a for a in ("norm1", "conv1", "conv_shortcut") if getattr(consumer, a, None) is not None]
        if resource == "params":  # conv biases stay; GroupNorm affine and conv weights lose the skip's share
            sizes = [
                getattr(consumer, a).weight.numel() if a != "norm1" else cost(f"{skip.consumer}.{a}") for a in parts
            ]
            out[skip.name] = share * sum(sizes)
        else:
            out[skip.name] = share * sum(cost(f"{skip.consumer}.{a}") for a in parts)
    return out


def _levels(graph: UNetGraph) -> list[tuple[int, frozenset[str]]]:
    n = graph.num_levels
    return [(i, atoms_of(graph, [f"down_blocks.{i}", f"up_blocks.{n - 1 - i}"])) for i in range(n - 1, 0, -1)]


def _level_extra(unet: nn.Module, graph: UNetGraph, cost: Callable[[str], float]) -> dict[int, float]:
    n, out = graph.num_levels, {}
    for i in range(n - 1, 0, -1):
        samplers = [f"down_blocks.{i - 1}.downsamplers.0", f"up_blocks.{n - 1 - i}.upsamplers.0"]
        out[i] = sum(cost(p) for p in samplers if _has(unet, p))
    return out


def _has(unet: nn.Module, path: str) -> bool:
    try:
        unet.get_submodule(path)
    except AttributeError:
        return False
    return True
