"""The runtime layer (prune_lab/runtime): samplers, noise schedule and target, readers, pipelines, generation."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_SD, build_tiny_pipeline, build_tiny_sdxl_pipeline, tiny_ldm_unet
from PIL import Image

from prune_lab.pipelines import load_pipeline
from prune_lab.runtime import samplers
from prune_lab.runtime.generation import generate, initial_latents
from prune_lab.runtime.readers import crop_tensor, read_image_text, read_prompt_lines, read_rgb
from prune_lab.runtime.schedule import SD_SCHEDULE, noise_scheduler, training_target

RUNTIME = Path(__file__).resolve().parents[1] / "prune_lab" / "runtime"

#: what each sampler must be: (diffusers class, config values it must have whatever the pipeline's config)
EXPECTED = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
#: Samplers of flow-matching pipelines (SD3, Flux): built from a FlowMatchEulerDiscreteScheduler config only.
FLOW = {"flow-euler": ("FlowMatchEulerDiscreteScheduler", {})}


def _dpm_config():
    """A DPM-Solver config like the demo pipeline's (no skip_prk_steps), with a non-default schedule."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(beta_start=0.001, beta_end=0.015, beta_schedule="scaled_linear").config


# ------------------------------------------------------------------------------------------------------ layering
def _imported(node: ast.AST) -> list[str]:
    """Absolute module names a runtime module's import statement names (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        return [node.module or ""]
    base = ["prune_lab", "runtime"][: 3 - node.level] + ([node.module] if node.module else [])
    return [".".join(base)] if node.module else [".".join([*base, a.name]) for a in node.names]


def test_runtime_imports_no_capability_demo_or_cli():
    forbidden = {"scoring", "search", "report", "distill", "evaluation", "width", "analysis", "demo", "cli"}
    for path in RUNTIME.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node):
                parts = name.split(".")
                assert not (parts[0] == "prune_lab" and parts[1:2] and parts[1] in forbidden), (path.name, name)


def test_sampler_names_import_neither_torch_nor_diffusers():
    code = (
        "import sys, types; pkg = types.ModuleType('prune_lab'); pkg.__path__ = [sys.argv[1]]; "
        "sys.modules['prune_lab'] = pkg; from prune_lab.runtime import samplers; "
        "print(samplers.names(), 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(RUNTIME.parent)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['pndm', 'ddim', 'euler', 'dpm', 'flow-euler'] False False"


# ------------------------------------------------------------------------------------------------------ samplers
def test_sampler_names_are_the_registry():
    assert samplers.names() == [*EXPECTED, *FLOW] == samplers.SAMPLERS.names()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_sampler_builds_its_class_from_the_pipeline_config(name):
    from diffusers import PNDMScheduler

    class_name, forced = EXPECTED[name]
    for source in (PNDMScheduler(steps_offset=1).config, _dpm_config()):  # SD-like and demo-like configs
        sampler = samplers.build_sampler(name, source)
        assert type(sampler).__name__ == class_name
        assert all(sampler.config[k] == v for k, v in forced.items())
        # the noise schedule is the pipeline's own
        assert (sampler.config.beta_start, sampler.config.beta_schedule) == (source.beta_start, source.beta_schedule)


def test_config_only_keeps_the_pipeline_config_for_the_clip_criterion():
    plain = samplers.build_sampler("pndm", _dpm_config(), config_only=True)
    assert type(plain).__name__ == "PNDMScheduler" and plain.config.skip_prk_steps is False
    assert samplers.build_sampler("pndm", _dpm_config()).config.skip_prk_steps is True


def test_unknown_sampler_suggests_the_closest():
    with pytest.raises(ValueError, match="unknown sampler 'eulr'; did you mean 'euler'"):
        samplers.build_sampler("eulr", _dpm_config())


def test_with_sampler_shares_modules_and_leaves_the_pipeline_alone():
    pipe = build_tiny_pipeline()
    before = pipe.scheduler
    copy = samplers.with_sampler(pipe, "ddim")
    assert type(copy.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler is before
    assert copy.unet is pipe.unet and copy.vae is pipe.vae and copy.text_encoder is pipe.text_encoder


# ------------------------------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_by_hand(kind):
    scheduler = noise_scheduler()
    scheduler = type(scheduler).from_config(scheduler.config, prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 400, 999])
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled-linear betas
    abar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[kind]
    torch.testing.assert_close(training_target(scheduler, x0, noise, t), expected)


def test_training_target_refuses_unknown_prediction_types():
    scheduler = SimpleNamespace(config=SimpleNamespace(prediction_type="flow"))
    with pytest.raises(ValueError, match="'flow' is not supported; prune_lab handles epsilon, v_prediction, sample"):
        training_target(scheduler, torch.zeros(1), torch.zeros(1), torch.zeros(1))


def test_scoring_and_distill_share_the_target():
    from prune_lab.distill import step
    from prune_lab.runtime import schedule
    from prune_lab.scoring import calibration

    assert step.noised is schedule.noised and calibration.training_target is training_target
    assert schedule.noised.__globals__["training_target"] is training_target  # distill's DDPM target


def test_noise_scheduler_sources(tmp_path, tiny_pipeline_dir, tiny_unet_dir):
    default = noise_scheduler()
    assert type(default).__name__ == "DDPMScheduler"
    assert {k: default.config[k] for k in SD_SCHEDULE} == SD_SCHEDULE
    own = build_tiny_pipeline().scheduler.config  # PNDM's defaults: linear betas 0.0001 .. 0.02
    for source in (tiny_pipeline_dir, tiny_pipeline_dir / "scheduler", build_tiny_pipeline()):
        got = noise_scheduler(source)
        assert type(got).__name__ == "DDPMScheduler"
        assert (got.config.beta_schedule, got.config.beta_end) == (own.beta_schedule, own.beta_end) == ("linear", 0.02)
    assert noise_scheduler(tiny_unet_dir).config.beta_schedule == "scaled_linear"  # a bare U-Net: SD's schedule


# ------------------------------------------------------------------------------------------------------- readers
def _folder(path: Path, fmt: str, rows: list[dict], images=("a.png", "sub/b.png")) -> Path:
    for name in images:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(path / name)
    if fmt == "csv":
        import csv

        with (path / "metadata.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"file_name": "a.png", "text": "a red, cat"}, {"file_name": "sub/b.png", "text": "1.50"}]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_image_text_folder_parses_csv_and_jsonl(tmp_path, fmt):
    rows = read_image_text(_folder(tmp_path, fmt, ROWS))
    assert [(r.file_name, r.text) for r in rows] == [("a.png", "a red, cat"), ("sub/b.png", "1.50")]
    assert [r.path for r in rows] == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("escape", ["../a.png", "sub/../../a.png", "/etc/passwd"])
def test_image_text_folder_refuses_file_names_outside_it(tmp_path, fmt, escape):
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    folder = _folder(tmp_path / "data", fmt, [ROWS[0], {"file_name": escape, "text": "x"}])
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")  # the escaping name points at a real file
    meta = f"metadata.{fmt}"
    with pytest.raises(ValueError, match=rf"{meta} row 2 \(line \d\) names the image '{escape}', which is not inside"):
        read_image_text(folder)


def test_image_text_folder_errors_name_the_file_and_row(tmp_path):
    folder = _folder(tmp_path, "jsonl", [*ROWS, {"file_name": "gone.png", "text": "x"}])
    with pytest.raises(FileNotFoundError, match=r"metadata.jsonl row 3 \(line 3\) lists gone.png, which is not in"):
        read_image_text(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n\n{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match=r"row 2 \(line 3\) has no text"):
        read_image_text(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"row 2 \(line 2\) is not valid JSON"):
        read_image_text(folder)
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(ValueError, match="lists no images"):
        read_image_text(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image_text(tmp_path / "nope")


def test_prompt_lines(tmp_path):
    (tmp_path / "p.txt").write_text(" a cat \n\n  \nsky\n")
    assert read_prompt_lines(tmp_path / "p.txt") == ["a cat", "sky"]
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="is empty"):
        read_prompt_lines(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        read_prompt_lines(tmp_path / "missing.txt")


def test_crop_tensor_resizes_the_smaller_edge_and_center_crops(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")  # 64 wide, 32 high
    image = read_rgb(tmp_path / "x.png")
    pixels, (top, left) = crop_tensor(image, 16)
    resized = np.asarray(image.resize((32, 16), Image.Resampling.BILINEAR)).astype(np.float32) / 255.0
    expected = torch.from_numpy(resized[:, 8:24]).permute(2, 0, 1) * 2.0 - 1.0
    assert (top, left) == (0, 8) and pixels.shape == (3, 16, 16)
    torch.testing.assert_close(pixels, expected)


# ----------------------------------------------------------------------------------------------------- pipelines
def test_loader_loads_a_saved_pipeline_folder(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    reference = build_tiny_pipeline()
    pipe = load_pipeline(tiny_pipeline_dir)
    assert type(pipe) is StableDiffusionPipeline and pipe.unet.dtype == torch.float32
    assert all(torch.equal(v, reference.unet.state_dict()[k]) for k, v in pipe.unet.state_dict().items())
    assert type(load_pipeline(tiny_pipeline_dir, sampler="euler").scheduler).__name__ == "EulerDiscreteScheduler"
    assert load_pipeline(tiny_pipeline_dir, dtype=torch.float16).unet.dtype == torch.float16


def test_loader_wraps_a_loaded_model_and_refuses_a_bare_unet(tiny_pipeline_dir, tiny_unet_dir):
    from prune_lab.models import load_unet

    loaded = load_unet(tiny_pipeline_dir)
    assert load_pipeline(loaded).unet is loaded.unet  # surgery on one is on both
    with pytest.raises(ValueError, match="is not a pipeline folder"):
        load_pipeline(load_unet(tiny_unet_dir))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tiny_unet_dir)


def test_loader_dispatches_on_model_index(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, StableDiffusionXLPipeline

    build_tiny_sdxl_pipeline().save_pretrained(tmp_path / "sdxl")
    DDPMPipeline(unet=tiny_ldm_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ldm")
    assert type(load_pipeline(tmp_path / "sdxl", sampler="dpm")) is StableDiffusionXLPipeline
    assert type(load_pipeline(tmp_path / "ldm")) is DDPMPipeline


def test_safety_checker_is_left_out_on_request(tiny_pipeline_dir):
    assert load_pipeline(tiny_pipeline_dir).config.requires_safety_checker is False  # as saved by conftest
    pipe = load_pipeline(tiny_pipeline_dir, safety_checker=False)
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False


def test_builtin_demo_pipeline_loads_by_name():
    pipe = load_pipeline("demo")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"


# ---------------------------------------------------------------------------------------------------- generation
def test_initial_latents_depend_on_the_index_only():
    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(**TINY_SD)))
    three = initial_latents(pipe, 3, seed=5)
    assert three.shape == (3, 4, 16, 16) and torch.equal(initial_latents(pipe, 2, seed=5), three[:2])
    torch.testing.assert_close(three[2], torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(7)))


def test_generate_does_not_depend_on_the_batch_size():
    pipe = samplers.with_sampler(build_tiny_pipeline(), "ddim")
    latents = initial_latents(pipe, 3, seed=0)
    one = generate(pipe, ["a cat", "sky", "dog"], latents, steps=2, guidance=3.0, batch_size=1)
    three = generate(pipe, ["a cat", "sky", "dog"], latents, steps=2, guidance=3.0, batch_size=3)
    assert len(one) == 3 and all(
        np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1 for a, b in zip(one, three)
    )
