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


def _round_one(problem) -> tuple[frozenset[str], dict[str, str]]:
    """A first round of every kind later rounds must restate: a down/up slot pair whose up slot is not its stage's
    last (the later consumers renumber), the attention of a later slot of that up stage alone (its stand-in stays
    beside a real resnet) and an up resnet alone whose attention stays (its stand-in keeps the skip).

    Returns:
        (the atoms removed, role -> the teacher unit it names: `pair_up`, `moved` (the slot after the pair's up
        slot), `attention`, `resnet`).
    """
    graph, removed, roles = problem.graph, frozenset(), {}

    def take(kind: str, fits) -> str:
        nonlocal removed
        move = next(
            m
            for m in problem.moves
            if m.kind == kind and fits(m) and not m.atoms & removed and problem.valid(removed | m.atoms)
        )
        removed |= move.atoms
        return move.members[-1] if kind == "pair" else move.members[0]

    def up(name: str) -> tuple[str, int]:
        stage, _, j = name.rpartition(".")
        return stage.rsplit(".", 1)[0], int(j)

    def later_slot_has_attention(m) -> bool:
        stage, j = up(m.members[-1])
        return f"{stage}.attentions.{j + 2}" in graph

    pair_up = take("pair", later_slot_has_attention)  # the up slot's attention (or resnet) closes the members
    stage, j = up(pair_up)
    roles["pair_up"], roles["moved"] = f"{stage}.resnets.{j}", f"{stage}.resnets.{j + 1}"
    roles["attention"] = take("attention", lambda m: m.members == (f"{stage}.attentions.{j + 2}",))
    roles["resnet"] = take(  # in another up stage
        "resnet",
        lambda m: (
            m.members[0].startswith("up_")
            and up(m.members[0])[0] != stage
            and m.members[0].replace("resnets", "attentions") in graph
        ),
    )
    return removed, roles


@pytest.mark.parametrize("unet_fixture", ["sd_unet", "sdxl_unet"])
def test_round_two_searches_restate_as_valid_teacher_plans(unet_fixture, request):
    """Regression: `progressive` failed in round 2 with "skip:... is kept but its consumer ... is removed" when the
    search on the student removed a resnet beside the stand-in of an attention removed in round 1 (valid on the
    student, whose stand-in keeps the slot; no plan of the teacher says it). The restated search refuses exactly
    such removals; everything it admits composes into a valid teacher plan removing exactly the mapped atoms, with
    the costs of the student's own plan."""
    from conftest import run_unet, unet_inputs
    from test_distill_pairs import _magnitude_scores

    from prune_lab.backbones import backbone_for, build_student, walk
    from prune_lab.distill.compose import (
        Restatement,
        compose_plan,
        into_teacher_layout,
        origins,
        removed_atoms,
        restated_problem,
    )
    from prune_lab.runtime.budget import Budget
    from prune_lab.search import build_problem, search

    model = request.getfixturevalue(unet_fixture)
    teacher_problem = build_problem(model, _magnitude_scores(model), source="t")
    teacher = teacher_problem.graph
    first, roles = _round_one(teacher_problem)
    plan1 = teacher_problem.plan(first)
    student = build_student(model, plan1).student
    sgraph, umap = walk(student), backbone_for(student).unit_map(student)
    mapped = origins(sgraph, teacher, umap)
    name = {t: s for s, t in umap.items()}  # teacher module -> student module
    before = removed_atoms(teacher, plan1)
    assert before == first

    # skips follow their renumbered consumers; the consumer's weights are the teacher's it is mapped to
    moved = name[roles["moved"]]
    assert moved == roles["pair_up"]  # the slot after the removed one took its index
    assert mapped[f"skip:{moved}"] == f"skip:{roles['moved']}"
    for s, t in mapped.items():
        if not s.startswith("skip:"):
            a, b = student.get_submodule(s).state_dict(), model.get_submodule(t).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k][tuple(map(slice, a[k].shape))]) for k in a)
    assert set(mapped.values()) == {u.name for u in teacher.atoms()} - first - {f"skip:{roles['resnet']}"}
    stand_ins = {u.name for u in sgraph.atoms() if u.name not in mapped}
    lone_resnet = name[roles["resnet"].replace("resnets", "attentions")].replace("attentions", "resnets")
    lone_attention = name[roles["attention"].replace("attentions", "resnets")].replace("resnets", "attentions")
    assert stand_ins == {lone_resnet, f"skip:{lone_resnet}", lone_attention}  # the skip of a stand-in stays too

    plain = build_problem(student, _magnitude_scores(student), keep_units=sorted(stand_ins), source="s")
    restatement = Restatement(model, teacher, before, mapped)
    restated = restated_problem(plain, restatement)
    none = frozenset()
    # the failing case: the real resnet beside the attention's stand-in (and, mirrored, the attention beside the
    # resnet's): valid on the student, the teacher's slot loses every member but keeps its skip
    for alone in (lone_attention.replace("attentions", "resnets"), lone_resnet.replace("resnets", "attentions")):
        move = next(m for m in plain.moves if m.members == (alone,))
        assert plain.admissible(none, move) is not None and restated.admissible(none, move) is None
        with pytest.raises(ValueError, match="is kept but its consumer"):
            compose_plan(model, teacher, before, mapped, move.atoms, source="t", meta={})
    # every single move the restated search admits composes, removing exactly the mapped teacher atoms
    admitted = [m for m in plain.moves if restated.admissible(none, m) is not None]
    assert {m.kind for m in admitted} >= {"pair", "attention", "resnet"}  # a skip alone: no block score
    for move in admitted:
        plan, gone = restatement.plan(move.atoms)
        assert gone == before | {mapped[a] for a in move.atoms} and removed_atoms(teacher, plan) == gone
    # both strategies, down to 70% of the teacher: the teacher plan, applied to the student's weights placed in the
    # teacher's layout (as the next round's export does), is the student's own plan: same weights, same outputs
    with torch.no_grad():  # "training": the student's weights now differ from the teacher's
        for p in student.parameters():
            p.add_(0.01)
    full, inputs = into_teacher_layout(model, student, plan1, umap), unet_inputs(model)
    limit = 0.7 * sum(p.numel() for p in model.parameters())
    for strategy in ("greedy", "exact"):
        found = search(restated, Budget("params", limit, False, "params=0.7"), strategy)
        assert found.predicted["params"] <= limit
        plan, gone = restatement.plan(found.removed)
        assert removed_atoms(teacher, plan) == before | {mapped[a] for a in found.removed}
        ours, theirs = build_student(student, found.plan).student, build_student(full, plan).student
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        torch.testing.assert_close(run_unet(theirs, inputs), run_unet(ours, inputs))


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
