"""What a plan means for a transformer, and the compact student it describes.

:func:`resolve` checks a plan (no `actions`: every removal is identity on its streams) and lists the kept blocks of
each stack and the removed branches of kept blocks. :func:`build_student` then makes the student:

* **block removals only** -> a stock diffusers model: the config's block counts (`num_layers`,
  `num_single_layers`) shrink, index lists (SD3.5-Medium's `dual_attention_layers`) are renumbered, and every kept
  block's weights are copied to its new index, so `<Class>.from_pretrained(DIR)` loads it without prune_lab. Two
  cases are not plain renumbering:

  - SD3's last block is `context_pre_only` (its context output is discarded, so it has no context MLP, no context
    attention output and an `AdaLayerNormContinuous` context norm). When it is removed, the teacher's next-to-last
    kept block becomes the last: its context output was discarded anyway (every later block is identity), so
    dropping `ff_context`, `attn.to_add_out` and reading its `AdaLayerNormZero` context modulation as the
    continuous norm's `(scale, shift)` (rows `[d:2d]`, `[0:d]` of the 6d projection) gives the same image stream.
  - DiT's output layer reads `transformer_blocks.0.norm1.emb`. When block 0 goes, the stock student reads the new
    first block's embedding instead, which is the same function only when the two hold equal weights (true of
    converted DiT checkpoints, whose blocks all copy the one original `t_embedder` / `y_embedder`). Otherwise the
    student keeps the teacher's embedding in a parameter-light stub at index 0 and is exported in the block format.

* **branch removals** (or the DiT case above) -> the teacher's structure with removed blocks dropped from their
  `ModuleList` and removed branches replaced by :class:`~.surgery.ZeroBranch`; :mod:`prune_lab.formats` writes its
  weights with the plan, and :func:`rebuild` makes the same skeleton from the base config.

Either way the student's output equals the analysis-mode removal (:func:`~.surgery.taken_out`) of the same units.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...plan import Plan, expand_keep, fingerprint
from ...runtime.modules import set_submodule
from ..base import Compacted, instantiate
from .graph import BLOCK, TransformerGraph, walk
from .spec import FAMILIES, Family, Stack, family_of
from .surgery import Bypass, stand_in

_ORIGIN = "_prune_lab_origin"
STACK_ATTRS = tuple(dict.fromkeys(s.attr for f in FAMILIES.values() for s in f.stacks))


@dataclass
class Resolution:
    """A plan checked against a transformer's graph.

    Attributes:
        graph: the teacher's walk.
        kept: every kept unit.
        stacks: stack attribute -> kept teacher block indices, in order.
        branches: removed branches of kept blocks, in forward order.
    """

    graph: TransformerGraph
    kept: set[str]
    stacks: dict[str, list[int]] = field(default_factory=dict)
    branches: list[str] = field(default_factory=list)

    @property
    def family(self) -> Family:
        return FAMILIES[self.graph.family]

    @property
    def removed(self) -> list[str]:
        """Removed atoms (blocks and branches), in forward order."""
        return [u.name for u in self.graph.atoms() if u.name not in self.kept]

    def rewired(self) -> dict[str, tuple[str, str]]:
        """Nothing is rewired in a residual stack (the U-Net's skips are)."""
        return {}

    def head_stacks(self) -> list[Stack]:
        """Stacks whose block 0, read by the model outside the loop, is removed."""
        return [s for s in self.family.stacks if s.head and 0 not in self.stacks[s.attr]]


def resolve(plan: Plan, graph: TransformerGraph, model_fingerprint: str | None = None) -> Resolution:
    """Validate `plan` against `graph` (see the module docstring).

    Raises:
        ValueError: another architecture, unknown names, actions, no block left, or a head stack emptied.
    """
    if model_fingerprint and plan.base.get("fingerprint") not in (None, model_fingerprint):
        raise ValueError(
            f"plan was made for architecture {plan.base.get('fingerprint')} ({plan.base.get('source', '?')}), "
            f"this model is {model_fingerprint}; write a plan for it with `prunelab plan --model ...`"
        )
    kept = expand_keep(graph, plan.keep)
    if plan.actions:
        name = next(iter(plan.actions))
        raise ValueError(f"plan action for {name!r}: transformer units take no actions (removal is identity); drop it")
    res = Resolution(graph, kept)
    for stack in res.family.stacks:
        res.stacks[stack.attr] = [i for i, u in enumerate(graph.blocks(stack.attr)) if u.name in kept]
        if stack.head and not res.stacks[stack.attr]:
            raise ValueError(f"the plan removes every block of {stack.attr}, whose block 0 the output layer reads")
    if not any(res.stacks.values()):
        raise ValueError("the plan removes every block; keep at least one")
    res.branches = [u.name for u in graph.units if u.kind != BLOCK and u.parent in kept and u.name not in kept]
    return res


# ----------------------------------------------------------------------------------------- compact form
def _tag_origins(model: nn.Module) -> None:
    for name, module in model.named_modules():
        setattr(module, _ORIGIN, name)


def head_stub(stack: Stack, block: nn.Module) -> Bypass:
    """An identity block holding only what the model reads from block 0 (`stack.head`, e.g. `norm1.emb`)."""
    stub = Bypass(stack.streams)
    holder, parts = stub, stack.head.split(".")
    for part in parts[:-1]:
        setattr(holder, part, nn.Module())
        holder = getattr(holder, part)
    setattr(holder, parts[-1], block.get_submodule(stack.head))
    return stub


def compact(model: nn.Module, res: Resolution) -> nn.Module:
    """The teacher's structure without the removed units, as a deep copy of `model` (left untouched)."""
    student = copy.deepcopy(model)
    _tag_origins(student)
    family = res.family
    for name in res.branches:
        set_submodule(student, name, stand_in(family, res.graph, name, student.get_submodule(name)))
    for stack in family.stacks:
        blocks = getattr(student, stack.attr)
        kept = [blocks[i] for i in res.stacks[stack.attr]]
        if stack in res.head_stacks():
            kept.insert(0, head_stub(stack, blocks[0]))
        setattr(student, stack.attr, nn.ModuleList(kept))
    return student.eval()


# ---------------------------------------------------------------------------------------- stock config
def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    pairs = list(zip(a.state_dict().values(), b.state_dict().values()))
    return all(not x.is_meta and not y.is_meta and torch.equal(x, y) for x, y in pairs)


def head_shared(model: nn.Module, res: Resolution) -> bool:
    """Whether every removed block 0 holds the same `head` weights as its stack's new first block (never on
    `meta` weights, which cannot be compared)."""
    for stack in res.head_stacks():
        blocks = getattr(model, stack.attr)
        first = blocks[res.stacks[stack.attr][0]]
        if not _same_weights(blocks[0].get_submodule(stack.head), first.get_submodule(stack.head)):
            return False
    return True


def derive_config(model: nn.Module, res: Resolution) -> dict | None:
    """The stock config of the student of `res`, or None when a stock model cannot hold it."""
    if res.branches or not head_shared(model, res):
        return None
    family = res.family
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    for stack in family.stacks:
        config[stack.count_key] = len(res.stacks[stack.attr])
    first = res.stacks[family.stacks[0].attr]
    for key in family.index_keys:
        old = set(config.get(key) or ())
        config[key] = [new for new, i in enumerate(first) if i in old]
    return config


def _pre_only_modulation(t: torch.Tensor) -> torch.Tensor:
    """An `AdaLayerNormZero` projection (6d rows: shift, scale, gate ...) as `AdaLayerNormContinuous`'s
    (scale, shift)."""
    chunks = t.chunk(6, dim=0)
    return torch.cat([chunks[1], chunks[0]])


def _teacher_key(key: str, res: Resolution) -> tuple[str, bool]:
    """(teacher state key of student `key`, whether it is the context modulation of a block made pre-only)."""
    parts = key.split(".")
    if parts[0] not in res.stacks or len(parts) < 3:
        return key, False
    stack = next(s for s in res.family.stacks if s.attr == parts[0])
    kept, new = res.stacks[stack.attr], int(parts[1])
    teacher = kept[new]
    made_pre_only = stack.pre_only_last and new == len(kept) - 1 and teacher != len(res.graph.blocks(stack.attr)) - 1
    rest = ".".join(parts[2:])
    return ".".join([parts[0], str(teacher), rest]), made_pre_only and rest.startswith("norm1_context.linear.")


def stock_student(model: nn.Module, res: Resolution, config: dict) -> nn.Module:
    """A stock model of `config` holding the kept blocks' weights (see the module docstring)."""
    fresh = instantiate(type(model), config, meta=True)
    teacher = model.state_dict()
    state = {}
    for key, value in fresh.state_dict().items():
        source, convert = _teacher_key(key, res)
        tensor = _pre_only_modulation(teacher[source]) if convert else teacher[source]
        if tensor.shape != value.shape:
            raise RuntimeError(f"{key}: teacher {source} has shape {tuple(tensor.shape)}, not {tuple(value.shape)}")
        state[key] = tensor.clone()
    fresh.load_state_dict(state, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for key, value in list(fresh.named_buffers()):  # non-persistent ones (positional tables) are not in the state
        if value.is_meta and not buffers[_teacher_key(key, res)[0]].is_meta:
            owner, _, name = key.rpartition(".")
            fresh.get_submodule(owner)._buffers[name] = buffers[_teacher_key(key, res)[0]].clone()
    for attr, kept in res.stacks.items():
        for new, old in enumerate(kept):
            for name, module in fresh.get_submodule(f"{attr}.{new}").named_children():
                setattr(module, _ORIGIN, f"{attr}.{old}.{name}")
            setattr(fresh.get_submodule(f"{attr}.{new}"), _ORIGIN, f"{attr}.{old}")
    return fresh.eval()


# ------------------------------------------------------------------------------------------------ students
def build_student(model: nn.Module, plan: Plan) -> Compacted:
    """Validate `plan` against `model` and build its student (nothing is written)."""
    res = resolve(plan, walk(model), fingerprint(model))
    config = derive_config(model, res)
    student = compact(model, res) if config is None else stock_student(model, res, config)
    return Compacted(student, res, config)


def rebuild(base_config: dict, plan: Plan) -> nn.Module:
    """The compact skeleton (`meta` weights) of `plan` over a transformer of `base_config` (with `_class_name`)."""
    from ..base import model_class

    base = dict(base_config)
    skeleton = instantiate(model_class(base.pop("_class_name")), base, meta=True)
    return compact(skeleton, resolve(plan, walk(skeleton)))


def unit_map(student: nn.Module, *, identity: bool = False) -> dict[str, str]:
    """Student block / branch path -> its teacher path (with `identity`: each to itself)."""
    out = {}
    for name, module in student.named_modules():
        parts = name.split(".")
        origin = name if identity else getattr(module, _ORIGIN, None)
        if origin is not None and parts[0] in STACK_ATTRS and len(parts) in (2, 3):
            out[name] = origin
    return out


__all__ = ["Resolution", "build_student", "compact", "derive_config", "family_of", "rebuild", "resolve", "unit_map"]
