"""Published architectures as plans: BK-SDM (Kim et al., 2023) and Segmind's SSD-1B / Vega (Gupta et al., 2024).

Each preset is a function from a U-Net's graph (and optional unit scores) to the names to keep, registered in
:data:`prune_lab.backbones.PRESETS`; :func:`prune_lab.backbones.create_plan` is the only way in.

* `bk-base`: every down stage keeps its first R-A pair, every up stage its first and third (the innermost
  R-only stages alike). Diffusers routes skips positionally, so up-stage `resnets.0` then receives the skip of
  down-stage `resnets.0`, exactly as in the released BK-SDM students (whose `copy_weight_from_teacher` maps
  student `up_blocks.X.resnets.1` to teacher `up_blocks.X.resnets.2`).
* `bk-small`: `bk-base` without the mid stage. `bk-tiny`: `bk-small` without the innermost down and up stages.
* `mid-removal`: only the mid stage removed.
* `ssd-1b`, `vega` (SDXL): transformer depths per attention block as released, mid stage reduced to one resnet.
  By default each attention block keeps its first layers; with scores, its highest-scoring ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..base import PRESETS, Preset
from .graph import UNetGraph


def register_preset(name: str, families: tuple[str, ...], description: str):
    """Register `build(graph, scores) -> keep` as preset `name` in :data:`prune_lab.backbones.PRESETS`."""

    def wrap(fn):
        PRESETS.register(name, Preset(name, families, description, fn))
        return fn

    return wrap


def _all_atoms(graph: UNetGraph) -> set[str]:
    return {u.name for u in graph.atoms()}


def _slot_units(graph: UNetGraph, stage: str, j: int) -> set[str]:
    """The resnet, attention (+ its layers) and, on the up side, the skip of slot j of `stage`."""
    names = {f"{stage}.resnets.{j}", f"{stage}.attentions.{j}", f"skip:{stage}.resnets.{j}"}
    names = {n for n in names if n in graph}
    for n in list(names):
        names.update(graph.descendants(n))
    return names


def _slots(graph: UNetGraph, stage: str) -> int:
    return sum(1 for c in graph[stage].children if graph[c].kind == "resnet")


def _require_sd_layout(graph: UNetGraph) -> None:
    n = graph.num_levels
    for i in range(n):
        down, up = _slots(graph, f"down_blocks.{i}"), _slots(graph, f"up_blocks.{i}")
        if down != 2 or up != 3:
            raise ValueError(
                f"BK-SDM presets need 2 blocks per down stage and 3 per up stage (SD layout); "
                f"down_blocks.{i} has {down}, up_blocks.{i} has {up}"
            )


@register_preset("bk-base", ("sd",), "down stages keep R-A pair 1, up stages pairs 1 and 3 (BK-SDM-Base)")
def _bk_base(graph: UNetGraph, scores=None) -> set[str]:
    _require_sd_layout(graph)
    keep = _all_atoms(graph)
    for i in range(graph.num_levels):
        keep -= _slot_units(graph, f"down_blocks.{i}", 1)
        keep -= _slot_units(graph, f"up_blocks.{i}", 1)
    return keep


def _without(graph: UNetGraph, keep: set[str], *groups: str) -> set[str]:
    for group in groups:
        keep = keep - {group} - set(graph.descendants(group))
    return keep


@register_preset("bk-small", ("sd",), "bk-base without the mid stage (BK-SDM-Small)")
def _bk_small(graph: UNetGraph, scores=None) -> set[str]:
    return _without(graph, _bk_base(graph), "mid_block")


@register_preset("bk-tiny", ("sd",), "bk-small without the innermost down and up stages (BK-SDM-Tiny)")
def _bk_tiny(graph: UNetGraph, scores=None) -> set[str]:
    n = graph.num_levels
    return _without(graph, _bk_small(graph), f"down_blocks.{n - 1}", "up_blocks.0")


@register_preset("mid-removal", ("sd", "sdxl", "unet2d"), "only the mid stage removed")
def _mid_removal(graph: UNetGraph, scores=None) -> set[str]:
    if "mid_block" not in graph:
        raise ValueError("the model has no mid stage to remove")
    return _without(graph, _all_atoms(graph), "mid_block")


#: Transformer layers kept per attention block, per stage (SSD-1B and Segmind-Vega as released).
SDXL_DEPTHS = {
    "ssd-1b": {"down_blocks.1": [2, 2], "down_blocks.2": [4, 4], "up_blocks.0": [4, 4, 10], "up_blocks.1": [2, 1, 1]},
    "vega": {"down_blocks.1": [1, 1], "down_blocks.2": [2, 2], "up_blocks.0": [2, 2, 2], "up_blocks.1": [1, 1, 1]},
}


def _choose_layers(graph: UNetGraph, attention: str, depth: int, scores: Mapping[str, float] | None) -> list[str]:
    layers = list(graph[attention].children)
    if depth > len(layers):
        raise ValueError(f"{attention} has {len(layers)} transformer layers, the preset keeps {depth}")
    if scores is None:
        return layers[:depth]
    missing = [n for n in layers if n not in scores]
    if missing:
        raise ValueError(f"--scores has no score for {missing[0]}; score with --units transformer_layers")
    best = sorted(layers, key=lambda n: -scores[n])[:depth]
    return [n for n in layers if n in best]


def _sdxl(graph: UNetGraph, depths: dict[str, list[int]], scores) -> set[str]:
    keep = _all_atoms(graph)
    for stage, per_block in depths.items():
        attns = [c for c in graph[stage].children if graph[c].kind == "attention"]
        if len(attns) != len(per_block):
            raise ValueError(f"{stage} has {len(attns)} attention blocks, the preset describes {len(per_block)}")
        for attn, depth in zip(attns, per_block):
            chosen = set(_choose_layers(graph, attn, depth, scores))
            keep -= {n for n in graph[attn].children if n not in chosen}
    return _without(graph, keep, "mid_block") | {"mid_block.resnets.0"}


@register_preset("ssd-1b", ("sdxl",), "SSD-1B: SDXL with fewer transformer layers, mid stage = one resnet")
def _ssd_1b(graph: UNetGraph, scores=None) -> set[str]:
    return _sdxl(graph, SDXL_DEPTHS["ssd-1b"], scores)


@register_preset("vega", ("sdxl",), "Segmind-Vega: SDXL with far fewer transformer layers, mid = one resnet")
def _vega(graph: UNetGraph, scores=None) -> set[str]:
    return _sdxl(graph, SDXL_DEPTHS["vega"], scores)
