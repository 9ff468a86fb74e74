"""Export mode: the compact network a plan describes, initialised from the teacher, saved to disk.

:func:`compact` works on a deep copy of the teacher and moves *modules*, never indices: a kept unit carries its
own weights to wherever it lands (up-stage `resnets.2` becomes `resnets.1` when the middle pair goes, exactly as
BK-SDM initialises its students). Removed slots disappear from their `ModuleList`; a lone removed resnet or
attention becomes a parameter-free substitute; a dropped skip prunes its consumer's input channels; removing the
innermost resolution levels removes their stages and the downsampler that led into them.

:func:`derive_config` then asks whether a plain diffusers config reproduces the compact network (per-stage
`layers_per_block`, `transformer_layers_per_block` / `reverse_transformer_layers_per_block`, `mid_block_type`
None or `UNetMidBlock2D`, fewer stages) by instantiating it on the `meta` device and comparing every parameter
name and shape. If it does, the student is a plain diffusers U-Net; otherwise :mod:`prune_lab.formats` writes the
compact weights plus the plan, and :func:`rebuild` makes the skeleton they load into.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel

from ...plan import Plan, fingerprint
from ..base import Compacted
from .graph import walk
from .resolve import Resolution, Slot, StagePlan, resolve
from .surgery import drop_skip_channels, slice_skip_hook, substitute_for, zero_skip_hook

_ORIGIN = "_prune_lab_origin"
_PER_STAGE_KEYS = (
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "only_cross_attention",
    "block_out_channels",
    "down_block_types",
)


# ----------------------------------------------------------------------------------------------- compaction
def _tag_origins(model: nn.Module) -> None:
    for name, module in model.named_modules():
        setattr(module, _ORIGIN, name)


_MAPPED_LISTS = ("resnets", "attentions", "transformer_blocks", "upsamplers", "downsamplers")


def unit_map(student: nn.Module, *, identity: bool = False) -> dict[str, str]:
    """Student module path -> teacher module path for every resnet, attention block, transformer layer, sampler.

    With `identity`, every such module maps to itself (a student whose blocks never moved: width pruning).
    """
    out = {}
    for name, module in student.named_modules():
        parts = name.split(".")
        origin = name if identity else getattr(module, _ORIGIN, None)
        if origin is not None and len(parts) >= 2 and parts[-2] in _MAPPED_LISTS:
            out[name] = origin
    return out


def _keep_or_substitute(module: nn.Module, unit, kept: bool, layers: list[str] = ()) -> nn.Module:
    """`module` itself (keeping only the transformer `layers` named) or its parameter-free substitute."""
    if not kept:
        return substitute_for(module, unit.in_channels, unit.out_channels)
    if hasattr(module, "transformer_blocks"):
        keep = [int(n.rsplit(".", 1)[1]) for n in layers]
        module.transformer_blocks = nn.ModuleList([module.transformer_blocks[k] for k in keep])
    return module


def _compact_resnet(block: nn.Module, j: int, slot: Slot, graph) -> nn.Module:
    unit = graph[slot.resnet]
    resnet = _keep_or_substitute(block.resnets[j], unit, slot.resnet_kept)
    if slot.skip_mode in ("keep", "gone", None) or slot.skip is None:
        return resnet
    prev = unit.in_channels - graph[slot.skip].out_channels
    if slot.skip_mode == "zero":
        resnet.register_forward_pre_hook(zero_skip_hook(prev), with_kwargs=True)
    elif slot.resnet_kept:
        resnet = drop_skip_channels(resnet, prev)
    else:
        resnet.register_forward_pre_hook(slice_skip_hook(prev), with_kwargs=True)
    return resnet


def _compact_stage(model: nn.Module, stage: StagePlan, graph) -> None:
    block = model.get_submodule(stage.path)
    resnets, attentions = [], []
    for j, slot in enumerate(stage.slots):
        if slot.gone:
            continue
        resnets.append(_compact_resnet(block, j, slot, graph))
        if slot.attention is not None:
            attn = block.attentions[j]
            attentions.append(_keep_or_substitute(attn, graph[slot.attention], slot.attention_kept, slot.layers))
    block.resnets = nn.ModuleList(resnets)
    if getattr(block, "attentions", None) is not None:
        block.attentions = nn.ModuleList(attentions)


def _compact_mid(model: nn.Module, mid: StagePlan, graph) -> None:
    block = model.mid_block
    if not any(s.resnet_kept for s in mid.slots):
        model.mid_block = None
        return
    members = {s.resnet: s for s in mid.slots}

    def pick(name: str, module: nn.Module) -> nn.Module:
        return _keep_or_substitute(module, graph[name], members[name].resnet_kept, members[name].layers)

    resnets = [pick("mid_block.resnets.0", block.resnets[0])]
    attentions = []
    for j, resnet in enumerate(block.resnets[1:]):
        attn_name, res_name = f"mid_block.attentions.{j}", f"mid_block.resnets.{j + 1}"
        attn = block.attentions[j] if len(block.attentions) > j else None
        attn_gone = attn is None or not members[attn_name].resnet_kept
        if attn_gone and not members[res_name].resnet_kept:
            continue  # the (attention, resnet) pair goes physically
        attentions.append(attn if attn is None else pick(attn_name, attn))
        resnets.append(pick(res_name, resnet))
    block.resnets, block.attentions = nn.ModuleList(resnets), nn.ModuleList(attentions)


def _remove_levels(model: nn.Module, count: int) -> None:
    if not count:
        return
    n = len(model.down_blocks)
    model.down_blocks = nn.ModuleList(list(model.down_blocks)[: n - count])
    model.up_blocks = nn.ModuleList(list(model.up_blocks)[count:])
    model.down_blocks[-1].downsamplers = None
    if hasattr(model, "num_upsamplers"):
        model.num_upsamplers -= count


def compact(unet: nn.Module, res: Resolution) -> nn.Module:
    """The compact network described by `res`, as a deep copy of `unet` (which is left untouched).

    Every module of the copy remembers its path in the teacher (see :func:`unit_map`).
    """
    student = copy.deepcopy(unet)
    _tag_origins(student)
    for stage in res.down + res.up:
        if not stage.level_removed:
            _compact_stage(student, stage, res.graph)
    if res.mid is not None:
        _compact_mid(student, res.mid, res.graph)
    _remove_levels(student, res.removed_levels)
    return student.eval()


# ------------------------------------------------------------------------------------------ diffusers config
def _transformer_depths(stage: StagePlan, teacher_value) -> int | list[int]:
    depths = [len(s.layers) for s in stage.kept_slots if s.attention is not None]
    if not depths:
        return teacher_value if isinstance(teacher_value, int) else teacher_value[0]
    return depths[0] if len(set(depths)) == 1 else depths


def _mid_type(unet: nn.Module, mid: StagePlan | None) -> str | None | bool:
    """The `mid_block_type` reproducing the compact mid stage; False when none does."""
    teacher = unet.config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is None or not any(s.resnet_kept for s in mid.slots):
        return None
    if all(s.resnet_kept for s in mid.slots):
        return teacher
    only_first = [s.resnet_kept for s in mid.slots] == [True] + [False] * (len(mid.slots) - 1)
    return "UNetMidBlock2D" if only_first and isinstance(unet, UNet2DConditionModel) else False


def derive_config(unet: nn.Module, res: Resolution) -> dict | None:
    """A diffusers config for the compact network of `res`, or None when the plan is not expressible."""
    stages = [s for s in res.down + res.up if not s.level_removed]
    if any(not sl.resnet_kept or (sl.attention and not sl.attention_kept) for st in stages for sl in st.kept_slots):
        return None  # substitutes have no diffusers config
    if any(sl.skip_mode in ("zero", "drop") for st in res.up for sl in st.kept_slots):
        return None
    mid_type = _mid_type(unet, res.mid)
    if mid_type is False:
        return None
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    n = len(res.down) - res.removed_levels
    for key in _PER_STAGE_KEYS:
        if isinstance(cfg.get(key), (list, tuple)):
            cfg[key] = list(cfg[key])[:n]
    cfg["up_block_types"] = list(cfg["up_block_types"])[res.removed_levels :]
    down = [len(s.kept_slots) for s in res.down[:n]]
    up = [len(s.kept_slots) for s in res.up[res.removed_levels :]]
    if list(reversed(up)) != [d + 1 for d in down]:
        return None
    cfg["layers_per_block"] = down[0] if len(set(down)) == 1 else down
    cfg["mid_block_type"] = mid_type
    if isinstance(unet, UNet2DConditionModel):
        _set_transformer_depths(cfg, unet, res, n)
    return cfg


def _set_transformer_depths(cfg: dict, unet: nn.Module, res: Resolution, n: int) -> None:
    teacher = unet.config.transformer_layers_per_block
    teacher = [teacher] * len(res.down) if isinstance(teacher, int) else list(teacher)
    down = [_transformer_depths(s, teacher[i]) for i, s in enumerate(res.down[:n])]
    rev_teacher = unet.config.get("reverse_transformer_layers_per_block") or list(reversed(teacher))
    up = [_transformer_depths(s, rev_teacher[u]) for u, s in enumerate(res.up) if not s.level_removed]
    if (
        all(isinstance(d, int) for d in down)
        and up == list(reversed(down))
        and not unet.config.get("reverse_transformer_layers_per_block")
    ):
        cfg["transformer_layers_per_block"] = down[0] if len(set(down)) == 1 else down
        cfg["reverse_transformer_layers_per_block"] = None
    else:
        cfg["transformer_layers_per_block"] = down
        cfg["reverse_transformer_layers_per_block"] = up


def instantiate(cls: type, config: dict, *, meta: bool = True) -> nn.Module:
    if meta:
        with torch.device("meta"):
            return cls.from_config(config)
    return cls.from_config(config)


def expressible_as(unet: nn.Module, res: Resolution, student: nn.Module) -> dict | None:
    """The derived config if a plain diffusers model built from it has exactly the student's parameters."""
    cfg = derive_config(unet, res)
    if cfg is None:
        return None
    try:
        fresh = instantiate(type(unet), cfg)
    except (ValueError, TypeError, IndexError):
        return None
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return cfg if shapes == {k: tuple(v.shape) for k, v in student.state_dict().items()} else None


# ------------------------------------------------------------------------------------------------ students
def build_student(unet: nn.Module, plan: Plan) -> Compacted:
    """Validate `plan` against `unet` and build the compact student (nothing is written)."""
    res = resolve(plan, walk(unet), fingerprint(unet))
    student = compact(unet, res)
    config = expressible_as(unet, res, student)
    if config is not None:
        fresh = instantiate(type(unet), config, meta=True)
        fresh.load_state_dict(student.state_dict(), strict=True, assign=True)
        for name, module in student.named_modules():
            if hasattr(module, _ORIGIN):
                setattr(fresh.get_submodule(name), _ORIGIN, getattr(module, _ORIGIN))
        student = fresh.eval()
    return Compacted(student, res, config)


def rebuild(base_config: dict, plan: Plan) -> nn.Module:
    """The compact skeleton (`meta` weights) of `plan` over a U-Net of `base_config` (with `_class_name`)."""
    from ..base import model_class

    base = dict(base_config)
    skeleton = instantiate(model_class(base.pop("_class_name", "UNet2DConditionModel")), base, meta=True)
    return compact(skeleton, resolve(plan, walk(skeleton)))
