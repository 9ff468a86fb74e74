"""`prunelab report`: thop-convention MACs, attention MACs by hand, per-unit sums, plans vs exports, latency."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import thop
import torch
from conftest import TINY_SD, TINY_SDXL, tiny_unet
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from prune_lab.backbones import create_plan, make_plan, walk
from prune_lab.cli import main
from prune_lab.formats.block import apply_plan
from prune_lab.models import load_unet
from prune_lab.report import (
    BUILTIN_COMPONENTS,
    OTHER,
    LatencySettings,
    Report,
    compare,
    comparison_frame,
    profile_component,
    report,
    unet_call,
)
from prune_lab.runtime.loading import LoadedModel

TOKENS = 77
UNIT_KEYS = ["name", "kind", "params", "macs", "attention_macs"]


def as_loaded(unet, source: str = "tiny") -> LoadedModel:
    return LoadedModel(unet, source, "unet")


def meta_copy(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config).eval()


def attention_macs_by_hand(levels: list[tuple[int, int, int]]) -> int:
    """Sum over transformer layers of QK^T + AV, self- and cross-attention: 2 * Lq * Lk * C each.

    `levels`: (number of transformer layers, tokens H*W, channels C) per resolution level.
    """
    return sum(n * (2 * hw * hw * c + 2 * hw * TOKENS * c) for n, hw, c in levels)


@dataclass
class Profiled:
    unet: torch.nn.Module
    report: Report
    forwards: int


def profiled(config: dict) -> Profiled:
    unet = tiny_unet(config).train()
    unet.conv_in.eval()  # a mixed training state, to check that the report leaves it as it was
    calls = []
    handle = unet.register_forward_pre_hook(lambda *_: calls.append(1))
    result = report(as_loaded(unet), per_unit=True)
    handle.remove()
    return Profiled(unet, result, len(calls))


@pytest.fixture(scope="module")
def sd():
    return profiled(TINY_SD)


@pytest.fixture(scope="module")
def sdxl():
    return profiled(TINY_SDXL)


# ------------------------------------------------------------------------------------- thop convention
def test_unet_macs_equal_plain_thop_and_leave_the_model_untouched(sd):
    fresh = tiny_unet(TINY_SD)  # same seed: what sd.unet was before its report
    assert sd.unet.state_dict().keys() == fresh.state_dict().keys()  # thop 0.1.1 leaks buffers; we take them off
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in sd.unet.state_dict().items())
    assert not sd.unet._forward_hooks and not sd.unet.down_blocks[0].resnets[0].conv1._forward_hooks
    assert sd.unet.training and sd.unet.conv_out.training and not sd.unet.conv_in.training
    _, args = unet_call(fresh, 16, device="cpu")
    expected, _ = thop.profile(fresh, args, verbose=False)  # BK-SDM's call: (latent, timestep, text) zeros
    assert (sd.report.resolution, sd.report.latent) == (128, 16)
    assert sd.report.unet.macs == int(expected)
    assert sd.report.unet.params == sum(p.numel() for p in fresh.parameters())


def test_structure_only_model_reports_like_real_weights(sd):
    meta = report(as_loaded(meta_copy(TINY_SD)), per_unit=True)
    assert sd.report.to_dict() == meta.to_dict()


@pytest.mark.parametrize("config", ["sd", "sdxl"])
def test_per_unit_comes_from_one_forward(config, request):
    assert request.getfixturevalue(config).forwards == 1


# ------------------------------------------------------------------------------------------- per unit
@pytest.mark.parametrize("config", ["sd", "sdxl"])
def test_top_level_units_plus_other_sum_to_the_whole(config, request):
    run = request.getfixturevalue(config)
    result, units = run.report, run.report.units
    top = units[units["parent"].isna()]
    assert top["name"].iloc[-1] == OTHER and (units["name"] == OTHER).sum() == 1
    for key, whole in [
        ("params", result.unet.params),
        ("macs", result.unet.macs),
        ("attention_macs", result.unet.attention_macs),
    ]:
        assert top[key].sum() == whole
    other = top.iloc[-1]
    assert 0 < other["macs"] < 0.05 * result.unet.macs and other["attention_macs"] == 0
    # nesting: every container costs at least what its children do (stages also hold down/upsamplers)
    by_name = units.set_index("name")
    for unit in walk(run.unet).units:
        if unit.children:
            assert by_name.loc[unit.name, "macs"] >= by_name.loc[list(unit.children), "macs"].sum()
    assert (units.loc[units["kind"] == "skip", "macs"] == 0).all()


def test_other_is_conv_in_time_embedding_and_conv_out_by_hand(sd):
    other = sd.report.units.set_index("name").loc[OTHER]
    hw, c0, t = 16 * 16, 16, 64  # latent 16x16, block_out_channels[0] = 16, time embedding 4 * 16
    conv_in, conv_out = hw * c0 * 4 * 9, hw * 4 * c0 * 9  # thop: output elements x C_in x k x k, no bias
    time_embedding = c0 * t + t * t  # linear_1 and linear_2 at batch 1; GroupNorm is not counted by thop
    assert other["macs"] == conv_in + conv_out + time_embedding
    params = (4 * c0 * 9 + c0) + (c0 * t + t + t * t + t) + 2 * c0 + (c0 * 4 * 9 + 4)  # + conv_norm_out
    assert other["params"] == params


# ------------------------------------------------------------------------------------------ attention
def test_attention_macs_are_exactly_the_score_matmuls_by_hand(sd):
    result = sd.report
    # TINY_SD at latent 16: one transformer layer per attention block; 5 blocks at each of the levels 0-2
    # (2 down + 3 up) and 1 in the mid stage at level 3
    hand = attention_macs_by_hand([(5, 16 * 16, 16), (5, 8 * 8, 32), (5, 4 * 4, 64), (1, 2 * 2, 64)])
    assert result.unet.attention_macs == hand
    assert result.to_dict()["unet_macs_with_attention"] - result.to_dict()["unet_macs"] == hand
    units = result.units.set_index("name")
    assert units.loc["down_blocks.0.attentions.0", "attention_macs"] == attention_macs_by_hand([(1, 256, 16)])
    assert units.loc["down_blocks.0.resnets.0", "attention_macs"] == 0


def test_attention_macs_agree_with_torch_flop_counter(sd):
    fn, args = unet_call(sd.unet, 16, device="cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn(sd.unet, *args)
    flops = counter.get_flop_counts()["Global"]
    assert sum(v for op, v in flops.items() if "bmm" in str(op)) // 2 == sd.report.unet.attention_macs


def test_attention_macs_of_sdxl_layers(sdxl):
    # TINY_SDXL at latent 16: level 1 (8x8, 32 ch) has 2 down + 3 up blocks of 2 layers; level 2 (4x4, 64 ch)
    # 2 down + 3 up blocks of 10 layers and the mid block's 10
    assert sdxl.report.unet.attention_macs == attention_macs_by_hand([(10, 64, 32), (60, 16, 64)])


# ------------------------------------------------------------------------------------- plans vs exports
def lone_units_plan(unet):
    keep = {u.name for u in walk(unet).atoms()} - {
        "down_blocks.1.resnets.0",
        "skip:up_blocks.2.resnets.0",
        "up_blocks.3.resnets.1",
    }
    return make_plan(
        unet,
        keep,
        source="tiny",
        actions={"down_blocks.1.resnets.0": "interpolate", "up_blocks.3.resnets.1": "interpolate"},
    )


@pytest.mark.parametrize(
    "config,plan_of",
    [
        (TINY_SD, lambda u: create_plan(u, "bk-tiny", source="tiny")),
        (TINY_SD, lone_units_plan),
        (TINY_SDXL, lambda u: create_plan(u, "vega", source="tiny")),
    ],
    ids=["bk-tiny", "lone-units", "vega"],
)
def test_report_of_a_plan_equals_report_of_the_exported_model(tmp_path, config, plan_of):
    loaded = as_loaded(tiny_unet(config))
    plan = plan_of(loaded.unet)
    planned = report(loaded, plan=plan, per_unit=True)
    apply_plan(loaded, plan, tmp_path / "out")
    exported = report(load_unet(tmp_path / "out"), per_unit=True)
    assert planned.unet.params < sum(p.numel() for p in loaded.unet.parameters())
    for key in ("unet_params", "unet_macs", "unet_attention_macs", "resolution"):
        assert planned.to_dict()[key] == exported.to_dict()[key]
    assert planned.units[UNIT_KEYS].equals(exported.units[UNIT_KEYS])


def test_report_of_a_plan_needs_no_weights(sd):
    plan = lone_units_plan(sd.unet)  # substitutes and a dropped skip: the hardest student to build on meta
    real, meta = report(as_loaded(sd.unet), plan=plan), report(as_loaded(meta_copy(TINY_SD)), plan=plan)
    assert real.to_dict() == meta.to_dict() and real.expressible is False


def test_compare_changes_against_the_first(sd_unet, tmp_path):
    loaded = as_loaded(sd_unet)
    plan_file = create_plan(sd_unet, "bk-tiny", source="tiny").save(tmp_path / "tiny.json")
    reports = compare(loaded, ["bk-small", str(plan_file)])
    frame = comparison_frame(reports)
    assert list(frame["variant"]) == ["base", "bk-small", str(plan_file)]
    base, small = reports[0].unet.macs, reports[1].unet.macs
    assert frame.loc[1, "unet_macs_G_change_pct"] == round(100 * (small - base) / base, 1)
    assert frame.loc[0, "unet_macs_G_change_pct"] == 0.0
    with pytest.raises(ValueError, match="neither a preset"):
        compare(loaded, ["bk-huge"])


# ---------------------------------------------------------------------------------------- components
def test_pipeline_components_and_whole_generation(tiny_pipeline_dir):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    result = report(load_unet(tiny_pipeline_dir), steps=3)
    te = CLIPTextModel.from_pretrained(tiny_pipeline_dir / "text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(tiny_pipeline_dir / "vae").eval()
    assert (result.resolution, result.latent) == (32, 16)  # the tiny VAE has 2 levels: factor 2
    te_macs, _ = thop.profile(te, (torch.zeros(1, TOKENS, dtype=torch.long),), verbose=False)
    vae_macs, _ = thop.profile(vae.decoder, (vae.post_quant_conv(torch.zeros(1, 4, 16, 16)),), verbose=False)
    post_quant = 16 * 16 * 4 * 4  # 1x1 conv 4 -> 4 on the latent
    d = result.to_dict()
    assert d["text_encoder_params"] == sum(p.numel() for p in te.parameters())
    assert d["text_encoder_macs"] == int(te_macs)
    assert d["vae_decoder_params"] == sum(
        p.numel() for p in [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    )
    assert d["vae_decoder_macs"] == int(vae_macs) + post_quant
    assert d["whole_params"] == d["text_encoder_params"] + d["unet_params"] + d["vae_decoder_params"]
    assert d["whole_macs"] == d["text_encoder_macs"] + 3 * d["unet_macs"] + d["vae_decoder_macs"]


def test_unet_folder_has_no_components(tiny_unet_dir):
    d = report(load_unet(tiny_unet_dir)).to_dict()
    assert d["text_encoder_params"] is None and d["whole_macs"] is None and d["unet_macs_total"] == 25 * d["unet_macs"]


# ------------------------------------------------------------------------------------------- latency
def test_latency_of_a_structure_only_model(sd_unet):
    meta = meta_copy(TINY_SD)
    settings = LatencySettings(device="cpu", runs=3, warmup=1, threads=1)
    result = report(as_loaded(meta), latency=settings)
    lat = result.latency
    assert len(lat.times_ms) == 3 and min(lat.times_ms) <= lat.median_ms <= max(lat.times_ms)
    assert (lat.device, lat.dtype, lat.target) == ("cpu (1 thread)", "float32", "unet_step")
    assert all(p.is_meta for p in meta.parameters())  # materialised on a copy
    assert result.to_dict()["latency_runs"] == 3


def test_generation_latency_of_a_pipeline(tiny_pipeline_dir):
    settings = LatencySettings(runs=1, warmup=0, target="generation")
    lat = report(load_unet(tiny_pipeline_dir), steps=2, latency=settings).latency
    assert lat.target == "generation_2_steps" and lat.times_ms[0] > 0


def test_bad_latency_settings():
    with pytest.raises(ValueError, match="dtype"):
        LatencySettings(dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            LatencySettings(device="cuda")


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_json_compare_and_per_unit(tiny_unet_dir, tmp_path, capsys):
    assert main(["report", "--model", str(tiny_unet_dir), "--format", "json"]) == 0
    single = json.loads(capsys.readouterr().out)
    for key in ("unet_params", "unet_macs", "unet_macs_with_attention", "steps", "unet_macs_total"):
        assert key in single
    plan = create_plan(load_unet(tiny_unet_dir).unet, "bk-base", source="tiny").save(tmp_path / "p.json")
    assert main(["report", "--model", str(tiny_unet_dir), "--compare", "bk-small", str(plan), "--per-unit"]) == 0
    out = capsys.readouterr().out
    assert "unet_macs_with_attention_G" in out and "per unit" in out and OTHER in out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("metric"))
    assert header.split() == ["metric", "base", "bk-small", str(plan)]
    macs_row = next(line for line in out.splitlines() if line.lstrip().startswith("unet_macs_G"))
    assert macs_row.count("%") == 2  # change against the first column


def test_cli_latency_and_errors(tiny_unet_dir, capsys):
    assert (
        main(["report", "--model", str(tiny_unet_dir), "--latency", "--runs", "2", "--warmup", "0", "--format", "csv"])
        == 0
    )
    assert "latency_median_ms" in capsys.readouterr().out
    assert main(["report", "--model", str(tiny_unet_dir), "--compare", "nope"]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["report", "--model", str(tiny_unet_dir), "--resolution", "100"]) == 2
    assert "multiple of the VAE factor 8" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ full size
@pytest.mark.slow
def test_sd_v1_against_bk_sdm_table_2():
    """Kim et al. 2023, Table 2 (thop, 512x512, one step): see the report module for where we differ."""
    reports = compare(load_unet("sd-v1", meta=True), ["bk-base", "bk-small", "bk-tiny"])
    d = [r.to_dict() for r in reports]
    assert [r["unet_params"] for r in d] == [859_520_964, 579_384_964, 482_346_884, 323_384_964]
    published_macs = [339.2e9, 223.8e9, 217.7e9, 205.8e9]
    assert all(abs(r["unet_macs"] - p) / p < 0.005 for r, p in zip(d, published_macs))
    assert d[0]["text_encoder_params"] == 123_060_480 and round(d[0]["text_encoder_macs"] / 1e9, 1) == 6.5
    assert d[0]["vae_decoder_params"] == 49_490_199 and round(d[0]["vae_decoder_macs"] / 1e9) == 1240


@pytest.mark.slow
def test_builtin_component_sizes():
    sizes = {spec.role: profile_component(spec, 8).params for spec in BUILTIN_COMPONENTS["sdxl"]}
    assert sizes == {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 49_490_199}
    assert profile_component(BUILTIN_COMPONENTS["sd-v2-base"][0], 8).params == 340_387_840
