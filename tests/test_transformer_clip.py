"""The clip criterion on text-to-image transformers (generation through their own pipelines), refused on DiT, and
the default sampler of every pipeline family (flow-matching ones included) for scoring and `prunelab generate`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_transformer
from test_scoring_cli import prompts, tiny_clip  # noqa: F401  (fixtures)
from transformer_pipelines import FAMILIES, save_pipeline

from prune_lab.backbones import get_backbone
from prune_lab.cli import main
from prune_lab.runtime import samplers
from prune_lab.scoring import list_criteria

#: The sampler each tiny family gets by default, and the scheduler class it builds.
DEFAULTS = {
    "sd3": ("flow-euler", "FlowMatchEulerDiscreteScheduler"),
    "flux": ("flow-euler", "FlowMatchEulerDiscreteScheduler"),
    "pixart": ("pndm", "PNDMScheduler"),
    "sana": ("dpm", "DPMSolverMultistepScheduler"),
}


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return save_pipeline("sd3", tmp_path_factory.mktemp("clip-sd3") / "sd3")


def _score_clip(model, out, prompts, tiny_clip, *extra) -> int:  # noqa: F811
    argv = ["score", "--model", str(model), "--criterion", "clip", "-o", str(out), "--quiet"]
    clip = ["--clip-model", str(tiny_clip[0]), "--clip-checkpoint", str(tiny_clip[1])]
    return main([*argv, "--prompts", str(prompts), "--steps", "2", "--guidance", "2.0", *clip, *extra])


def test_clip_applies_to_text_to_image_transformers_only():
    backbone = get_backbone("transformer")
    for name in ("SD3Transformer2DModel", "FluxTransformer2DModel", "PixArtTransformer2DModel"):
        assert "clip" in list_criteria(backbone, tiny_transformer(name))
    assert list_criteria(backbone, tiny_transformer("DiTTransformer2DModel")) == list_criteria(backbone)
    assert "clip" not in list_criteria(backbone)  # not every transformer can generate from text


def test_clip_scores_every_block_of_sd3_deterministically(sd3_dir, tmp_path, prompts, tiny_clip):  # noqa: F811
    tables = []
    for run in ("a", "b"):
        out = tmp_path / run / "scores.csv"
        assert _score_clip(sd3_dir, out, prompts, tiny_clip) == 0
        tables.append(pd.read_csv(out))
        settings = json.loads(out.with_suffix(".json").read_text())["meta"]
        assert settings["scheduler"] == "flow-euler"  # the resolved default is what a resume compares
    first, second = tables
    layers = json.loads((sd3_dir / "transformer" / "config.json").read_text())["num_layers"]
    assert first["name"].tolist() == [f"transformer_blocks.{i}" for i in range(layers)]
    assert set(first["criterion"]) == {"clip"} and set(first["metric"]) == {"clip_score"}
    pd.testing.assert_frame_equal(first, second)
    # importance = the unpruned CLIP score - the score without the block; a block changes the images
    baseline = first["clip_baseline"]
    assert baseline.nunique() == 1
    assert (first["importance"] - (baseline - first["raw"])).abs().max() < 1e-9
    assert (first["importance"] != 0).any()


def test_clip_is_refused_on_dit_in_one_line(tmp_path, prompts, tiny_clip, capsys):  # noqa: F811
    folder = tmp_path / "dit"
    tiny_transformer("DiTTransformer2DModel").save_pretrained(folder)
    out = tmp_path / "out" / "scores.csv"
    assert _score_clip(folder, out, prompts, tiny_clip) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (
        "--criterion clip does not apply to transformer models of class DiTTransformer2DModel (it needs generation)"
        in err[0]
    )
    assert not (tmp_path / "out").exists()


def test_explicit_ddpm_sampler_on_a_flow_pipeline_is_one_line(sd3_dir, tmp_path, prompts, tiny_clip, capsys):  # noqa: F811
    out = tmp_path / "scores.csv"
    assert _score_clip(sd3_dir, out, prompts, tiny_clip, "--scheduler", "pndm") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot sample a flow-matching pipeline; use flow-euler" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_default_sampler_of_every_family(family, tmp_path):
    from prune_lab.evaluation.generate import load_pipeline

    folder = save_pipeline(family, tmp_path / family)
    name, cls = DEFAULTS[family]
    pipe = load_pipeline(folder)
    assert type(pipe.scheduler).__name__ == cls
    assert samplers.resolve(None, pipe.scheduler.config) == name
    if family == "sana":  # DPM-Solver stays on Sana's flow sigmas; the other DDPM samplers cannot take them
        assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.prediction_type == "flow_prediction"
        with pytest.raises(ValueError, match="cannot sample a pipeline on flow sigmas .* use dpm"):
            load_pipeline(folder, scheduler="pndm")


def test_generate_on_sd3_without_a_scheduler(sd3_dir, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a red cat\nthe big dog\n")
    out = tmp_path / "images"
    argv = ["generate", "--model", str(sd3_dir), "--prompts", str(prompts_file), "--out", str(out)]
    argv += ["--steps", "2", "--guidance", "2.0", "--resolution", "16"]
    assert main(argv) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["scheduler"] == "flow-euler" and record["pipeline"] == "StableDiffusion3Pipeline"
    images = sorted(p.name for p in out.glob("*.png"))
    assert len(images) == 2
    before = {p: p.read_bytes() for p in out.glob("*.png")}
    # resuming with the resolved name named explicitly is the same run; another sampler is refused
    assert main([*argv, "--scheduler", "flow-euler"]) == 0
    assert {p: p.read_bytes() for p in out.glob("*.png")} == before
    capsys.readouterr()
    assert main([*argv, "--scheduler", "pndm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scheduler 'flow-euler' -> 'pndm'" in err[0]


def test_unet_default_is_still_pndm_and_its_steps_are_checked_before_writing(
    tiny_pipeline_dir,
    tmp_path,
    prompts,  # noqa: F811
    tiny_clip,  # noqa: F811
    capsys,
):
    out = tmp_path / "out" / "scores.csv"
    argv = ["score", "--model", str(tiny_pipeline_dir), "--criterion", "clip", "-o", str(out), "--quiet"]
    assert main([*argv, "--prompts", str(prompts), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prunelab score: error: --steps 1: the pndm sampler needs at least 2 steps"]
    assert not (tmp_path / "out").exists()
