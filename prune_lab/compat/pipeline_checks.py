"""Pipeline checks: text-to-image, img2img (SDEdit), inpainting, and the diffusers training scripts' loading.

The derived pipelines come from the export's own through diffusers' `AutoPipelineFor*.from_pipe`, so an SD-v1 and
an SDXL export each get their family's img2img / inpainting class and nothing here names a family.
"""

from __future__ import annotations

from pathlib import Path

from .checks import needs_pipeline, register_check
from .export import LATENT, STEPS, Export, finite_images, forward, pipeline_call, same, unet_inputs

#: SDEdit strength of the img2img check (BK-SDM §5.7's image-to-image use).
STRENGTH = 0.8
IMG2IMG_STEPS = 5


def count_calls(module) -> list[int]:
    """A one-element list counting `module`'s forward calls from now on."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def scheduled_calls(pipe, steps: int, strength: float = 1.0) -> int:
    """How many U-Net calls the pipeline's scheduler makes for `steps` steps at `strength` (diffusers' rule: the
    first `int(steps * (1 - strength))` steps are skipped; some schedulers, e.g. PNDM, add a step)."""
    pipe.scheduler.set_timesteps(steps)
    skipped = steps - min(int(steps * strength), steps)
    return len(pipe.scheduler.timesteps) - skipped * pipe.scheduler.order


def test_image(pipe, seed: int = 0):
    """A seeded random RGB image (PIL) at the check's size."""
    import numpy as np
    from PIL import Image

    size = LATENT * pipe.vae_scale_factor
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@register_check("text-to-image", "the export's pipeline draws an image with the student", needs_pipeline)
def text_to_image(export: Export, tmp: Path) -> None:
    pipe = export.pipeline()
    inputs = unet_inputs(export.unet)
    same(
        forward(pipe.unet, inputs), forward(export.unet, inputs), "the pipeline's U-Net against the student", atol=1e-5
    )
    finite_images(pipeline_call(pipe), pipe, "text-to-image")


@register_check("img2img", f"SDEdit image-to-image at strength {STRENGTH}", needs_pipeline)
def img2img(export: Export, tmp: Path) -> None:
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pipe(export.pipeline())
    expected = scheduled_calls(pipe, IMG2IMG_STEPS, STRENGTH)
    calls = count_calls(pipe.unet)
    images = pipeline_call(pipe, image=test_image(pipe), strength=STRENGTH, num_inference_steps=IMG2IMG_STEPS)
    finite_images(images, pipe, "img2img")
    if calls[0] != expected:
        raise AssertionError(f"img2img ran the U-Net {calls[0]} times; SDEdit at strength {STRENGTH} needs {expected}")


def inpaint_channels(export: Export) -> str | None:
    """`applies` of inpainting: a pipeline, and a U-Net taking 4 (latent blending) or 9 (inpainting) channels."""
    channels = export.unet.config.in_channels
    if channels not in (4, 9):
        return (
            f"the U-Net takes {channels} input channels; inpainting pipelines need 4 (masked latent blending) "
            "or 9 (an inpainting U-Net: latents + mask + masked image)"
        )
    return needs_pipeline(export)


@register_check(
    "inpainting", "inpainting (masked latent blending for 4 channels, 9-channel inpainting U-Nets)", inpaint_channels
)
def inpainting(export: Export, tmp: Path) -> None:
    import numpy as np
    from diffusers import AutoPipelineForInpainting
    from PIL import Image

    pipe = AutoPipelineForInpainting.from_pipe(export.pipeline())
    image = test_image(pipe)
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    mask[:, : image.width // 2] = 255
    expected = scheduled_calls(pipe, STEPS)
    calls = count_calls(pipe.unet)
    images = pipeline_call(pipe, image=image, mask_image=Image.fromarray(mask), strength=1.0)
    finite_images(images, pipe, "inpainting")
    if calls[0] != expected:
        raise AssertionError(f"inpainting ran the U-Net {calls[0]} times; {STEPS} steps need {expected}")


def plain_unet(export: Export) -> str | None:
    """`applies` of the checks that need a stock diffusers config in `unet/`."""
    if not export.plain:
        return (
            "unet/ is prune_lab's compact format (the plan has substitutes or dropped skips, which no stock config "
            "describes): load it with prune_lab.load_pruned and pass it as unet="
        )
    return None


@register_check(
    "training-scripts",
    "diffusers' DreamBooth / text-to-image scripts: UNet2DConditionModel.from_pretrained(path, subfolder='unet'), "
    "gradient checkpointing, one optimiser step",
    plain_unet,
)
def training_scripts(export: Export, tmp: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    folder = export.unet_folder()
    unet = UNet2DConditionModel.from_pretrained(folder.parent, subfolder=folder.name)
    inputs = unet_inputs(unet)
    same(forward(unet, inputs), forward(export.unet, inputs), "from_pretrained(subfolder='unet') against the student")
    unet.train()
    unet.enable_gradient_checkpointing()
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    loss = torch.nn.functional.mse_loss(unet(**inputs).sample, torch.zeros_like(inputs["sample"]))
    loss.backward()
    optimizer.step()
    moved = sum(not torch.equal(before[k], v) for k, v in unet.named_parameters())
    if not torch.isfinite(loss) or moved == 0:
        raise AssertionError(f"one training step: loss {loss.item()}, {moved} parameters moved")
