"""The graph walker: every prunable unit of a diffusers U-Net, with one stable name each.

Names are diffusers module paths (`down_blocks.1.attentions.0`, a transformer layer
`down_blocks.2.attentions.1.transformer_blocks.7`); a skip concatenation is named after the resnet that
consumes it (`skip:up_blocks.2.resnets.1`). Only this module makes names; scores, plans, reports and plots
use them. Paper-style labels (D1-R1, M-A1, U2-A3, D3-A1-T4) are an extra column, never a key.

Skip routing follows diffusers exactly: every down-side output (`conv_in`, each resnet/attention slot of a
down stage, each downsampler) is pushed on a stack, and every up-stage resnet pops one, last in first out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ...units import Graph, Unit

if TYPE_CHECKING:
    import torch.nn as nn

#: Units a plan lists individually; `stage` and `mid` are groups of them.
ATOM_KINDS = ("resnet", "attention", "transformer_layer", "skip")
KINDS = ATOM_KINDS + ("mid", "stage")
SKIP_PREFIX = "skip:"


@dataclass(frozen=True)
class SkipEdge:
    """One skip concatenation: `producer` output (at `level`, `channels` wide) feeds `consumer`."""

    producer: str
    consumer: str
    level: int
    channels: int


@dataclass
class UNetGraph(Graph):
    """All units of one U-Net, in forward order, plus its skip routing."""

    backbone: ClassVar[str] = "unet"
    atom_kinds: ClassVar[tuple[str, ...]] = ATOM_KINDS
    keeps_parent: ClassVar[tuple[str, ...]] = ("transformer_layer",)

    producers: list[tuple[str, int, int]] = field(default_factory=list)  # (module path, level, channels), push order
    edges: list[SkipEdge] = field(default_factory=list)
    num_levels: int = 0

    def edge_of(self, consumer: str) -> SkipEdge:
        return next(e for e in self.edges if e.consumer == consumer)


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _channels(module: nn.Module) -> int:
    for attr in ("in_channels", "query_dim", "channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"cannot read the channel count of {type(module).__name__}")


def _attention(block: nn.Module, j: int) -> nn.Module | None:
    attentions = getattr(block, "attentions", None)
    return attentions[j] if attentions is not None and j < len(attentions) else None


class _Walker:
    """Builds the unit list in forward order; one instance per walk."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.units: list[Unit] = []
        self.children: dict[str, list[str]] = {}
        self.num_levels = len(unet.down_blocks)

    def add(
        self,
        name: str,
        label: str,
        kind: str,
        stage: str,
        parent: str | None,
        level: int,
        cin: int,
        cout: int,
        params: int,
        removal: str,
        **extra,
    ) -> None:
        self.units.append(
            Unit(name, label, kind, stage, parent, len(self.units), level, cin, cout, params, removal, **extra)
        )
        if parent is not None:
            self.children.setdefault(parent, []).append(name)

    def add_block(
        self,
        prefix: str,
        label: str,
        kind: str,
        stage: str,
        parent: str,
        level: int,
        module: nn.Module,
        cin: int | None = None,
    ) -> None:
        if kind == "resnet":
            cin = module.in_channels if cin is None else cin
            cout = module.out_channels
            self.add(
                prefix,
                label,
                kind,
                stage,
                parent,
                level,
                cin,
                cout,
                _params(module),
                "remove" if cin == cout else "interpolate",
            )
            return
        ch = _channels(module)
        self.add(prefix, label, "attention", stage, parent, level, ch, ch, _params(module), "remove")
        for k, layer in enumerate(getattr(module, "transformer_blocks", None) or []):
            self.add(
                f"{prefix}.transformer_blocks.{k}",
                f"{label}-T{k + 1}",
                "transformer_layer",
                stage,
                prefix,
                level,
                ch,
                ch,
                _params(layer),
                "remove",
            )

    def walk_down(self) -> list[tuple[str, int, int]]:
        conv_in = self.unet.conv_in
        producers = [("conv_in", 0, conv_in.out_channels)]
        for i, block in enumerate(self.unet.down_blocks):
            stage = f"down_blocks.{i}"
            # a student's stage may keep no slot (only its downsampler): the channels pass through unchanged
            cin = block.resnets[0].in_channels if len(block.resnets) else producers[-1][2]
            cout = block.resnets[-1].out_channels if len(block.resnets) else cin
            self.add(stage, f"D{i + 1}", "stage", stage, None, i, cin, cout, _params(block), "members")
            for j, resnet in enumerate(block.resnets):
                self.add_block(f"{stage}.resnets.{j}", f"D{i + 1}-R{j + 1}", "resnet", stage, stage, i, resnet)
                attn = _attention(block, j)
                if attn is not None:
                    self.add_block(f"{stage}.attentions.{j}", f"D{i + 1}-A{j + 1}", "attention", stage, stage, i, attn)
                slot = f"{stage}.attentions.{j}" if attn is not None else f"{stage}.resnets.{j}"
                producers.append((slot, i, resnet.out_channels))
            for d, down in enumerate(getattr(block, "downsamplers", None) or []):
                producers.append((f"{stage}.downsamplers.{d}", i + 1, getattr(down, "out_channels", cout)))
        return producers

    def walk_mid(self) -> None:
        mid = getattr(self.unet, "mid_block", None)
        if mid is None:
            return
        level = self.num_levels - 1
        ch = mid.resnets[0].in_channels
        self.add(
            "mid_block", "M", "mid", "mid_block", None, level, ch, mid.resnets[-1].out_channels, _params(mid), "remove"
        )
        self.add_block("mid_block.resnets.0", "M-R1", "resnet", "mid_block", "mid_block", level, mid.resnets[0])
        for j, resnet in enumerate(mid.resnets[1:]):
            attn = _attention(mid, j)
            if attn is not None:
                self.add_block(
                    f"mid_block.attentions.{j}", f"M-A{j + 1}", "attention", "mid_block", "mid_block", level, attn
                )
            self.add_block(
                f"mid_block.resnets.{j + 1}", f"M-R{j + 2}", "resnet", "mid_block", "mid_block", level, resnet
            )

    def walk_up(self, producers: list[tuple[str, int, int]]) -> list[SkipEdge]:
        stack, edges = list(producers), []
        labels = {name: self._producer_label(name) for name, _, _ in producers}
        running = producers[-1][2]  # the bottleneck's channels, what the first up stage receives
        for u, block in enumerate(self.unet.up_blocks):
            stage, level = f"up_blocks.{u}", self.num_levels - 1 - u
            first_skip = stack[-1][2]
            cin = block.resnets[0].in_channels - first_skip if len(block.resnets) else running
            cout = running = block.resnets[-1].out_channels if len(block.resnets) else cin
            self.add(stage, f"U{u + 1}", "stage", stage, None, level, cin, cout, _params(block), "members")
            for j, resnet in enumerate(block.resnets):
                producer, plevel, ch = stack.pop()
                consumer = f"{stage}.resnets.{j}"
                edges.append(SkipEdge(producer, consumer, plevel, ch))
                self.add(
                    SKIP_PREFIX + consumer,
                    f"{labels[producer]}>U{u + 1}-R{j + 1}",
                    "skip",
                    stage,
                    stage,
                    level,
                    ch,
                    ch,
                    0,
                    "zero",
                    producer=producer,
                    consumer=consumer,
                )
                self.add_block(consumer, f"U{u + 1}-R{j + 1}", "resnet", stage, stage, level, resnet)
                attn = _attention(block, j)
                if attn is not None:
                    self.add_block(
                        f"{stage}.attentions.{j}", f"U{u + 1}-A{j + 1}", "attention", stage, stage, level, attn
                    )
        return edges

    def _producer_label(self, name: str) -> str:
        if name == "conv_in":
            return "IN"
        for unit in self.units:
            if unit.name == name:
                return unit.label
        stage = int(name.split(".")[1])
        return f"D{stage + 1}-DS"

    def run(self) -> UNetGraph:
        producers = self.walk_down()
        self.walk_mid()
        edges = self.walk_up(producers)
        units = [u if u.name not in self.children else _with_children(u, self.children[u.name]) for u in self.units]
        return UNetGraph(units, producers, edges, self.num_levels)


def _with_children(unit: Unit, children: list[str]) -> Unit:
    return Unit(**{**unit.__dict__, "children": tuple(children)})


def walk(unet: nn.Module) -> UNetGraph:
    """Enumerate every prunable unit of a `UNet2DConditionModel` or `UNet2DModel`, in forward order.

    Works on `meta`-device models (only shapes and module structure are read).
    """
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        raise ValueError(f"{type(unet).__name__} is not a diffusers U-Net (no down_blocks/up_blocks)")
    return _Walker(unet).run()
