"""Progressive removal (SSD-1B / Segmind-Vega) and LAPTOP-Diff's normalised feature KD.

The loss is checked against a hand computation; `progressive` runs end to end on the shipped `demo` pipeline at toy
sizes (K = 2, a few steps), its final student checked against the target and its plan against the teacher; a real
`prunelab progressive` process is killed and the same command resumes it to the same student, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from prune_lab.distill.losses import FEATURE_LOSSES, DistillationLoss, FeatureLoss, normalized_mse


# ------------------------------------------------------------------------------------------- normalised loss
def test_normalized_feature_loss_equals_hand_computation():
    s = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[[0.5, -1.0, 2.0]]])]
    t = [torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[[1.0, 1.0, 1.0]]])]
    # pair 1: errors 0, 4, 1, 4 -> 9; teacher squares 1, 0, 4, 4 -> 9; ratio 1.
    # pair 2: errors 0.25, 4, 1 -> 5.25; teacher squares 3; ratio 1.75.
    per_pair = FeatureLoss("normalized").per_pair(s, t)
    assert [float(v) for v in per_pair] == pytest.approx([1.0, 1.75])
    out, target, teacher_out = torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 3.0)
    terms = DistillationLoss(1.0, 0.5, 2.0, feature_loss="normalized")(out, target, teacher_out, s, t)
    # task 1, out 9 (unchanged by the option), feat 2.75
    assert float(terms.feat) == pytest.approx(2.75)
    assert float(terms.total) == pytest.approx(1.0 + 0.5 * 9.0 + 2.0 * 2.75)
    plain = DistillationLoss(1.0, 0.5, 2.0)(out, target, teacher_out, s, t)
    assert float(plain.feat) == pytest.approx(9 / 4 + 5.25 / 3)  # the default stays BK-SDM's MSE


def test_normalized_loss_is_scale_invariant_and_finite():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(normalized_mse(100 * s, 100 * t), normalized_mse(s, t))
    assert torch.isfinite(normalized_mse(s, torch.zeros_like(t)))
    with pytest.raises(ValueError, match="shapes"):
        normalized_mse(s, t[:1])


def test_feature_loss_choices_agree_and_bad_ones_are_refused():
    from prune_lab.cli.distill import FEATURE_LOSSES as CLI_CHOICES
    from prune_lab.distill.recipe import DistillConfig

    assert CLI_CHOICES == FEATURE_LOSSES
    with pytest.raises(ValueError, match="feature_loss 'l1'"):
        FeatureLoss("l1")
    with pytest.raises(ValueError, match="--feature-loss"):
        DistillConfig("demo", "s", "d", "o", feature_loss="l1").check()


# ------------------------------------------------------------------------------------------------- schedules
def test_fractions_shrink_to_the_target_exactly():
    from prune_lab.distill.progressive import fractions

    assert fractions(0.25, 2) == pytest.approx([0.5, 0.25])  # geometric: the same share (half) each round
    assert fractions(0.4, 3, "linear") == pytest.approx([0.8, 0.6, 0.4])
    assert fractions(0.56, 3)[-1] == 0.56 and fractions(0.56, 1) == [0.56]
    for bad, match in (((0.0, 2), "--target"), ((1.5, 2), "--target"), ((0.5, 0), "--rounds")):
        with pytest.raises(ValueError, match=match):
            fractions(*bad)
    with pytest.raises(ValueError, match="--schedule"):
        fractions(0.5, 2, "cosine")


# ---------------------------------------------------------------------------------------- student of student
def test_a_plan_searched_on_a_student_is_restated_against_the_teacher(sd_unet):
    from conftest import run_unet, unet_inputs

    from prune_lab.backbones import backbone_for, build_student, make_plan, walk
    from prune_lab.distill.compose import compose_plan, into_teacher_layout, origins, removed_atoms

    teacher, backbone = walk(sd_unet), backbone_for(sd_unet)
    pair = ("down_blocks.2.resnets.1", "down_blocks.2.attentions.1", "skip:up_blocks.1.resnets.1")
    pair += ("up_blocks.1.resnets.1", "up_blocks.1.attentions.1")
    move = next(m for m in backbone.moves(teacher) if m.members == pair)  # a down/up slot pair, as search removes
    first = {"down_blocks.1.attentions.0", "down_blocks.1.attentions.0.transformer_blocks.0", *move.atoms}
    keep = [u.name for u in teacher.atoms() if u.name not in first]
    actions = backbone.removal_actions(teacher, frozenset(first))
    plan1 = make_plan(sd_unet, keep, source="t", actions=actions, graph=teacher)
    student = build_student(sd_unet, plan1).student
    unit_map = backbone.unit_map
    with torch.no_grad():  # "training": the student's weights now differ from the teacher's
        for p in student.parameters():
            p.add_(0.01)
    sgraph = walk(student)
    mapped = origins(sgraph, teacher, unit_map(student))
    assert removed_atoms(teacher, plan1) == frozenset(first)
    assert set(mapped.values()) == {u.name for u in teacher.atoms()} - first  # every kept atom, once
    assert mapped["up_blocks.1.resnets.1"] == "up_blocks.1.resnets.2"  # the slot after the removed one moved up
    assert mapped["skip:up_blocks.1.resnets.1"] == "skip:up_blocks.1.resnets.2"
    substitutes = [u.name for u in sgraph.atoms() if u.name not in mapped]
    assert substitutes == ["down_blocks.1.attentions.0"]  # the lone removed attention's parameter-free stand-in
    second = ["mid_block.attentions.0", "mid_block.attentions.0.transformer_blocks.0"]
    plan2, gone = compose_plan(sd_unet, teacher, removed_atoms(teacher, plan1), mapped, second, source="t", meta={})
    assert gone == first | set(second)
    direct = make_plan(sd_unet, [u.name for u in teacher.atoms() if u.name not in gone], source="t", graph=teacher)
    assert plan2.keep == direct.keep
    full = into_teacher_layout(sd_unet, student, plan1, unit_map(student))
    inputs = unet_inputs(sd_unet)
    torch.testing.assert_close(run_unet(build_student(full, plan1).student, inputs), run_unet(student, inputs))
    with pytest.raises(ValueError, match="substitute"):
        compose_plan(sd_unet, teacher, gone, mapped, substitutes, source="t", meta={})


# ------------------------------------------------------------------------------------------------ end to end
def progressive_argv(data, out) -> list[str]:
    return [
        "progressive", "--model", "demo", "--data", str(data), "--target", "params=0.6", "--rounds", "2",
        "--criterion", "magnitude", "--steps-per-round", "2", "--out", str(out), "--batch-size", "2",
        "--grad-accum", "1", "--resolution", "32", "--num-workers", "0", "--no-progress", "--checkpoint-every", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from prune_lab.cli import main

    root = tmp_path_factory.mktemp("progressive-data")
    assert main(["demo-data", "--out", str(root / "data"), "-n", "8"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    """An uninterrupted K = 2 run on the demo pipeline."""
    from prune_lab.cli import main

    out = tmp_path_factory.mktemp("progressive-ref") / "run"
    assert main(progressive_argv(demo_data, out)) == 0
    return out


@pytest.mark.slow
def test_progressive_meets_the_target_relative_to_the_teacher(reference):
    import pandas as pd

    from prune_lab import load_pruned, load_unet, walk
    from prune_lab.plan import Plan, expand_keep, fingerprint

    teacher = load_unet("demo").unet
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student = load_pruned(reference / "student")
    params = sum(p.numel() for p in student.parameters())
    assert params <= 0.6 * teacher_params
    rounds = pd.read_csv(reference / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and rounds["params"].iloc[-1] == params
    assert rounds["budget_fraction"].tolist() == pytest.approx([0.6**0.5, 0.6])
    assert (rounds["params"] <= rounds["budget_fraction"] * teacher_params).all()
    assert (reference / "rounds.md").read_text().startswith("| round |")
    plan = Plan.load(reference / "student" / "plan.json")
    assert plan.base["fingerprint"] == fingerprint(teacher)  # relative to the original teacher
    graph = walk(teacher)
    kept = expand_keep(graph, plan.keep)
    first = expand_keep(graph, Plan.load(reference / "round-1" / "plan.json").keep)
    assert kept < first  # round 2 removed more, and only what round 1 kept
    unit_map = pd.read_json(reference / "student" / "unit_map.json", typ="series")
    assert {v for v in unit_map.values if v in graph} <= kept  # samplers are mapped too, but are no units
    assert all(teacher.get_submodule(v) is not None for v in unit_map.values)  # teacher module paths
    # the exported student is the last round's distilled one
    last = load_pruned(reference / "round-2" / "distill")
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), last.state_dict().values()))


@pytest.mark.slow
def test_progressive_killed_then_rerun_equals_uninterrupted(reference, demo_data, tmp_path):
    import pandas as pd
    from safetensors.torch import load_file
    from test_resume_after_kill import killed

    from prune_lab.cli import main

    out = tmp_path / "run"
    argv = progressive_argv(demo_data, out)
    killed(argv, tmp_path, lambda: (out / "round-2" / "distill" / "checkpoints" / "checkpoint-0000001").is_dir())
    assert not (out / "student").exists()
    assert main(argv) == 0  # the same command resumes
    pd.testing.assert_frame_equal(pd.read_csv(out / "rounds.csv"), pd.read_csv(reference / "rounds.csv"))
    weights = "student/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(reference / weights)), load_file(str(out / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # it reuses the reference run
def test_progressive_refuses_other_settings_on_resume(reference, demo_data, tmp_path, capsys):
    import shutil

    from prune_lab.cli import main

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    argv = progressive_argv(demo_data, out)
    argv[argv.index("--rounds") + 1] = "3"
    assert main(argv) == 2
    assert "--rounds 3 differs from 2" in capsys.readouterr().err
