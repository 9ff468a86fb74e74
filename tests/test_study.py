"""`prunelab study`: the arm grammar, the statistics against hand computations, the work folder's task claims, and
one tiny end-to-end study on the tiny pipeline that resumes without redoing anything."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from prune_lab.cli import main
from prune_lab.study.specs import loss_weights, parse_arm, parse_arms, parse_base
from prune_lab.study.stats import paired_difference, permutation_test, ranks, spearman
from prune_lab.study.work import claim, once, release


# ------------------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(
    "spec, name",
    [
        ("preset:bk-small", "preset:bk-small"),
        ("criterion:magnitude@params=0.56", "criterion:magnitude@params=0.56"),
        ("criterion:ablation@params=0.56,strategy=exact", "criterion:ablation@params=0.56,strategy=exact"),
        ("progressive:ablation@params=0.56,rounds=3", "progressive:ablation@params=0.56,rounds=3"),
        ("init:random", "preset:bk-small/init:random"),
        ("kd:task", "preset:bk-small/kd:task"),
        ("kd:out+task", "preset:bk-small/kd:task+out"),  # canonical order
        ("kd:task+out+feat/init:random", "preset:bk-small/init:random/kd:task+out+feat"),
        ("kd:norm-feat", "preset:bk-small/kd:task+out+norm-feat"),
        ("criterion:taylor@macs=0.5/kd:task", "criterion:taylor@macs=0.5/kd:task"),
        ("init:teacher", "preset:bk-small"),
    ],
)
def test_specs_parse_to_canonical_arms(spec, name):
    arm = parse_arm(spec, parse_base("preset:bk-small"))
    assert arm.name == name
    assert parse_arm(arm.name).name == name  # the canonical name parses back to itself


def test_arm_fields_and_loss_weights():
    arm = parse_arm("criterion:ablation@params=0.56,strategy=exact/init:random/kd:task+out")
    assert (arm.plan.kind, arm.plan.name, arm.plan.budget, arm.plan.strategy) == (
        "criterion",
        "ablation",
        "params=0.56",
        "exact",
    )
    assert arm.init == "random" and arm.losses == ("task", "out")
    assert loss_weights(arm.losses) == {"lambda_task": 1.0, "lambda_out": 1.0, "lambda_feat": 0.0}
    assert loss_weights(("task", "out", "norm-feat"))["lambda_feat"] == 1.0
    assert parse_arm("progressive:taylor@params=0.5,rounds=2").plan.rounds == 2
    assert not parse_arm("progressive:taylor@params=0.5,rounds=2").retrained_by_study
    assert len({parse_arm(s).slug for s in ("preset:a", "preset:a/kd:task", "preset:a/init:random")}) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("kd:task", "no plan term and no --base"),
        ("preset:bk-small/preset:bk-tiny", "two plan terms"),
        ("kd:task/kd:out", "two kd terms"),
        ("kd:task+task", "each at most once"),
        ("kd:feat+norm-feat", "choose one"),
        ("kd:bogus", "losses are"),
        ("init:zeros", "teacher or random"),
        ("bogus:x", "unknown term kind"),
        ("preset", "is not KIND:VALUE"),
        ("criterion:magnitude", "needs a criterion and a budget"),
        ("criterion:magnitude@params=2", "params"),
        ("criterion:magnitude@latency=10ms", "timed"),
        ("criterion:magnitude@params=0.5,rounds=2", "option 'rounds=2'"),
        ("progressive:magnitude@params=0.5", "rounds=K"),
        ("progressive:magnitude@params=0.5,rounds=0", "rounds=K"),
        ("progressive:magnitude@params=0.5,rounds=2/init:random", "starts from the teacher"),
        ("", "empty"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_spec(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_arm(spec)
    assert f"arm {spec!r}" in str(e.value) and "\n" not in str(e.value)


def test_duplicate_arms_and_bad_base_are_refused():
    with pytest.raises(ValueError, match="same arm"):
        parse_arms(["preset:bk-small", "kd:out+task", "preset:bk-small/kd:task+out"], "preset:bk-small")
    with pytest.raises(ValueError, match="--base 'kd:task' must be one plan term"):
        parse_arms(["preset:bk-small"], "kd:task")


# ---------------------------------------------------------------------------------------------------- statistics
def test_paired_difference_by_hand():
    row = paired_difference(np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0]))
    d = np.array([1.0, 0.0, 0.0, 1.0])
    assert row == {"difference": 0.5, "se": pytest.approx(d.std(ddof=1) / 2), "n": 4}
    with pytest.raises(ValueError, match="equal"):
        paired_difference(np.ones(3), np.ones(4))


def test_spearman_with_ties_by_hand():
    assert ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert spearman(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))  # no ties: 1 - 6 sum d^2 / n(n^2 - 1)
    assert spearman(x, -y) == pytest.approx(-0.8)
    assert math.isnan(spearman(x, np.ones(4)))


def test_exact_permutation_p_value_by_hand():
    # 3 arms, rho = 1: of the 6 orderings only the identity (rho 1) and the reversal (rho -1) reach |rho| = 1
    test = permutation_test(np.array([0.1, 0.2, 0.3]), np.array([5.0, 6.0, 7.0]))
    assert test["rho"] == pytest.approx(1.0) and test["p"] == pytest.approx(2 / 6) and test["exact"]
    # 4 arms, rho = 0.8: |rho| >= 0.8 for the orderings with sum d^2 <= 2 or >= 18: 3 + 3 of the 24
    x = np.array([1.0, 2.0, 3.0, 4.0])
    test = permutation_test(x, np.array([1.0, 3.0, 2.0, 4.0]))
    import itertools

    count = sum(abs(spearman(x, np.array(p))) >= 0.8 - 1e-12 for p in itertools.permutations([1.0, 2.0, 3.0, 4.0]))
    assert test["p"] == pytest.approx(count / 24) and count == 8
    sampled = permutation_test(np.arange(10.0), np.arange(10.0), draws=200)
    assert not sampled["exact"] and sampled["p"] == pytest.approx(1 / 201)  # no random ordering of 10 reaches rho 1
    assert math.isnan(permutation_test(np.ones(2), np.ones(2))["p"])


# ----------------------------------------------------------------------------------------------- work folder
def test_claims_skip_live_holders_and_take_over_dead_ones(tmp_path):
    marker = tmp_path / "task.done.json"
    (tmp_path / "task.done.json.lock").write_text(str(os.getppid()))  # a live process holds it
    assert not claim(marker) and not once(marker, lambda: {"ran": True}) and not marker.exists()
    (tmp_path / "task.done.json.lock").write_text("999999999")  # no such process
    assert once(marker, lambda: {"ran": True}) and json.loads(marker.read_text()) == {"ran": True}
    assert not (tmp_path / "task.done.json.lock").exists()
    assert once(marker, lambda: pytest.fail("a done task runs again"))
    assert claim(tmp_path / "other") and claim(tmp_path / "other")  # our own lock
    release(tmp_path / "other")


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory, tiny_pipeline_dir):
    from prune_lab.demo.world import World, write_folder

    root = tmp_path_factory.mktemp("study")
    write_folder(World(0), "train", 0, 4, root / "data")
    (root / "prompts.csv").write_text("file_name,text\na,a red circle\nb,a blue square\nc,a green triangle\n")
    return root, tiny_pipeline_dir


def _argv(root, model, work, out, arms):
    return [
        "study", "--model", str(model), "--data", str(root / "data"), "--prompts", str(root / "prompts.csv"),
        "--base", "preset:bk-small", "--arms", *arms, "--work", str(work), "--out", str(out), "--steps", "2",
        "--batch-size", "2", "--resolution", "32", "--no-flip", "--sample-steps", "2", "--sample-batch-size", "3",
        "--metric", "clip-score", "demo-accuracy", "--clip-model", "demo-clip", "--latency-runs", "1",
        "--checkpoint-every", "1", "--quiet",
    ]  # fmt: skip


#: the end-to-end study (teacher + 3 arms on the tiny pipeline) takes about 1-2 min on two shared cores
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(study_inputs, tmp_path_factory):
    root, model = study_inputs
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("report") / "out"
    arms = ["preset:bk-small", "criterion:magnitude@params=0.7,strategy=greedy", "kd:task"]
    assert main(_argv(root, model, work, out, arms)) == 0
    return work, out, arms


@slow
def test_tiny_study_results_match_the_per_prompt_values(finished):
    work, out, arms = finished
    record = json.loads((out / "results.json").read_text())
    keys = [m["model"] for m in record["models"]]
    assert keys == [
        "teacher",
        "before:preset:bk-small",
        "before:criterion:magnitude@params=0.7,strategy=greedy",
        "arm:preset:bk-small",
        "arm:criterion:magnitude@params=0.7,strategy=greedy",
        "arm:preset:bk-small/kd:task",
    ]
    values = record["per_prompt"]
    assert all(len(values[k]["clip-score:clip_score"]) == 3 for k in keys)
    for row in record["differences"]:  # every paired difference from the per-prompt values by hand
        d = np.array(values[row["a"]][row["value"]]) - np.array(values[row["b"]][row["value"]])
        assert row["difference"] == pytest.approx(d.mean()) and row["n"] == 3
        assert row["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    pairs = {(r["a"], r["b"]) for r in record["differences"]}
    assert ("arm:preset:bk-small/kd:task", "before:preset:bk-small") in pairs
    assert ("arm:preset:bk-small/kd:task", "arm:preset:bk-small") in pairs
    joint = values["teacher"]["demo-accuracy:colour+shape"]
    assert joint == [
        c * s for c, s in zip(values["teacher"]["demo-accuracy:colour"], values["teacher"]["demo-accuracy:shape"])
    ]
    models = pd.DataFrame(record["models"]).set_index("model")
    assert models.loc["arm:preset:bk-small", "unet_params_M"] < 0.7 * models.loc["teacher", "unet_params_M"]
    assert (
        models.loc["arm:criterion:magnitude@params=0.7,strategy=greedy", "unet_params_M"]
        <= 0.7 * models.loc["teacher", "unet_params_M"] + 0.01
    )
    assert (models["latency_median_ms"] > 0).all()
    lost = pd.DataFrame(record["importance"])
    assert set(lost["criterion"]) == {"magnitude"} and (lost["lost"] > 0).all()
    by_arm = lost.set_index("arm")["lost"]
    assert by_arm["preset:bk-small"] == by_arm["preset:bk-small/kd:task"]  # the same plan
    plan = json.loads((work / "students").glob("criterion*/plan.json").__next__().read_text())
    assert by_arm["criterion:magnitude@params=0.7,strategy=greedy"] == pytest.approx(plan["meta"]["importance_lost"])
    readme = (out / "README.md").read_text()
    assert "Regenerate with `prunelab study --model" in readme and "--steps 2" in readme and "kd:task" in readme
    assert (out / "study.png").stat().st_size > 0


@slow
def test_study_resumes_reusing_every_arm_and_adds_new_ones(finished, study_inputs, tmp_path):
    work, out, arms = finished
    root, model = study_inputs
    before = json.loads((out / "results.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    assert main(_argv(root, model, work, tmp_path / "again", arms)) == 0  # everything reused: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == stamps
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["per_prompt"] == before["per_prompt"] and again["differences"] == before["differences"]
    assert again["models"] == before["models"]  # costs (latency included) are measured once
    # a killed retraining: its marker and export gone, the checkpoint kept -> the rerun gives the same student
    arm = next((work / "arms").glob("preset_bk-small_kd_task-*.done.json"))
    measured = next((work / "measure").glob("arm_preset_bk-small_kd_task-*.json"))
    first = json.loads(measured.read_text())["values"]
    shutil.rmtree(work / "images" / measured.stem)
    (costs,) = (work / "costs").glob("*.json")
    for path in (arm, measured, costs):
        path.unlink()
    assert main(_argv(root, model, work, tmp_path / "resumed", arms)) == 0
    np.testing.assert_allclose(
        json.loads(measured.read_text())["values"]["clip-score:clip_score"], first["clip-score:clip_score"], rtol=1e-5
    )
    kept = {p: t for p, t in stamps.items() if p.exists() and "kd_task" not in str(p) and "costs" not in str(p)}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    # an arm joining the finished study: only it is retrained and measured, and the costs cover it (a new table)
    assert main(_argv(root, model, work, tmp_path / "more", [*arms, "kd:task+out"])) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    models = pd.DataFrame(json.loads((tmp_path / "more" / "results.json").read_text())["models"]).set_index("model")
    assert (
        models.loc["arm:preset:bk-small/kd:task+out", "unet_params_M"]
        == models.loc["arm:preset:bk-small", "unet_params_M"]
    )
    assert models["latency_median_ms"].notna().all() and len(list((work / "costs").glob("*.json"))) == 2


@slow
def test_another_setting_in_the_same_work_folder_is_refused(finished, study_inputs, tmp_path, capsys):
    work, _, arms = finished
    root, model = study_inputs
    argv = _argv(root, model, work, tmp_path / "o", arms)
    argv[argv.index("--steps") + 1] = "3"
    assert main(argv) == 2
    assert "holds a study with other settings" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_regenerating_command_parses_back_to_the_same_settings(tmp_path):
    import shlex

    from prune_lab.cli import build_parser
    from prune_lab.cli.study import command

    argv = _argv(tmp_path, tmp_path / "model", tmp_path / "w", tmp_path / "o", ["preset:bk-small", "kd:task"])
    args = build_parser().parse_args([*argv, "--jobs", "2"])
    line = command(args, args.defaults)
    assert line.startswith("prunelab study --model ") and "--defaults" not in line and "--jobs" not in line
    again = build_parser().parse_args(shlex.split(line)[1:])
    drop = ("func", "defaults", "quiet", "jobs")
    assert {k: v for k, v in vars(again).items() if k not in drop} == {
        k: v for k, v in vars(args).items() if k not in drop
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (("--arms", "preset:bk-small", "bogus:x"), "argument --arms: arm 'bogus:x': unknown term kind"),
        (("--base", "kd:task"), "argument --base: --base 'kd:task' must be one plan term"),
        (("--metric", "bogus"), "--metric: unknown study metric 'bogus'"),
        (("--metric", "fid"), "--metric fid needs --reference"),
        (("--arms", "criterion:bogus@params=0.5"), "unknown criterion 'bogus'"),
        (("--arms", "criterion:magnitude@params=0.5,strategy=bogus"), "bogus"),
        (("--arms", "progressive:magnitude@params=0.5,rounds=3"), "not divisible by rounds=3"),
        (("--steps", "0"), "argument --steps: must be >= 1"),
        (("--jobs", "0"), "argument --jobs: must be >= 1"),
        (("--prompts", "/nonexistent/p.csv"), "--prompts /nonexistent/p.csv does not exist"),
    ],
)
def test_bad_flags_are_one_line_errors_and_write_nothing(study_inputs, tmp_path, capsys, change, message):
    root, model = study_inputs
    argv = _argv(root, model, tmp_path / "w", tmp_path / "o", ["preset:bk-small"])
    flag, *values = change
    if flag not in argv:
        argv.append(flag)
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    argv[i + 1 : j] = values
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


@slow
def test_progressive_arm_runs_the_progressive_command(study_inputs, tmp_path):
    root, model = study_inputs
    arms = ["progressive:magnitude@params=0.7,rounds=2"]
    argv = _argv(root, model, tmp_path / "w", tmp_path / "o", arms)
    assert main([*argv, "--no-before"]) == 0
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [m["model"] for m in record["models"]] == ["teacher", "arm:progressive:magnitude@params=0.7,rounds=2"]
