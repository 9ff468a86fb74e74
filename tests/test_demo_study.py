"""BK-SDM in miniature (`prunelab demo-study`): the statistics against hand computations, bad input, and one tiny
end-to-end run on the shipped demo teacher that resumes without redoing anything."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from prune_lab.cli import main
from prune_lab.demo.study import ARMS, StudyConfig, paired_differences, run_study, summarize, write_study_report


def _hits(colour, shape):
    return {"colour": np.array(colour, dtype=bool), "shape": np.array(shape, dtype=bool)}


def test_summary_rates_and_standard_errors_by_hand():
    correct = {"teacher": _hits([1, 1, 1, 0], [1, 0, 1, 1]), "student": _hits([1, 0, 0, 0], [1, 1, 0, 0])}
    frame = summarize(correct, {"teacher": 3_000_000, "student": 1_500_000}).set_index("model")
    assert frame.loc["teacher", "colour"] == 0.75 and frame.loc["teacher", "shape"] == 0.75
    assert frame.loc["teacher", "colour+shape"] == 0.5  # images 0 and 2
    assert frame.loc["teacher", "colour+shape_se"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    assert frame.loc["student", "colour+shape"] == 0.25 and frame.loc["student", "unet_params_M"] == 1.5


def test_paired_difference_uses_the_per_image_differences():
    correct = {"a": _hits([1, 1, 1, 0], [1, 0, 1, 1]), "b": _hits([1, 0, 0, 0], [1, 1, 0, 0])}
    row = paired_differences(correct, [("a", "b")]).iloc[0]
    d = np.array([1, 1, 1, 0]) * np.array([1, 0, 1, 1]) - np.array([1, 0, 0, 0]) * np.array([1, 1, 0, 0])
    assert d.tolist() == [0, 0, 1, 0]
    assert row["difference"] == 0.25 and row["se"] == pytest.approx(d.std(ddof=1) / 2) and row["n"] == 4


def test_arms_differ_only_in_loss_weights():
    assert ARMS["task"] == {"lambda_task": 1.0, "lambda_out": 0.0, "lambda_feat": 0.0}
    assert ARMS["task+out-kd+feat-kd"] == {"lambda_task": 1.0, "lambda_out": 1.0, "lambda_feat": 1.0}
    assert {frozenset(a) for a in ARMS.values()} == {frozenset({"lambda_task", "lambda_out", "lambda_feat"})}


def test_study_report_is_written_from_the_result_alone(tmp_path):
    correct = {
        "teacher": _hits([1, 1, 1, 0], [1, 0, 1, 1]),
        "bk-small (not retrained)": _hits([1, 0, 0, 0], [1, 1, 0, 0]),
        "bk-small + task": _hits([1, 1, 0, 0], [1, 1, 0, 1]),
    }
    params = {"teacher": 3_000_000, "bk-small (not retrained)": 1_500_000, "bk-small + task": 1_500_000}
    result = {
        "config": asdict(StudyConfig(arms=("task",))),
        "summary": summarize(correct, params),
        "differences": paired_differences(correct, [("bk-small + task", "bk-small (not retrained)")]),
        "losses": {"task": pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4], "task": [0.5, 0.4]})},
    }
    written = write_study_report(result, tmp_path / "out", "prunelab demo-study --arms task", 1.5)
    assert [p.name for p in written] == ["README.md", "results.json", "study.png"]
    readme = written[0].read_text()
    assert "Regenerate with `prunelab demo-study --arms task` (" in readme and "took 1.5 min" in readme
    assert "| teacher | 3.0 | 75.0% ± 21.7 |" in readme and "task 0.4500." in readme
    record = json.loads(written[1].read_text())
    assert "losses" not in record and record["summary"][0]["model"] == "teacher"
    assert record["differences"][0]["difference"] == pytest.approx(0.25)


def test_unknown_arm_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown arm"):
        StudyConfig(arms=("kd-only",)).check()
    code = main(["demo-study", "--arms", "kd-only", "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")])
    assert code == 2 and "unknown arm(s) kd-only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_tiny_study_runs_end_to_end_and_resumes(tmp_path):
    config = StudyConfig(arms=("task", "task+out-kd+feat-kd"), steps=2, batch_size=2, data_n=4, n=3)
    first = run_study(config, tmp_path, progress=False)
    summary = first["summary"].set_index("model")
    assert list(summary.index) == [
        "teacher",
        "bk-small (not retrained)",
        "bk-small + task",
        "bk-small + task+out-kd+feat-kd",
    ]
    teacher, student = summary["unet_params_M"].iloc[0], summary["unet_params_M"].iloc[1]
    assert student < 0.7 * teacher and (summary["unet_params_M"].iloc[1:] == student).all()
    for arm in config.arms:
        losses = first["losses"][arm]
        assert losses["step"].tolist() == [1, 2] and np.isfinite(losses["task"]).all()
    task, kd = first["losses"]["task"], first["losses"]["task+out-kd+feat-kd"]
    np.testing.assert_allclose(task["loss"], task["task"], rtol=1e-5)  # KD terms logged, weighted 0
    np.testing.assert_allclose(kd["loss"], kd["task"] + kd["out"] + kd["feat"], rtol=1e-5)
    assert (kd["feat"] > 0).all()
    record = json.loads((tmp_path / "quality" / "bk-small+task.json").read_text())
    assert len(record["correct"]["colour"]) == 3
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = run_study(config, tmp_path, progress=False)  # everything reused: no file rewritten
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    assert again["summary"].equals(first["summary"])
    with pytest.raises(ValueError, match="holds a study with other settings"):
        run_study(StudyConfig(arms=("task",), steps=3, batch_size=2, data_n=4, n=3), tmp_path, progress=False)
