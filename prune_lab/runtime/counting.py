"""Counting MACs of one forward pass, on `meta` tensors, the way the BK-SDM paper does and with attention.

Convention (BK-SDM, Kim et al. 2023, Table 2; Nota's `get_macs_params`): thop's `profile` over one forward of
dummy zero inputs at batch 1. thop counts module hooks (convolutions, linear layers, LayerNorm ...) only, so the
attention-score products QK^T and softmax(QK^T)V, computed by `scaled_dot_product_attention` (a function, not a
module), are missing from its figure. :func:`profile_call` runs thop inside an :class:`AttentionCounter`, so the
same single forward also records every activation x activation product (`scaled_dot_product_attention`, `bmm`,
`baddbmm`, batched `matmul`): those are the attention MACs thop leaves out, attributed to every module they ran
in (via torch's `ModuleTracker`). The counter works at the torch-function level with the formulas of torch's
`FlopCounterMode` (MACs = FLOPs / 2; the tests check it against `FlopCounterMode` with the math attention
kernel), which keeps profiling within ~10-20% of a plain forward, where a dispatch-level mode doubles it.

The forward runs through `torch.func.functional_call` with `meta` stand-ins for every parameter and buffer, so
structure-only models (built on the `meta` device) and real checkpoints are counted alike, in about a second for
a full-size U-Net, and the model itself is never touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import thop
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.module_tracker import ModuleTracker

#: Text length of SD-family conditioning (CLIP pads every prompt to 77 tokens); cost inputs use it.
TEXT_TOKENS = 77


def _sdpa_macs(query, key, value, *args, **kwargs) -> int:
    """QK^T (Lq x Lk x E) plus AV (Lq x Lk x Ev), per batch x head: query (..., Lq, E), key (..., Lk, E)."""
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]).numel()
    return batch * query.shape[-2] * key.shape[-2] * (query.shape[-1] + value.shape[-1])


def _matmul_macs(a, b, *args, **kwargs) -> int:
    """Batched products of two activations, (..., n, k) @ (..., k, m); 2-D weights (linear layers) are not."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.ndim < 3 or b.ndim < 3:
        return 0
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _baddbmm_macs(bias, a, b, *args, **kwargs) -> int:
    return _matmul_macs(a, b)


#: Torch functions whose MACs are activation x activation products (the attention matmuls), with their counts.
ATTENTION_RULES: dict[Callable, Callable[..., int]] = {
    F.scaled_dot_product_attention: _sdpa_macs,
    torch.bmm: _matmul_macs,
    torch.Tensor.bmm: _matmul_macs,
    torch.matmul: _matmul_macs,
    torch.Tensor.matmul: _matmul_macs,
    torch.Tensor.__matmul__: _matmul_macs,
    torch.baddbmm: _baddbmm_macs,
    torch.Tensor.baddbmm: _baddbmm_macs,
}


class AttentionCounter(TorchFunctionMode):
    """Counts :data:`ATTENTION_RULES` MACs while active, in total and by module (names from `ModuleTracker`).

    Functions are seen where model code calls them; anything a Python-level torch function does inside itself
    is not (none of the diffusers / transformers attention paths does that).
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracker = ModuleTracker()
        self.by_module: dict[str, int] = defaultdict(int)

    def __enter__(self):
        self.tracker.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.tracker.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = ATTENTION_RULES.get(func)
        if rule is not None:
            macs = rule(*args, **kwargs)
            for name in self.tracker.parents if macs else ():
                self.by_module[name] += macs
        return func(*args, **kwargs)


@dataclass
class Profile:
    """MACs and parameters of one module, from one profiled forward.

    Attributes:
        params: parameter count (all parameters, as `sum(p.numel())`).
        macs: thop multiply-accumulates of the forward.
        attention_macs: MACs of the attention-score matmuls (QK^T and AV), which thop does not count.
        module_macs: thop MACs of every submodule, by module path (`""` is the module itself).
        module_attention_macs: attention MACs by module path, for the submodules that perform any.
    """

    params: int
    macs: int
    attention_macs: int
    module_macs: dict[str, int] = field(default_factory=dict, repr=False)
    module_attention_macs: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def macs_with_attention(self) -> int:
        return self.macs + self.attention_macs


class _Call(nn.Module):
    """`forward(*args)` is `fn(module, *args)`: lets thop profile any entry point (`decode`, a text encoder)."""

    def __init__(self, module: nn.Module, fn: Callable) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args):
        return self.fn(self.module, *args)


class _OnMeta(nn.Module):
    """Calls `call` with every parameter and buffer of its module replaced by a `meta` tensor of the same shape."""

    def __init__(self, call: _Call) -> None:
        super().__init__()
        self.call = call
        self.state = {f"module.{name}": _meta_like(t) for name, t in _tensors(call.module)}

    def forward(self, *args):
        return torch.func.functional_call(self.call, self.state, args, strict=False, tie_weights=False)


def _tensors(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    dtype = torch.float32 if t.is_floating_point() else t.dtype
    return torch.empty(t.shape, dtype=dtype, device="meta")


def _flatten(tree: dict, prefix: str = "") -> dict[str, int]:
    out = {}
    for name, (ops, _, children) in tree.items():
        path = f"{prefix}{name}"
        out[path] = int(ops)
        out.update(_flatten(children, f"{path}."))
    return out


def _strip(names: dict[str, int], prefix: str) -> dict[str, int]:
    """Keys relative to the profiled module (`prefix` itself becomes `""`)."""
    return {
        k[len(prefix) + 1 :] if k != prefix else "": v
        for k, v in names.items()
        if k == prefix or k.startswith(prefix + ".")
    }


@contextmanager
def _left_as_it_was(model: nn.Module):
    """Undo what thop 0.1.1 does to a model: `eval()` then one `train(flag)` for the whole tree, its buffers
    left on modules without a counting rule, and its hooks left behind when the forward fails."""
    state = {m: (m.training, set(m._forward_hooks), set(m._buffers)) for m in model.modules()}
    try:
        yield
    finally:
        for m, (training, hooks, buffers) in state.items():
            m.training = training
            for key in set(m._forward_hooks) - hooks:
                m._forward_hooks.pop(key)
                m._forward_hooks_with_kwargs.pop(key, None)
                m._forward_hooks_always_called.pop(key, None)
            for key in set(m._buffers) - buffers:
                m._buffers.pop(key)


def profile_call(module: nn.Module, fn: Callable, *args: torch.Tensor) -> Profile:
    """Profile `fn(module, *args)`: one forward on `meta` tensors, thop's hooks inside the attention counter.

    Args:
        module: the model (real, `meta` or mixed weights; it is left exactly as it was).
        fn: how to call it, e.g. `lambda vae, z: vae.decode(z).sample`.
        *args: inputs, ideally `meta` tensors (their values are never read).

    Returns:
        A :class:`Profile` with totals and per-submodule MACs.
    """
    runner = _OnMeta(_Call(module, fn))
    with _left_as_it_was(runner), AttentionCounter() as counter:
        macs, _, tree = thop.profile(runner, args, verbose=False, ret_layer_info=True)
    module_macs = _strip(_flatten(tree), "call.module")
    attention = _strip(dict(counter.by_module), f"{type(runner).__name__}.call.module")
    params = sum(p.numel() for p in module.parameters())
    return Profile(params, int(macs), attention.get("", 0), module_macs, attention)
