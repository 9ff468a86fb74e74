"""A diffusers `UNet2DConditionModel` forward as an explicit sequence of steps that can be resumed from any step.

`UNet2DConditionModel.forward` is a fixed program: embeddings and `conv_in`, then per down stage resnet → attention
slots (each slot's output pushed on the skip stack) and a downsampler, the mid stage, and per up stage slots that
pop a skip, concatenate it, run resnet → attention, then an upsampler and the output head. :class:`StagedUNet`
spells that program out as :class:`Step` objects over a :class:`State` (hidden state + skip stack), so a run can
start at any step from a cached state: the prefix caching of output-level ablation (everything before the first
step a unit touches is identical with and without the unit).

Steps look their module up by path when they run, so modules swapped by :func:`.surgery.taken_out` (and
forward hooks, e.g. zeroed skips) take effect. FreeU, ControlNet and adapter residuals are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .graph import UNetGraph
from .surgery import expand_removal


@dataclass(frozen=True)
class State:
    """What flows between steps: the hidden state (B, C, H, W) and the skip stack (oldest first)."""

    hidden: torch.Tensor
    skips: tuple[torch.Tensor, ...]


@dataclass
class Context:
    """Per-batch constants every step may read.

    Attributes:
        emb: time (+ added-condition) embedding (B, D_t).
        encoder_hidden_states: text conditioning (B, L, D), or None.
        attention: keyword arguments for attention blocks (masks, cross-attention kwargs).
        upsample_sizes: pass explicit upsample sizes (latent side not divisible by 2**num_upsamplers).
    """

    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor | None
    attention: dict = field(default_factory=dict)
    upsample_sizes: bool = False


@dataclass(frozen=True)
class Step:
    """One step of the program: `path` is the module it runs (a resnet / attention unit name, or a sampler)."""

    path: str
    run: Callable[[nn.Module, State, Context], State]


def _resnet(path: str, *, push: bool = False, pop: bool = False) -> Step:
    def run(unet: nn.Module, s: State, c: Context) -> State:
        hidden, skips = s.hidden, s.skips
        if pop:
            hidden, skips = torch.cat([hidden, skips[-1]], dim=1), skips[:-1]
        hidden = unet.get_submodule(path)(hidden, c.emb)
        return State(hidden, skips + (hidden,) if push else skips)

    return Step(path, run)


def _attention(path: str, *, push: bool = False) -> Step:
    def run(unet: nn.Module, s: State, c: Context) -> State:
        hidden = unet.get_submodule(path)(
            s.hidden, encoder_hidden_states=c.encoder_hidden_states, return_dict=False, **c.attention
        )[0]
        return State(hidden, s.skips + (hidden,) if push else s.skips)

    return Step(path, run)


def _downsampler(path: str) -> Step:
    def run(unet: nn.Module, s: State, c: Context) -> State:
        hidden = unet.get_submodule(path)(s.hidden)
        return State(hidden, s.skips + (hidden,))

    return Step(path, run)


def _upsampler(path: str, final: bool) -> Step:
    def run(unet: nn.Module, s: State, c: Context) -> State:
        size = s.skips[-1].shape[2:] if c.upsample_sizes and not final else None
        return State(unet.get_submodule(path)(s.hidden, size), s.skips)

    return Step(path, run)


def _head(unet: nn.Module, s: State, c: Context) -> State:
    hidden = s.hidden
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return State(unet.conv_out(hidden), s.skips)


def _stage_steps(block: nn.Module, stage: str, up: bool, final: bool) -> list[Step]:
    attentions = getattr(block, "attentions", None) or []
    steps = []
    for j in range(len(block.resnets)):
        has_attn = j < len(attentions)
        steps.append(_resnet(f"{stage}.resnets.{j}", push=not up and not has_attn, pop=up))
        if has_attn:
            steps.append(_attention(f"{stage}.attentions.{j}", push=not up))
    for d in range(len(getattr(block, "downsamplers", None) or [])):
        steps.append(_downsampler(f"{stage}.downsamplers.{d}"))
    for k in range(len(getattr(block, "upsamplers", None) or [])):
        steps.append(_upsampler(f"{stage}.upsamplers.{k}", final))
    return steps


def _mid_steps(mid: nn.Module) -> list[Step]:
    steps = [_resnet("mid_block.resnets.0")]
    for j in range(len(mid.resnets) - 1):
        steps += [_attention(f"mid_block.attentions.{j}"), _resnet(f"mid_block.resnets.{j + 1}")]
    return steps


def supports_staging(unet: nn.Module) -> bool:
    """Whether :class:`StagedUNet` reproduces `unet`'s forward (diffusers `UNet2DConditionModel` layouts)."""
    if type(unet).__name__ != "UNet2DConditionModel" or unet.config.get("addition_embed_type") == "image_hint":
        return False
    mid = getattr(unet, "mid_block", None)
    return mid is None or type(mid).__name__ == "UNetMidBlock2DCrossAttn"


def _runs(step_path: str, unit_path: str) -> bool:
    return step_path == unit_path or step_path.startswith(unit_path + ".")


class StagedUNet:
    """`unet`'s forward as resumable steps.

    Args:
        unet: a diffusers `UNet2DConditionModel` (see :func:`supports_staging`).
    """

    def __init__(self, unet: nn.Module) -> None:
        if not supports_staging(unet):
            raise ValueError(
                f"{type(unet).__name__} with this block layout cannot be staged; "
                "score it with prefix caching off (--no-prefix-cache)"
            )
        self.unet = unet
        n = len(unet.up_blocks)
        steps = [s for i, b in enumerate(unet.down_blocks) for s in _stage_steps(b, f"down_blocks.{i}", False, False)]
        steps += _mid_steps(unet.mid_block) if unet.mid_block is not None else []
        steps += [s for i, b in enumerate(unet.up_blocks) for s in _stage_steps(b, f"up_blocks.{i}", True, i == n - 1)]
        self.steps: list[Step] = steps + [Step("conv_out", _head)]

    def prepare(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels=None,
        timestep_cond=None,
        attention_mask=None,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
        encoder_attention_mask=None,
    ) -> tuple[Context, State]:
        """Embeddings and `conv_in`, exactly as `UNet2DConditionModel.forward` computes them.

        Args:
            sample: noisy latents (B, C, H, W); the other arguments as in `UNet2DConditionModel.forward`.

        Returns:
            the per-batch :class:`Context` and the :class:`State` before the first step.
        """
        unet = self.unet
        upsample_sizes = any(d % 2**unet.num_upsamplers for d in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        aug = unet.get_aug_embed(
            emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        emb = emb + aug if aug is not None else emb
        emb = unet.time_embed_act(emb) if unet.time_embed_act is not None else emb
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        attention = dict(
            attention_mask=attention_mask,
            encoder_attention_mask=encoder_attention_mask,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        hidden = unet.conv_in(sample)
        return Context(emb, encoder_hidden_states, attention, upsample_sizes), State(hidden, (hidden,))

    def run(self, context: Context, state: State, start: int = 0, cache: list[State] | None = None) -> torch.Tensor:
        """Run steps `start`.. to the end from `state`; with `cache`, append the state before every step.

        Returns:
            the U-Net output (B, C_out, H, W).
        """
        for step in self.steps[start:]:
            if cache is not None:
                cache.append(state)
            state = step.run(self.unet, state, context)
        return state.hidden

    def __call__(self, **inputs) -> torch.Tensor:
        context, state = self.prepare(**inputs)
        return self.run(context, state)

    def restart_index(self, graph: UNetGraph, members: tuple[str, ...] | list[str]) -> int:
        """Index of the first step that taking `members` out changes (everything before it can be reused)."""
        paths = []
        for name in expand_removal(graph, members):
            unit = graph[name]
            paths.append(unit.consumer if unit.kind == "skip" else name)
            if unit.kind == "transformer_layer":
                paths.append(unit.parent)
        hits = [i for i, step in enumerate(self.steps) for p in paths if _runs(step.path, p)]
        if not hits:
            raise ValueError(f"no step of the staged forward runs {', '.join(members)}")
        return min(hits)
