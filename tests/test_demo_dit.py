"""The demo world's transformer `demo-dit` (prune_lab/demo/dit.py): the shipped pipeline, its training stage."""

import json

import pytest
import torch

from prune_lab.demo import DIT_DIR, DIT_SAMPLING, SAMPLING, sampling

dit = pytest.importorskip("prune_lab.demo.dit")
shipped = pytest.mark.skipif(not (DIT_DIR / "transformer").is_dir(), reason="demo-dit weights not trained yet")

#: A 2-block transformer of the demo-dit layout (16 wide), for the stage and processor tests.
TINY = dict(dit.TRANSFORMER_CONFIG, num_layers=2, attention_head_dim=8, caption_projection_dim=16)


@shipped
def test_shipped_pipeline_loads_offline_and_generates_32px(monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    from prune_lab.evaluation.generate import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # as diffusers documents SD3 without T5: the absent encoder is passed as None
    pipe = StableDiffusion3Pipeline.from_pretrained(
        DIT_DIR, text_encoder_3=None, tokenizer_3=None, local_files_only=True
    )
    assert pipe.text_encoder_3 is None and pipe.transformer.config.num_layers == 12
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "a blue square"], num_inference_steps=2, output_type="pt").images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    builtin = load_pipeline("demo-dit", scheduler=DIT_SAMPLING["scheduler"])  # the built-in name, its sampler
    assert type(builtin.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    sizes = sum(p.stat().st_size for p in DIT_DIR.rglob("*.safetensors"))
    assert sizes <= 15e6


@shipped
def test_builtin_name_walks_as_a_12_block_mmdit():
    from prune_lab.backbones import backbone_for
    from prune_lab.models import load_unet

    loaded = load_unet("demo-dit")
    units = backbone_for(loaded.unet).walk(loaded.unet).units
    blocks = [u.name for u in units if u.kind == "block"]
    assert blocks == [f"transformer_blocks.{i}" for i in range(12)]
    # per block attn + ff + ff_context, except the last block's context stream (context_pre_only: no ff_context)
    assert len(units) == 12 * 4 - 1


def test_sampling_follows_the_model(tmp_path):
    assert sampling("demo") == SAMPLING and sampling("demo-dit") == DIT_SAMPLING
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    )
    assert sampling(str(tmp_path)) == DIT_SAMPLING


def test_one_repeated_token_is_the_pipelines_256_zero_tokens():
    """Training's single T5 stand-in with log(256) on its logit gives the stock forward on 256 zero tokens."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    tokenizer = dit.build_tokenizer()
    pipe = dit.build_pipeline(
        dit.build_transformer(0, TINY), dit.build_text_encoder(tokenizer, 0), dit.build_text_encoder(tokenizer, 1)
    )
    model = pipe.transformer.eval()
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100.0, 900.0])
    with torch.no_grad():
        one, pooled = dit.prompt_embeds(pipe, ["a red circle", ""], 1)
        full, _ = dit.prompt_embeds(pipe, ["a red circle", ""])
        assert one.shape == (2, dit.TEXT_TOKENS + 1, 128) and full.shape == (2, dit.TEXT_TOKENS + dit.T5_TOKENS, 128)
        reference = model(hidden_states=x, timestep=t, encoder_hidden_states=full, pooled_projections=pooled).sample
        model.set_attn_processor(dit.RepeatedTokenJointAttnProcessor(dit.T5_TOKENS))
        short = model(hidden_states=x, timestep=t, encoder_hidden_states=one, pooled_projections=pooled).sample
        model.set_attn_processor(JointAttnProcessor2_0())
        unbiased = model(hidden_states=x, timestep=t, encoder_hidden_states=one, pooled_projections=pooled).sample
    torch.testing.assert_close(short, reference, atol=1e-5, rtol=1e-4)
    assert (unbiased - reference).abs().max() > 1e-3  # the bias is what makes them agree


def _config():
    from prune_lab.demo.train import StageConfig

    return dit.DitTrainConfig(
        dit=StageConfig(steps=4, batch=2, lr=1e-3, warmup=1), checkpoint_every=2, transformer=TINY
    )


def test_stage_resumes_exactly_after_a_kill(tmp_path):
    from prune_lab.demo.quality import generate
    from prune_lab.demo.train import train_stage
    from prune_lab.evaluation.generate import load_pipeline

    whole = dit.train_dit(_config(), tmp_path / "whole", progress=False)
    config = _config()
    assert train_stage(dit.DitStage(config, tmp_path / "killed"), progress=False, stop_after=3) is None
    assert not (tmp_path / "killed" / "transformer").exists()  # nothing exported before the end
    dit.check_config(config, tmp_path / "killed")
    resumed = dit.train_dit(config, tmp_path / "killed", progress=False)  # from the checkpoint at step 3
    assert whole.steps == resumed.steps == 4 and whole.loss == resumed.loss
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        a = (tmp_path / "whole" / name).glob("*.safetensors")
        b = (tmp_path / "killed" / name).glob("*.safetensors")
        assert next(a).read_bytes() == next(b).read_bytes(), name
    out = dit.assemble_dit(tmp_path / "whole", tmp_path / "out", whole)
    record = json.loads((tmp_path / "out" / dit.RECORD).read_text())
    assert record["stages"][0]["steps"] == 4 and record["config"]["transformer"]["num_layers"] == 2
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    pipe = load_pipeline(str(out), scheduler=DIT_SAMPLING["scheduler"])  # as demo-quality loads it
    assert generate(pipe, ["a red circle"], [0], steps=1, guidance=2.0).shape == (1, 3, 32, 32)


def test_a_run_with_other_settings_is_refused(tmp_path):
    dit.check_config(_config(), tmp_path)
    other = _config()
    other.caption_dropout = 0.5
    with pytest.raises(ValueError, match="other settings"):
        dit.train_dit(other, tmp_path, progress=False)


def test_cli_trains_one_step_and_writes_the_pipeline(tmp_path, capsys):
    from prune_lab.cli import main

    argv = ["demo-train", "--backbone", "sd3", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--dit-steps", "1", "--threads", "1", "--quiet"]) == 0
    record = json.loads((tmp_path / "o" / "training-dit.json").read_text())
    assert record["stages"][0]["stage"] == "dit" and record["stages"][0]["steps"] == 1
    assert record["config"]["dit"]["batch"] == dit.DitTrainConfig().dit.batch
    config = json.loads((tmp_path / "o" / "pipeline-dit" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 12 and "wrote" in capsys.readouterr().out
