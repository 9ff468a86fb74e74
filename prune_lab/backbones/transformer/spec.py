"""Family specs: which block stacks a transformer has, what is inside a block, and how one step is called.

A :class:`Family` is all the transformer backbone needs to know about one diffusers class; adding a residual block
stack (Flux2, Qwen-Image, Z-Image ...) is one more :data:`FAMILIES` entry. Each names

* its block stacks (:class:`Stack`): the `ModuleList` attribute, the config key counting it, the residual streams
  a block returns (`("image",)`: the hidden states; `("context", "image")`: MMDiT and Flux blocks return
  `(encoder_hidden_states, hidden_states)` in that order), and the branches inside a block;
* each branch (:class:`Branch`): the block attribute of a residual branch whose output is added to a stream, and
  whether it is a joint attention (returning one output per stream);
* what the model reads from a block outside the loop (`head`: DiT's output layer reads
  `transformer_blocks.0.norm1.emb`), whether the last block of a stack is `context_pre_only` (SD3), and config keys
  holding block indices (`dual_attention_layers`, renumbered when blocks go);
* one denoising step under the cost convention (`call`, zero inputs at batch 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Branch:
    """A separately removable residual branch of a block.

    Attributes:
        attr: the block attribute holding it (`attn`, `attn1`, `attn2`, `ff`, `ff_context`).
        kind: unit kind (`attention`, `cross_attention`, `dual_attention`, `feed_forward`, `context_feed_forward`).
        label: short label suffix (`A`, `X`, `A2`, `F`, `Fc`).
        joint: a joint (MMDiT) attention: returns `(image, context)` outputs, both zeroed when it is removed.
    """

    attr: str
    kind: str
    label: str
    joint: bool = False


@dataclass(frozen=True)
class Stack:
    """One `ModuleList` of residual blocks.

    Attributes:
        attr: the model attribute (`transformer_blocks`, `single_transformer_blocks`).
        count_key: the config key giving its length (`num_layers`, `num_single_layers`).
        label: block label prefix (`B`, `D` for Flux double blocks, `S` for single blocks).
        streams: what a block returns, in order: `("image",)` or `("context", "image")`.
        branches: the removable branches a block may have (those that are None in a block are skipped).
        head: a path inside block 0 the model reads after the loop (DiT: `norm1.emb`), or None.
        pre_only_last: the stack's last block is `context_pre_only` (SD3: no context output, no context MLP).
    """

    attr: str
    count_key: str
    label: str
    streams: tuple[str, ...]
    branches: tuple[Branch, ...]
    head: str | None = None
    pre_only_last: bool = False


@dataclass(frozen=True)
class Family:
    """What the transformer backbone knows about one diffusers class.

    Attributes:
        name: the preset family (`dit`, `pixart`, `sd3`, `flux`, `sana`).
        class_name: the diffusers class.
        stacks: its block stacks, in forward order.
        call: `call(model, latent, device, dtype) -> (fn, args)`, one step under the cost convention.
        index_keys: config keys listing block indices of the first stack (renumbered when blocks go).
        objective: the training objective calibration batches follow: `flow` (rectified flow) or `ddpm`
            (:mod:`.calibration`).
    """

    name: str
    class_name: str
    stacks: tuple[Stack, ...]
    call: Callable
    index_keys: tuple[str, ...] = ()
    objective: str = "flow"


# ------------------------------------------------------------------------------------------------ calls
#: Text tokens of each family's conditioning under the cost convention (the pipelines' defaults): T5 at 300 for
#: PixArt-Sigma, CLIP 77 + T5 256 for SD3, T5 512 for Flux-dev, Gemma 300 for Sana.
TEXT_TOKENS = {"pixart": 300, "sd3": 333, "flux": 512, "sana": 300}


def _zeros(*shape, device, dtype):
    import torch

    return torch.zeros(*shape, device=device, dtype=dtype)


def _latent_and_text(model, latent: int, family: str, text_width: int, z: dict) -> tuple:
    """Zero latent (1, C, s, s), timestep (1,) and text states (1, tokens, `text_width`)."""
    return (
        _zeros(1, model.config.in_channels, latent, latent, **z),
        _zeros(1, **z),
        _zeros(1, TEXT_TOKENS[family], text_width, **z),
    )


def _dit_step(model, sample, timestep, labels):
    return model(sample, timestep=timestep, class_labels=labels, return_dict=False)[0]


def dit_call(model, latent: int, device, dtype):
    """DiT: latent (1, C, s, s), integer timestep and class label."""
    import torch

    sample = _zeros(1, model.config.in_channels, latent, latent, device=device, dtype=dtype)
    index = torch.zeros(1, dtype=torch.long, device=device)
    return _dit_step, (sample, index, index.clone())


def _pixart_step(model, sample, timestep, text, *sizes):
    added = {"resolution": sizes[0], "aspect_ratio": sizes[1]} if sizes else {"resolution": None, "aspect_ratio": None}
    return model(sample, encoder_hidden_states=text, timestep=timestep, added_cond_kwargs=added, return_dict=False)[0]


def pixart_call(model, latent: int, device, dtype):
    """PixArt: latent (1, C, s, s), timestep, 300 T5 tokens (+ resolution / aspect ratio when the config uses them)."""
    z = dict(device=device, dtype=dtype)
    args = _latent_and_text(model, latent, "pixart", model.config.caption_channels, z)
    if model.use_additional_conditions:
        args = (*args, _zeros(1, 2, **z), _zeros(1, 1, **z))
    return _pixart_step, args


def _sd3_step(model, sample, timestep, text, pooled):
    return model(sample, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep, return_dict=False)[
        0
    ]


def sd3_call(model, latent: int, device, dtype):
    """SD3 / SD3.5: latent (1, 16, s, s), timestep, 333 text tokens (CLIP 77 + T5 256) and the pooled CLIP vector."""
    cfg, z = model.config, dict(device=device, dtype=dtype)
    args = _latent_and_text(model, latent, "sd3", cfg.joint_attention_dim, z)
    return _sd3_step, (*args, _zeros(1, cfg.pooled_projection_dim, **z))


def _flux_step(model, sample, timestep, text, pooled, img_ids, txt_ids, *guidance):
    return model(
        sample,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=timestep,
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance[0] if guidance else None,
        return_dict=False,
    )[0]


def flux_call(model, latent: int, device, dtype):
    """Flux: the latent packed into 2x2 patches ((s/2)^2 tokens of 4C), 512 T5 tokens, pooled CLIP, position ids,
    and the guidance scale for guidance-distilled models (Flux-dev)."""
    cfg, z = model.config, dict(device=device, dtype=dtype)
    tokens, text = (latent // 2) ** 2, TEXT_TOKENS["flux"]
    args = (
        _zeros(1, tokens, cfg.in_channels, **z),
        _zeros(1, **z),
        _zeros(1, text, cfg.joint_attention_dim, **z),
        _zeros(1, cfg.pooled_projection_dim, **z),
        _zeros(tokens, 3, **z),
        _zeros(text, 3, **z),
    )
    return _flux_step, (*args, _zeros(1, **z)) if cfg.guidance_embeds else args


def _sana_step(model, sample, timestep, text):
    return model(sample, encoder_hidden_states=text, timestep=timestep, return_dict=False)[0]


def sana_call(model, latent: int, device, dtype):
    """Sana: latent (1, 32, s, s) of the 32x DC-AE, timestep, 300 Gemma tokens."""
    z = dict(device=device, dtype=dtype)
    return _sana_step, _latent_and_text(model, latent, "sana", model.config.caption_channels, z)


# --------------------------------------------------------------------------------------------- families
_ATTN1 = Branch("attn1", "attention", "A")
_CROSS = Branch("attn2", "cross_attention", "X")
_FF = Branch("ff", "feed_forward", "F")
_JOINT = Branch("attn", "attention", "A", joint=True)
_MMDIT = (_JOINT, Branch("attn2", "dual_attention", "A2"), _FF, Branch("ff_context", "context_feed_forward", "Fc"))
_IMAGE, _BOTH = ("image",), ("context", "image")

#: Every family, by diffusers class name.
FAMILIES: dict[str, Family] = {
    f.class_name: f
    for f in (
        Family(
            "dit",
            "DiTTransformer2DModel",
            (Stack("transformer_blocks", "num_layers", "B", _IMAGE, (_ATTN1, _FF), head="norm1.emb"),),
            dit_call,
            objective="ddpm",
        ),
        Family(
            "pixart",
            "PixArtTransformer2DModel",
            (Stack("transformer_blocks", "num_layers", "B", _IMAGE, (_ATTN1, _CROSS, _FF)),),
            pixart_call,
            objective="ddpm",
        ),
        Family(
            "sd3",
            "SD3Transformer2DModel",
            (Stack("transformer_blocks", "num_layers", "B", _BOTH, _MMDIT, pre_only_last=True),),
            sd3_call,
            index_keys=("dual_attention_layers",),
        ),
        Family(
            "flux",
            "FluxTransformer2DModel",
            (
                Stack("transformer_blocks", "num_layers", "D", _BOTH, (_JOINT, _FF, _MMDIT[3])),
                Stack("single_transformer_blocks", "num_single_layers", "S", _BOTH, ()),
            ),
            flux_call,
        ),
        Family(
            "sana",
            "SanaTransformer2DModel",
            (Stack("transformer_blocks", "num_layers", "B", _IMAGE, (_ATTN1, _CROSS, _FF)),),
            sana_call,
        ),
    )
}

#: Every branch kind some family has (the graph's atom kinds besides `block`).
BRANCH_KINDS = tuple(dict.fromkeys(b.kind for f in FAMILIES.values() for s in f.stacks for b in s.branches))


def family_of(model) -> Family:
    """The :class:`Family` of `model` (by its class or a class it derives from)."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(f"no transformer family for a {type(model).__name__}; known: {', '.join(FAMILIES)}")
