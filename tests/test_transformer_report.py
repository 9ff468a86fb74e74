"""The reporter on transformer pipelines: text towers at each pipeline's own text length, T5-XXL counted by hand, and
`prunelab report --model flux-dev --compare flux-lite flux-mini` with the whole pipeline (meta weights)."""

import io

import pandas as pd
import pytest

from prune_lab.cli import main
from prune_lab.report.components import (
    FLUX_SCHNELL_TOKENS,
    _transformer_components,
    profile_component,
    sequence_length,
    vae_scale_factor,
)

#: Built-in -> (pipeline class, text role -> tokens): CLIP towers at 77, T5 / Gemma at the pipeline's default.
TOWERS = {
    "dit-xl-2": ("DiTPipeline", {}),
    "pixart-sigma": ("PixArtSigmaPipeline", {"text_encoder": 300}),
    "sd3-medium": ("StableDiffusion3Pipeline", {"text_encoder": 77, "text_encoder_2": 77, "text_encoder_3": 256}),
    "flux-dev": ("FluxPipeline", {"text_encoder": 77, "text_encoder_2": 512}),
    "flux-schnell": ("FluxPipeline", {"text_encoder": 77, "text_encoder_2": FLUX_SCHNELL_TOKENS}),
    "sana-1600m": ("SanaPipeline", {"text_encoder": 300}),
}


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_text_towers_run_at_the_pipelines_text_length(name):
    pipeline, tokens = TOWERS[name]
    specs = _transformer_components()[name]
    assert {s.role: s.tokens for s in specs if s.role != "vae"} == tokens
    long = [n for role, n in tokens.items() if n != 77]
    if long and name != "flux-schnell":
        assert long == [sequence_length(pipeline)]  # read from the installed diffusers pipeline's signature
    assert vae_scale_factor(specs) == (32 if name == "sana-1600m" else 8)


def test_t5_xxl_encoder_by_hand():
    """Params: embeddings + 24 x (4 attention projections + gated FF (wi_0, wi_1, wo) + 2 RMS norms) + the relative
    position bias of layer 0 + the final norm. MACs per token: the same linear layers (thop counts matmuls)."""
    spec = next(s for s in _transformer_components()["pixart-sigma"] if s.role == "text_encoder")
    d, ff, layers, vocab = 4096, 10240, 24, 32128
    linear = 4 * d * d + 3 * d * ff
    expect = vocab * d + layers * (linear + 2 * d) + 32 * 64 + d
    profile = profile_component(spec, 128)
    assert profile.params == expect
    assert profile.macs >= 300 * layers * linear  # at least every linear layer once per token


def test_report_compare_flux_presets_with_the_pipeline(capsys):
    assert main(["report", "--model", "flux-dev", "--compare", "flux-lite", "flux-mini", "--format", "csv"]) == 0
    rows = {r["variant"]: r for r in pd.read_csv(io.StringIO(capsys.readouterr().out)).to_dict("records")}
    base, lite, mini = rows["base"], rows["flux-lite"], rows["flux-mini"]
    assert 11.8e3 < base["transformer_params_M"] < 12.0e3  # Flux.1-dev: 12B
    assert 8.0e3 < lite["transformer_params_M"] < 8.3e3 and 3.1e3 < mini["transformer_params_M"] < 3.3e3
    for r in rows.values():  # whole = text towers + transformer x steps + VAE decoder
        whole = r["text_encoder_macs_G"] + r["transformer_macs_G"] * r["steps"] + r["vae_decoder_macs_G"]
        assert r["whole_macs_G"] == pytest.approx(whole, rel=1e-6)  # columns are rounded to 0.01
        assert r["text_encoder_params_M"] == pytest.approx(123.06 + 4762.31, abs=0.05)  # CLIP-L + T5-XXL encoder
    assert lite["expressible"] and mini["expressible"]


def test_report_table_says_how_it_counted(capsys):
    assert main(["report", "--model", "sana-1600m"]) == 0
    out = capsys.readouterr().out
    assert "text tokens text_encoder 300" in out and "transformer x 25" in out and "resolution / 32 (32x32)" in out
    assert "transformer_params_M" in out


def test_demo_dit_text_towers_run_at_their_position_table_length(capsys):
    """demo-dit's CLIP towers have 8 positions: the whole-pipeline count runs them at 8 tokens, not CLIP's 77 (which
    their position table cannot take)."""
    assert main(["report", "--model", "demo-dit", "--compare", "depth-half", "--format", "csv"]) == 0
    rows = {r["variant"]: r for r in pd.read_csv(io.StringIO(capsys.readouterr().out)).to_dict("records")}
    assert rows["base"]["transformer_params_M"] == 1.79 and rows["depth-half"]["transformer_params_M"] == 0.89
    assert main(["report", "--model", "demo-dit"]) == 0
    assert "text tokens text_encoder 8, text_encoder_2 8" in capsys.readouterr().out
