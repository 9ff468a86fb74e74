"""The walker: every block of every stack of a diffusion transformer, and the residual branches inside each.

Names are module paths (`transformer_blocks.7`, `single_transformer_blocks.12`, `transformer_blocks.7.ff`); labels
are a display column: `B8` (DiT / PixArt / SD3 / Sana block 8), `D8` / `S13` (Flux double / single blocks),
`B8-A` (attention), `B8-X` (cross-attention), `B8-A2` (SD3.5's second, image-only attention), `B8-F` (feed-forward),
`B8-Fc` (the context stream's feed-forward of an MMDiT / Flux double block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...units import Graph, Unit
from .spec import BRANCH_KINDS, Family, family_of

if TYPE_CHECKING:
    import torch.nn as nn

BLOCK = "block"


@dataclass
class TransformerGraph(Graph):
    """All units of one diffusion transformer, in forward order."""

    backbone: ClassVar[str] = "transformer"
    atom_kinds: ClassVar[tuple[str, ...]] = (BLOCK, *BRANCH_KINDS)
    keeps_parent: ClassVar[tuple[str, ...]] = BRANCH_KINDS

    family: str = ""  # the diffusers class name (:data:`~.spec.FAMILIES` key)

    def blocks(self, stack: str | None = None) -> list[Unit]:
        """The blocks (of `stack`, when given), in forward order."""
        return [u for u in self.units if u.kind == BLOCK and (stack is None or u.stage == stack)]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def width(model: nn.Module) -> int:
    """The residual stream width (`inner_dim`)."""
    cfg = model.config
    return cfg.num_attention_heads * cfg.attention_head_dim


def walk(model: nn.Module, family: Family | None = None) -> TransformerGraph:
    """Enumerate every block and branch of `model`, in forward order (works on `meta` weights)."""
    family = family or family_of(model)
    dim, units = width(model), []

    def add(name, label, kind, stage, parent, params, children=()):
        units.append(
            Unit(name, label, kind, stage, parent, len(units), 0, dim, dim, params, "remove", None, None, children)
        )

    for stack in family.stacks:
        for i, block in enumerate(getattr(model, stack.attr)):
            name, label = f"{stack.attr}.{i}", f"{stack.label}{i + 1}"
            present = [b for b in stack.branches if getattr(block, b.attr, None) is not None]
            add(name, label, BLOCK, stack.attr, None, _params(block), tuple(f"{name}.{b.attr}" for b in present))
            for b in present:
                add(
                    f"{name}.{b.attr}", f"{label}-{b.label}", b.kind, stack.attr, name, _params(getattr(block, b.attr))
                )
    return TransformerGraph(units, family.class_name)


def image_stream(model: nn.Module, module: str) -> int:
    """The image stream's index in the output of `module`: its place in the stack's `streams` for a block, else 0."""
    attr, _, index = module.rpartition(".")
    stack = next((s for s in family_of(model).stacks if s.attr == attr), None)
    return stack.streams.index("image") if stack is not None and index.isdigit() else 0
