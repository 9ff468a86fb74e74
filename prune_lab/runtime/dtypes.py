"""One dtype vocabulary for every `--dtype` / `--mixed-precision` flag: both spellings are accepted.

`float32` / `fp32`, `float16` / `fp16` / `half`, `bfloat16` / `bf16`. :func:`parse_dtype` returns the torch
dtype; :data:`DTYPE_NAMES` are the spellings for argparse `choices` (torch is imported only on use, so building a
parser stays cheap).
"""

from __future__ import annotations

#: canonical name -> accepted spellings
SPELLINGS: dict[str, tuple[str, ...]] = {
    "float32": ("float32", "fp32"),
    "float16": ("float16", "fp16", "half"),
    "bfloat16": ("bfloat16", "bf16"),
}
#: every accepted spelling (argparse choices)
DTYPE_NAMES: tuple[str, ...] = tuple(s for names in SPELLINGS.values() for s in names)


def canonical_dtype(name: str) -> str:
    """The canonical name (`float32`, `float16`, `bfloat16`) of any accepted spelling.

    Raises:
        ValueError: not a known spelling.
    """
    for canonical, names in SPELLINGS.items():
        if name in names:
            return canonical
    raise ValueError(f"unknown dtype {name!r}; use one of: {', '.join(DTYPE_NAMES)}")


def parse_dtype(name):
    """The `torch.dtype` for an accepted spelling (a `torch.dtype` passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, canonical_dtype(name))


def dtype_name(dtype) -> str:
    """The canonical name of a `torch.dtype` (`torch.float16` -> `float16`)."""
    return str(dtype).removeprefix("torch.")


def cast_model(model, dtype):
    """`model` with its weights in `dtype`, in place (returned for chaining).

    diffusers' `ModelMixin.to(dtype)` warns "modules that should be kept in float32" on every cast, also when the
    model keeps none and when the dtype does not change; that warning is noise on a user's stderr. A model that does
    name modules to keep in float32 goes through diffusers (and its warning is real); every other one through
    `torch.nn.Module.to`.
    """
    import torch

    dtype = parse_dtype(dtype)
    if all(p.dtype == dtype for p in model.parameters()):
        return model
    if getattr(model, "_keep_in_fp32_modules", None):
        return model.to(dtype)
    return torch.nn.Module.to(model, dtype)
