"""`prunelab demo-run --quick` end to end on the shipped demo model: every criterion scores every unit, the plan
meets its budget on the exported student, the report names every step, and a rerun reuses every step's outputs."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pandas as pd
import pytest

from prune_lab.cli import main
from prune_lab.demo import PIPELINE_DIR
from prune_lab.demo.job import MODELS, QUICK, run_key
from prune_lab.demo.run import STEPS, run_demo

pytestmark = pytest.mark.skipif(
    not (PIPELINE_DIR / "unet" / "config.json").is_file(), reason="demo weights not installed"
)

PRODUCED = ("scores.csv", "plan.json", "pruned/plan.json", "distilled/done.json", "eval/teacher.pt", "eval.csv")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-run")
    out, work = root / "out", root / "work"
    argv = ["demo-run", "--quick", "--threads", "1", "--quiet", "--out", str(out), "--work", str(work)]
    assert main(argv) == 0
    (folder,) = list(work.iterdir())  # one run folder, named by run_key
    return out, work, folder


def test_every_criterion_scores_every_block_and_skip(quick_run):
    from prune_lab.backbones import walk
    from prune_lab.models import load_unet
    from prune_lab.scoring import list_criteria, read_scores

    _, _, folder = quick_run
    scores = read_scores(folder / "scores.csv")
    graph = walk(load_unet("demo", meta=True).unet)
    expected = {u.name for u in graph.of_kind("resnet", "attention", "skip")}
    assert sorted(scores["criterion"].unique()) == list_criteria("unet")
    for criterion, part in scores.groupby("criterion"):
        assert sorted(part["name"]) == sorted(expected), criterion
        assert part["importance"].map(math.isfinite).all()
        assert sorted(part["rank"]) == list(range(1, len(expected) + 1))


def test_plan_meets_its_budget_on_the_exported_student(quick_run):
    from prune_lab.formats import load_pruned
    from prune_lab.models import load_unet
    from prune_lab.plan import Plan

    _, _, folder = quick_run
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    teacher = params(load_unet("demo").unet)
    student, distilled = params(load_pruned(folder / "pruned")), params(load_pruned(folder / "distilled"))
    meta = Plan.load(folder / "plan.json").meta
    assert meta["search"]["target"] == QUICK.budget == "params=0.6"
    assert meta["search"]["criterion"] == QUICK.plan_criterion
    assert student == distilled == meta["student_params"] <= 0.6 * teacher
    assert meta["base"]["params"] == teacher


def test_evaluation_table(quick_run):
    _, _, folder = quick_run
    table = pd.read_csv(folder / "eval.csv").set_index("model")
    assert list(table.index) == [*MODELS, "real"]
    for column in ("colour", "shape", "colour+shape"):
        p = table[column]
        assert p.between(0, 1).all()
        assert ((p * (1 - p) / QUICK.eval_samples) ** 0.5 - table[f"{column}_se"]).abs().max() < 1e-9
    assert (table["colour+shape"] <= table[["colour", "shape"]].min(axis=1) + 1e-12).all()
    assert table.loc["pruned", "unet_params_M"] < table.loc["teacher", "unet_params_M"]
    assert table.loc["pruned", "unet_params_M"] == table.loc["distilled", "unet_params_M"]
    assert pd.isna(table.loc["real", "unet_params_M"]) and table["fid"].isna().all()  # --quick: no FID


def test_report_names_every_step_and_its_figures_exist(quick_run):
    out, _, _ = quick_run
    text = (out / "README.md").read_text()
    assert "prunelab demo-run --out" in text and "--quick" in text
    for step in STEPS:
        assert re.search(rf"^\| {step} \| ran \| [0-9.]+ \|", text, re.M), step
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"scores.png", "scores_skips.png", "samples.png", "distill_loss.png"} <= set(figures)
    assert all((out / f).stat().st_size > 1000 for f in figures)


def test_rerun_reuses_every_step_and_resumes_a_killed_evaluation(quick_run):
    out, work, folder = quick_run
    before = {p: (folder / p).stat().st_mtime_ns for p in PRODUCED}
    result = run_demo(QUICK, work, out, progress=False)
    assert result.job.work == folder
    status = dict(zip(result.job.record_frame()["step"], result.job.record_frame()["status"]))
    assert status == {**{s: "reused" for s in STEPS}, "report": "ran"}
    assert {p: (folder / p).stat().st_mtime_ns for p in PRODUCED} == before

    # a run killed while evaluating: the evaluation table and the last model's images are missing
    (folder / "eval.csv").unlink()
    (folder / "eval" / "distilled.pt").unlink()
    result = run_demo(QUICK, work, out, progress=False)
    status = dict(zip(result.job.record_frame()["step"], result.job.record_frame()["status"]))
    assert status["evaluate"] == "ran" and status["distill"] == "reused"
    assert (folder / "eval" / "teacher.pt").stat().st_mtime_ns == before["eval/teacher.pt"]
    assert (folder / "eval" / "distilled.pt").is_file()


def test_run_key_follows_settings():
    assert run_key(QUICK, "w") == run_key(replace(QUICK), "w")
    assert run_key(QUICK, "w") != run_key(replace(QUICK, distill_steps=3), "w")
    assert run_key(QUICK, "w") != run_key(QUICK, "retrained")


@pytest.mark.parametrize(
    "flags, message",
    [(["--budget", "params=2x"], "params=2x"), (["--criterion", "magnitud"], "magnitud")],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, flags, message):
    assert main(["demo-run", "--quick", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_importance_summary_by_hand():
    from prune_lab.demo.job import importance_summary

    scores = pd.DataFrame(
        {
            "criterion": ["a", "a", "a", "b", "b"],
            "name": ["x", "y", "z", "x", "y"],
            "importance": [4.0, 0.5, 2.0, 1.0, -1.0],
        }
    )
    table = importance_summary(scores).set_index("criterion")
    assert table.loc["a", ["most", "least", "max_min_ratio", "non_positive"]].tolist() == ["x", "y", 8.0, 0]
    assert table.loc["b", "most"] == "x" and math.isnan(table.loc["b", "max_min_ratio"])
    assert table.loc["b", "non_positive"] == 1


def test_caption_accuracy_by_hand():
    from prune_lab.demo.run_eval import caption_accuracy
    from prune_lab.demo.world import World

    scenes = World(0).scenes("heldout", 0, 4)
    colours = [s.colour for s in scenes[:3]] + ["wrong"]  # 3 of 4 right
    shapes = ["wrong"] * 2 + [s.shape for s in scenes[2:]]  # 2 of 4 right, both right only on scene 2

    class Fixed:
        def classify(self, images):
            return {"colour": colours, "shape": shapes}

    table = caption_accuracy(Fixed(), None, scenes).set_index("attribute")
    assert table["accuracy"].to_dict() == {"colour": 0.75, "shape": 0.5, "colour+shape": 0.25}
    assert table.loc["shape", "stderr"] == pytest.approx(math.sqrt(0.25 / 4))
