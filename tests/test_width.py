"""Width pruning through torch-pruning (prune_lab/width, `prunelab width`) on the tiny SD pipeline, and its use by
`report --compare`, `distill` (1x1 feature projections) and `generate`."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import TINY_SD, TINY_SDXL, run_unet, tiny_ldm_unet, tiny_unet, unet_inputs
from diffusers.models.attention_processor import Attention
from test_distill import write_image_folder

from prune_lab import build_student, create_plan, load_pruned, load_unet
from prune_lab.cli import main
from prune_lab.distill.features import feature_pairs
from prune_lab.distill.files import load_student
from prune_lab.distill.projection import ChannelProjection, FeatureProjections, feature_projections
from prune_lab.distill.recipe import DistillConfig, DistillRecipe
from prune_lab.formats import PRUNED_MARKER
from prune_lab.report import compare, comparison_frame
from prune_lab.runtime.loading import LoadedModel
from prune_lab.runtime.schedule import noise_scheduler
from prune_lab.scoring.calibration import Calibration, synthetic_calibration
from prune_lab.width import (
    WIDTH_CRITERIA,
    Target,
    TaylorSettings,
    is_width_pruned,
    layer_widths,
    save_width,
    width_prune,
)
from prune_lab.width.criteria import accumulate_gradients, schedule
from prune_lab.width.groups import build_pruner, channel_groups


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def bk_small_fraction(tiny_pipeline_dir) -> float:
    """bk-small's parameter fraction on the tiny U-Net: the width plan is pruned to the same budget."""
    teacher = load_unet(tiny_pipeline_dir, meta=True).unet
    student = build_student(teacher, create_plan(teacher, "bk-small", source="tiny")).student
    return params(student) / params(teacher)


@pytest.fixture(scope="module")
def width_dir(tmp_path_factory, tiny_pipeline_dir, bk_small_fraction):
    """`prunelab width` on the tiny pipeline, to bk-small's parameter count (magnitude, multiples of 8)."""
    out = tmp_path_factory.mktemp("width") / "w"
    argv = [
        "width",
        "--model",
        tiny_pipeline_dir,
        "--criterion",
        "magnitude",
        "--target",
        f"params={bk_small_fraction:.4f}",
        "--round-to",
        "8",
        "--out",
        out,
        "--format",
        "json",
        "--quiet",
    ]
    assert main([str(a) for a in argv]) == 0
    return out


def provenance(folder) -> dict:
    return json.loads((folder / "unet" / PRUNED_MARKER).read_text())["width_pruning"]


# --------------------------------------------------------------------------------------------- structure
def test_target_met_within_rounding(width_dir, bk_small_fraction):
    info, model = provenance(width_dir), load_pruned(width_dir)
    budget = int(bk_small_fraction * info["base_params"])
    assert info["params"] == params(model) == info["estimated_params"]  # the budget search's estimate is exact
    assert info["params"] <= budget < info["wider_params"]  # the widest uniform plan the rounding allows
    assert info["params"] < info["base_params"] and 0.0 < info["ratio"] < 1.0


def test_forward_runs_and_output_shape_is_unchanged(width_dir, tiny_pipeline_dir):
    teacher, student = load_unet(tiny_pipeline_dir).unet, load_pruned(width_dir)
    inputs = unet_inputs(teacher, batch=2)
    out = run_unet(student, inputs)
    assert out.shape == run_unet(teacher, inputs).shape == (2, 4, 16, 16)
    assert torch.isfinite(out).all()


def test_groupnorm_heads_rounding_and_ends_hold(width_dir, tiny_pipeline_dir):
    teacher, student = load_unet(tiny_pipeline_dir).unet, load_pruned(width_dir)
    norms = [m for m in student.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 == m.weight.shape[0] - m.num_channels for m in norms)
    assert any(m.num_channels < 64 for m in norms)
    heads = {n: m.heads for n, m in teacher.named_modules() if isinstance(m, Attention)}
    for name, attn in student.named_modules():
        if isinstance(attn, Attention):
            inner = attn.to_q.out_features
            assert attn.heads == heads[name] and inner % attn.heads == 0
            assert attn.to_k.out_features == attn.to_v.out_features == attn.to_out[0].in_features == inner
    before = layer_widths(teacher)
    for name, widths in layer_widths(student).items():
        changed = [v for k, v in widths.items() if v != before[name][k]]
        assert all(v % 8 == 0 for v in changed), (name, widths)
    assert student.conv_in.in_channels == 4 and student.conv_out.out_channels == 4
    assert student.down_blocks[0].downsamplers[0].channels == student.down_blocks[0].downsamplers[0].conv.in_channels


def test_folder_works_like_an_apply_export(width_dir, tiny_pipeline_dir):
    assert is_width_pruned(width_dir) and (width_dir / "model_index.json").exists()  # pipeline parts came along
    loaded = load_unet(width_dir)
    assert loaded.is_pipeline and params(loaded.unet) == provenance(width_dir)["params"]
    plan = json.loads((width_dir / "plan.json").read_text())
    assert plan["meta"]["width_pruned"] and len(plan["keep"]) == 75  # every unit kept
    unit_map = json.loads((width_dir / "unit_map.json").read_text())
    assert unit_map["up_blocks.2.resnets.1"] == "up_blocks.2.resnets.1"


def test_cli_rejects_bad_input(tmp_path, capsys, width_dir, tiny_pipeline_dir):
    cases = [
        (["--target", "flops=0.5"], "metric 'flops' is not supported"),
        (["--target", "params=1.5"], "fraction must be in (0, 1)"),
        (["--criterion", "taylor"], "needs calibration data"),
    ]
    for extra, message in cases:
        assert main(["width", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "x"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["width", "--model", str(tiny_pipeline_dir), "--out", str(width_dir)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already width-pruned"):
        width_prune(load_pruned(width_dir))
    with pytest.raises(ValueError, match="METRIC=FRACTION"):
        Target.parse("0.5")


# ------------------------------------------------------------------------------- taylor and persistence
@pytest.fixture(scope="module")
def taylor(tmp_path_factory):
    """Diff-Pruning's Taylor criterion on the tiny U-Net (synthetic calibration, 3 timesteps), saved and reloaded."""
    unet = tiny_unet(TINY_SD)
    inputs = unet_inputs(unet, batch=2)
    calib = synthetic_calibration(unet, samples=2, seed=0)
    result = width_prune(
        unet,
        criterion="taylor",
        target=Target("params", 0.6),
        round_to=None,
        calibration=calib,
        scheduler=noise_scheduler(),
        taylor=TaylorSettings(timesteps=3, batch_size=2),
    )
    out = tmp_path_factory.mktemp("taylor") / "t"
    save_width(result.unet, LoadedModel(result.unet, "tiny", "unet"), out, provenance=result.summary())
    return SimpleNamespace(result=result, inputs=inputs, output=run_unet(result.unet, inputs), folder=out)


def test_save_load_round_trip_reproduces_outputs_exactly(taylor):
    back = load_pruned(taylor.folder)
    assert layer_widths(back) == layer_widths(taylor.result.unet)
    assert torch.equal(run_unet(back, taylor.inputs), taylor.output)
    assert not any(p.requires_grad or p.grad is not None for p in taylor.result.unet.parameters())


def test_taylor_visits_the_timesteps_in_order(taylor):
    grads = taylor.result.gradients
    assert grads.timesteps == [0, 500, 999] == schedule(1000, 3)
    assert len(grads.losses) == 3 and not grads.stopped_early
    assert taylor.result.params <= 0.6 * taylor.result.base_params < taylor.result.wider_params


class _ScaledIdentity(nn.Module):
    """ε̂ = w·x_t: its denoising loss falls with t (x_t tends to ε), so the threshold has somewhere to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, sample, timestep, **kwargs):
        return SimpleNamespace(sample=self.w * sample)


def test_gradient_pass_sums_timesteps_and_stops_at_the_threshold():
    model, scheduler = _ScaledIdentity(), noise_scheduler()
    x0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    calib = Calibration(x0, None)
    settings = TaylorSettings(timesteps=11, threshold=0.05, batch_size=1, seed=3)
    trace = accumulate_gradients(model, calib, scheduler, settings)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    losses, grad = [], 0.0
    for t in schedule(1000, 11):  # by hand: L_t = mean((x_t - ε)²), dL/dw at w = 1 is mean(2 (x_t - ε) x_t)
        xt = scheduler.add_noise(x0, eps, torch.full((2,), t))
        losses.append(float(((xt - eps) ** 2).mean()))
        grad += float((2 * (xt - eps) * xt).mean())
        if losses[-1] < 0.05 * max(losses):
            break
    assert trace.stopped_early and len(trace.timesteps) == len(losses) < 11
    assert trace.losses == pytest.approx(losses, rel=1e-5)
    assert float(model.w.grad) == pytest.approx(grad, rel=1e-5)


@pytest.fixture(scope="module")
def traced():
    unet = tiny_unet(TINY_SD).requires_grad_(True)
    pruner = build_pruner(unet, WIDTH_CRITERIA["magnitude"].importance())
    inputs = unet_inputs(unet, batch=1)
    unet(**inputs).sample.square().mean().backward()  # gradients for the taylor criterion
    return unet, pruner, channel_groups(pruner, round_to=8)


@pytest.mark.parametrize("name", list(WIDTH_CRITERIA))
def test_every_criterion_scores_every_channel(name, traced):
    _, _, groups = traced
    importance = WIDTH_CRITERIA[name].importance()
    for group, full in groups[:6]:
        scores = importance(full)
        assert scores.shape == (group.channels,) and torch.isfinite(scores).all()


# -------------------------------------------------------------------------------------------- consumers
def test_report_compares_a_block_plan_and_the_width_plan(width_dir, tiny_pipeline_dir, capsys):
    loaded = load_unet(tiny_pipeline_dir, meta=True)
    reports = compare(loaded, ["bk-small", str(width_dir)])
    frame = comparison_frame(reports).set_index("variant")
    block, width = frame.loc["bk-small"], frame.loc[str(width_dir)]
    assert reports[2].unet.params == provenance(width_dir)["params"]
    assert abs(width["unet_params_M"] - block["unet_params_M"]) <= 0.05 * frame.loc["base", "unet_params_M"]
    assert width["unet_macs_G"] < frame.loc["base", "unet_macs_G"]
    assert (
        main(
            [
                "report",
                "--model",
                str(tiny_pipeline_dir),
                "--compare",
                "bk-small",
                str(width_dir),
                "--latency",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--format",
                "markdown",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for text in ("| metric | base | bk-small |", str(width_dir), "unet_params_M", "unet_macs_G", "latency_median_ms"):
        assert text in table
    latency = next(line for line in table.splitlines() if line.startswith("| latency_median_ms |"))
    assert len([cell for cell in latency.split("|")[2:-1] if cell.strip()]) == 3  # base, bk-small, width


def test_feature_projections_only_where_widths_differ(width_dir, tiny_pipeline_dir):
    teacher = load_unet(tiny_pipeline_dir).unet
    bundle = load_student(width_dir, teacher)
    pairs = feature_pairs(teacher, bundle.unet, bundle.resolution, bundle.unit_map)
    projections = feature_projections(teacher, bundle.unet, pairs)
    assert projections is not None and 0 < len(projections.projections) <= len(pairs)
    assert feature_projections(teacher, copy.deepcopy(teacher), pairs) is None  # a block student: nothing to add
    x = torch.randn(2, 8, 3, 3)
    proj = ChannelProjection(8, 12)
    torch.testing.assert_close(
        proj(x), torch.einsum("oc,bchw->bohw", proj.linear.weight, x) + proj.linear.bias[:, None, None]
    )
    assert proj(torch.randn(2, 5, 8)).shape == (2, 5, 12)
    assert FeatureProjections([None, (8, 12)])([x, x])[0] is x


def test_distill_trains_a_width_student(width_dir, tiny_pipeline_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", n=4, corrupt=False)
    cfg = DistillConfig(
        teacher=str(tiny_pipeline_dir),
        student=str(width_dir),
        data=str(images),
        out=str(tmp_path / "run"),
        max_steps=2,
        batch_size=2,
        grad_accum=1,
        resolution=32,
        num_workers=0,
        checkpoint_every=2,
        progress=False,
    )
    recipe = DistillRecipe(cfg)
    result = recipe.run()
    assert result.step == 2 and all(torch.isfinite(torch.tensor(list(result.last.values()))))
    assert recipe.projections is not None and result.last["feat"] > 0
    trained = load_pruned(tmp_path / "run")
    assert layer_widths(trained) == layer_widths(load_pruned(width_dir)) and is_width_pruned(tmp_path / "run")
    assert not torch.equal(trained.conv_in.weight, load_pruned(width_dir).conv_in.weight)


def test_generate_runs_the_width_pipeline(width_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n")
    argv = ["generate", "--model", width_dir, "--prompts", prompts, "--out", tmp_path / "imgs", "--steps", 2]
    assert main([str(a) for a in argv]) == 0
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 1


def test_unconditional_unet_keeps_attention_groupnorms_and_output(tmp_path):
    unet = tiny_ldm_unet()
    inputs = unet_inputs(unet, batch=2)
    result = width_prune(unet, target=Target("params", 0.5), round_to=None)
    assert result.params == result.estimated_params <= 0.5 * result.base_params < result.wider_params
    out = run_unet(result.unet, inputs)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    save_width(result.unet, LoadedModel(result.unet, "ldm", "unet"), tmp_path / "ldm")
    assert torch.equal(run_unet(load_pruned(tmp_path / "ldm"), inputs), out)


@pytest.mark.slow
def test_sdxl_topology_prunes_linear_projections_and_added_embeddings():
    unet = tiny_unet(TINY_SDXL)
    inputs = unet_inputs(unet, batch=2)
    result = width_prune(unet, target=Target("params", 0.5), round_to=8)
    assert result.params == result.estimated_params <= 0.5 * result.base_params < result.wider_params
    assert run_unet(result.unet, inputs).shape == (2, 4, 16, 16)
    assert result.unet.add_embedding.linear_1.in_features == TINY_SDXL["projection_class_embeddings_input_dim"]
