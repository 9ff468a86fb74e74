"""Runtime checks: fp16 / bf16 casting, `torch.compile`, `enable_model_cpu_offload`, and the single-file round trip."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from ..runtime.dtypes import cast_model
from .checks import NotApplicable, always, needs_pipeline, register_check
from .export import Export, finite_images, forward, pipeline_call, same, unet_inputs

#: The `torch.compile` backend of the compile check (`inductor`, what users get; tests may pick a lighter one).
COMPILE_BACKEND = "inductor"
#: Largest difference from the fp32 output allowed after casting, relative to the fp32 output's largest value.
CAST_TOLERANCE = {"fp16": 0.01, "bf16": 0.05}


def cast_check(dtype_name: str):
    """The check that `export.unet` cast to `dtype_name` runs and stays within :data:`CAST_TOLERANCE` of fp32."""

    def run(export: Export, tmp: Path) -> None:
        import torch

        from ..runtime.dtypes import parse_dtype

        dtype = parse_dtype(dtype_name)
        inputs = unet_inputs(export.unet)
        reference = forward(export.unet, inputs)
        cast = cast_model(copy.deepcopy(export.unet), dtype)
        low = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        if "added_cond_kwargs" in inputs:
            low["added_cond_kwargs"] = {k: v.to(dtype) for k, v in inputs["added_cond_kwargs"].items()}
        out = forward(cast, low)
        if out.dtype != dtype:
            raise AssertionError(f"the {dtype_name} U-Net returned {out.dtype}")
        same(
            out,
            reference,
            f"{dtype_name} against fp32",
            atol=CAST_TOLERANCE[dtype_name] * reference.abs().max().item(),
        )

    return run


for _name in CAST_TOLERANCE:
    register_check(_name, f"the student cast to {_name} runs and stays close to fp32", always)(cast_check(_name))


def _compiler_missing() -> str | None:
    if COMPILE_BACKEND != "inductor":
        return None
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile's inductor backend needs a C++ compiler on the CPU, and none is installed"
    return None


@register_check("torch-compile", "torch.compile of the student: one forward equals eager", always)
def torch_compile(export: Export, tmp: Path) -> None:
    import torch

    missing = _compiler_missing()
    if missing:
        raise NotApplicable(missing)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(export.unet), backend=COMPILE_BACKEND, fullgraph=False)
    inputs = unet_inputs(export.unet)
    same(
        forward(compiled, inputs),
        forward(export.unet, inputs),
        f"torch.compile ({COMPILE_BACKEND}) against eager",
        atol=1e-4,
    )


def needs_cuda(export: Export) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device here: enable_model_cpu_offload moves each part to a CUDA device while it runs"
    return needs_pipeline(export)


@register_check("cpu-offload", "enable_model_cpu_offload: the pipeline runs with its parts offloaded", needs_cuda)
def cpu_offload(export: Export, tmp: Path) -> None:
    pipe = export.pipeline()
    pipe.enable_model_cpu_offload()
    finite_images(pipeline_call(pipe), pipe, "model CPU offload")


def stock_config(export: Export) -> str | None:
    """`applies` of the single-file check: a stock config must describe the student."""
    if not export.plain:
        return "a load_pruned-only student: no stock config describes it, so there is no original-layout key set"
    return None


@register_check(
    "single-file", "one original-layout .safetensors checkpoint, reloaded with identical outputs", stock_config
)
def single_file(export: Export, tmp: Path) -> None:
    from ..formats.single_file import check_single_file

    ok, reason = check_single_file(export.folder, tmp)
    if not ok:
        raise AssertionError(reason)
