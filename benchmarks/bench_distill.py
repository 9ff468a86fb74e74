"""Distillation speed: the latents cache vs encoding on the fly, and the cost of knowledge distillation itself.

Two ratios (issue: distill), measured on the real training step of `prune_lab.distill` (teacher forward without
gradients, student forward + backward, AdamW step) with random weights of the real architectures:

1. cache speed-up = step time encoding images (VAE encoder) and captions (text encoder) on the fly / step time
   reading VAE posteriors and text embeddings from the cache, same batch.                   goal >= 1.3x at 512x512
2. KD overhead = KD step (feature hooks + output and feature losses) / bare step (teacher forward + student
   forward/backward with the task loss only), both from cached latents.                     goal <= 1.10x

Usage: python benchmarks/bench_distill.py [--preset bk-small] [--resolution 512] [--batch-size 1] [--quick]
(`--quick`: toy-width models at 64x64, a smoke test of the script only; its ratios mean nothing.) On a CPU the
full-size run needs ~14 GB and about 10 CPU-minutes; it runs single-threaded and times CPU seconds, which a shared
machine's load does not inflate. The three step kinds run round-robin; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from prune_lab.backbones import backbone_for, build_student, create_plan
from prune_lab.backbones.unet.architectures import ARCHITECTURES
from prune_lab.backbones.unet.compaction import unit_map
from prune_lab.distill.encoders import FrozenEncoders, encode_moments
from prune_lab.distill.features import feature_pairs
from prune_lab.distill.losses import DistillationLoss
from prune_lab.distill.step import DistillStep, step_generator

#: Stable Diffusion v1's VAE and CLIP ViT-L/14 text encoder (public configs); `quick` ones at toy width.
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
)
QUICK_UNET = dict(
    ARCHITECTURES["sd-v1"],
    block_out_channels=(16, 32, 64, 64),
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=8,
    sample_size=8,
)
QUICK_VAE = dict(VAE, block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64)
QUICK_TEXT = dict(TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


class FixedIdsConditioner:
    """The text encoder on fixed token ids (tokenisation itself costs microseconds and is left out)."""

    def __init__(self, text_encoder: CLIPTextModel, batch: int) -> None:
        self.text_encoder = text_encoder
        self.ids = torch.randint(0, text_encoder.config.vocab_size, (batch, 77), device=text_encoder.device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": self.text_encoder(self.ids)[0]}


def build(args, device):
    torch.manual_seed(0)
    unet_cfg = QUICK_UNET if args.quick else ARCHITECTURES["sd-v1"]
    teacher = UNet2DConditionModel(**unet_cfg).to(device).eval().requires_grad_(False)
    compacted = build_student(teacher, create_plan(teacher, args.preset, source="sd-v1"))
    student = compacted.student.to(device).train()
    pairs = feature_pairs(teacher, student, compacted.resolution, unit_map(student))
    vae = AutoencoderKL(**(QUICK_VAE if args.quick else VAE)).to(device).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**(QUICK_TEXT if args.quick else TEXT))).to(device).eval()
    encoders = FrozenEncoders(vae, FixedIdsConditioner(text, args.batch_size), vae.config.scaling_factor)
    return teacher, student, pairs, encoders


def timed(modes: dict, repeats: int, warmup: int, device, clock: str) -> dict[str, float]:
    """Median seconds of each `modes[name]()`, run round-robin (so load drifts hit every mode alike).

    `clock="cpu"` counts this process's CPU time (robust on a shared CPU when run single-threaded),
    `"wall"` counts elapsed time (CUDA is synchronised around each call).
    """
    read = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(warmup + repeats):
        for name, fn in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = read()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(read() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bk-small")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], help="default: wall on CUDA, cpu (1 thread) on CPU")
    parser.add_argument("--quick", action="store_true", help="toy widths at 64x64 (checks the script only)")
    args = parser.parse_args()
    resolution = 64 if args.quick else args.resolution
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    if clock == "cpu":
        torch.set_num_threads(1)  # CPU time then measures work, not waiting for a shared core
    teacher, student, pairs, encoders = build(args, device)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)
    kd = DistillStep(teacher, student, encoders, scheduler, DistillationLoss(), pairs)
    backbone = backbone_for(teacher)

    g = torch.Generator(device).manual_seed(0)
    raw = {
        "pixel_values": torch.rand(args.batch_size, 3, resolution, resolution, generator=g, device=device) * 2 - 1,
        "text": ["a photograph of an astronaut riding a horse"] * args.batch_size,
    }
    cached = {"moments": encode_moments(encoders.vae, raw["pixel_values"]), "cond": encoders.condition(raw)}

    def kd_step(batch):
        terms = kd(batch, step_generator(0, 0, device=device))
        terms.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def bare_step(batch):  # what any distillation needs at least; the KD hooks are inactive outside capturing()
        noisy, t, target, cond = kd.noisy_inputs(batch, step_generator(0, 0, device=device))
        with torch.no_grad():
            teacher(**backbone.model_kwargs(teacher, noisy, t, cond))
        F.mse_loss(student(**backbone.model_kwargs(student, noisy, t, cond)).sample.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    modes = {"fly": lambda: kd_step(raw), "cache": lambda: kd_step(cached), "bare": lambda: bare_step(cached)}
    t = timed(modes, args.repeats, args.warmup, device, clock)
    print(
        f"device {device} ({torch.get_num_threads()} threads, {clock} clock), preset {args.preset}, {len(pairs)} "
        f"feature pairs, batch {args.batch_size} at {resolution}x{resolution}{' (quick)' if args.quick else ''}; "
        f"median of {args.repeats}"
    )
    print(
        f"step on the fly {t['fly']:.3f} s | step from cache {t['cache']:.3f} s | cache speed-up "
        f"{t['fly'] / t['cache']:.2f}x (goal >= 1.3x)"
    )
    print(
        f"KD step {t['cache']:.3f} s | bare teacher fwd + student fwd/bwd {t['bare']:.3f} s | KD overhead "
        f"{t['cache'] / t['bare']:.3f}x (goal <= 1.10x)"
    )


if __name__ == "__main__":
    main()
