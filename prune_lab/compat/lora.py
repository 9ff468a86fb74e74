"""LoRA with peft, as diffusers' LoRA training scripts do it: `unet.add_adapter(LoraConfig(...))`, a few training
steps on the adapter only, `save_lora_weights`, and `load_lora_weights` into a fresh pipeline of the export.

A `load_pruned` student takes a LoRA the same way once it is the pipeline's `unet=` (prune_lab's pipeline loader
does that): the adapter's keys are the student's own module paths, so the file reloads onto the same export only.
"""

from __future__ import annotations

from pathlib import Path

from .checks import always, register_check
from .export import Export, forward, pipeline_call, same, unet_inputs

#: The attention projections diffusers' LoRA scripts adapt.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
RANK = 4
#: The LoRA file (safetensors: never a pickle).
WEIGHTS = "pytorch_lora_weights.safetensors"
STEPS = 3


def add_lora(unet, rank: int = RANK, seed: int = 0) -> None:
    """Freeze `unet` and add a LoRA adapter (peft) on the attention projections."""
    import torch
    from peft import LoraConfig

    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGETS)))


def train_lora(unet, steps: int = STEPS, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """A few denoising-regression steps on the adapter only; the losses (the diffusers scripts' objective, on
    random inputs)."""
    import torch

    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the U-Net has no trainable adapter parameters (no attention projections to adapt?)")
    optimizer = torch.optim.AdamW(params, lr=lr)
    inputs = unet_inputs(unet, seed=seed)
    target = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(seed + 1))
    unet.train()
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(unet(**inputs).sample, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    unet.eval()
    return losses


def lora_layers(unet) -> dict:
    """The adapter's weights in diffusers' key layout (what `save_lora_weights` takes as `unet_lora_layers`)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


@register_check(
    "lora",
    f"peft LoRA (rank {RANK}): add_adapter, {STEPS} training steps, save_lora_weights, load_lora_weights into a fresh "
    "pipeline gives the same outputs",
    always,
)
def lora(export: Export, tmp: Path) -> None:
    if export.pipeline_class is None:
        return lora_unet_only(export, tmp)
    pipe = export.pipeline()
    add_lora(pipe.unet)
    train_lora(pipe.unet)
    inputs = unet_inputs(pipe.unet)
    type(pipe).save_lora_weights(tmp, unet_lora_layers=lora_layers(pipe.unet), weight_name=WEIGHTS)
    fresh = export.pipeline()
    fresh.load_lora_weights(tmp, weight_name=WEIGHTS)
    same(
        forward(fresh.unet, inputs), forward(pipe.unet, inputs), "the reloaded LoRA against the trained one", atol=1e-5
    )
    same(pipeline_call(fresh), pipeline_call(pipe), "images with the reloaded LoRA", atol=1e-5)
    if (forward(pipe.unet, inputs) - forward(export.unet, inputs)).abs().max() == 0:
        raise AssertionError("the trained LoRA left the student's output unchanged")


def lora_unet_only(export: Export, tmp: Path) -> None:
    """A bare U-Net export: the model-level `save_lora_adapter` / `load_lora_adapter` round trip."""
    from ..formats import load_pruned

    unet = load_pruned(export.folder)
    add_lora(unet)
    train_lora(unet)
    unet.save_lora_adapter(tmp, weight_name=WEIGHTS)
    fresh = load_pruned(export.folder)
    fresh.load_lora_adapter(tmp, weight_name=WEIGHTS, prefix=None)
    inputs = unet_inputs(unet)
    same(forward(fresh, inputs), forward(unet, inputs), "the reloaded LoRA against the trained one", atol=1e-5)
