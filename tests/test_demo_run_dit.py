"""`prunelab demo-run --model demo-dit --quick` end to end on the shipped transformer: every criterion that applies
(similarity and clip included) scores every block, the plan meets its budget on the exported student, the findings
agree with a hand computation from the scores, and a rerun reuses every step with the same results."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pandas as pd
import pytest

from prune_lab.cli import main
from prune_lab.demo import DIT_DIR, DIT_SAMPLING
from prune_lab.demo.job import MODELS, QUICK, default_config
from prune_lab.demo.run import STEPS, run_demo

pytestmark = pytest.mark.skipif(not (DIT_DIR / "transformer").is_dir(), reason="demo-dit weights not installed")

BLOCKS = [f"transformer_blocks.{i}" for i in range(12)]
CRITERIA = ["ablation", "clip", "magnitude", "similarity", "taylor"]


def _cli(argv: list[str]) -> tuple[int, str]:
    """`prunelab argv`: exit code and stderr (not through `capsys`: diffusers binds its log handler to the stream of
    the moment, and a closed `capsys` stream breaks conftest's handler reset in the next test)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-run-dit")
    out, work = root / "out", root / "work"
    argv = ["demo-run", "--model", "demo-dit", "--quick", "--threads", "1", "--quiet"]
    code, err = _cli([*argv, "--out", str(out), "--work", str(work)])
    assert code == 0, err
    (folder,) = list(work.iterdir())  # one run folder, named by run_key
    return out, work, folder


def test_quick_config_samples_as_the_pipeline_does():
    config = default_config("demo-dit", quick=True)
    assert (config.scheduler, config.guidance, config.steps) == (
        DIT_SAMPLING["scheduler"],
        DIT_SAMPLING["guidance"],
        1,
    )
    assert default_config("demo", quick=True) == QUICK  # the U-Net run keeps its settings (and run keys)
    assert default_config("demo-dit").steps == DIT_SAMPLING["steps"]


def test_every_criterion_scores_every_block(quick_run):
    from prune_lab.scoring import read_scores

    _, _, folder = quick_run
    scores = read_scores(folder / "scores.csv")
    assert sorted(scores["criterion"].unique()) == CRITERIA
    for criterion, part in scores.groupby("criterion"):
        assert sorted(part["name"]) == sorted(BLOCKS), criterion
        assert part["importance"].map(math.isfinite).all()
        assert sorted(part["rank"]) == list(range(1, 13))
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "demo-dit" and config["scheduler"] == "flow-euler"


def test_plan_meets_its_budget_on_the_exported_student(quick_run):
    from prune_lab.models import load_unet
    from prune_lab.plan import Plan

    _, _, folder = quick_run
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    teacher = params(load_unet("demo-dit").unet)
    student, distilled = (load_unet(folder / name).unet for name in ("pruned", "distilled"))
    meta = Plan.load(folder / "plan.json").meta
    assert meta["search"]["target"] == "params=0.6" and meta["search"]["criterion"] == "ablation"
    assert params(student) == params(distilled) == meta["student_params"] <= 0.6 * teacher
    assert student.config.num_layers == 12 - sum(n in BLOCKS for n in meta["removed"])


def test_evaluation_table_reads_the_saved_images_again(quick_run):
    import torch

    from prune_lab.demo.quality import Classifier
    from prune_lab.demo.run_eval import caption_accuracy
    from prune_lab.demo.scorer import load_scorer
    from prune_lab.demo.world import World

    _, _, folder = quick_run
    table = pd.read_csv(folder / "eval.csv").set_index("model")
    assert list(table.index) == [*MODELS, "real"]
    model, _, tokenizer = load_scorer()
    classifier, scenes = Classifier(model, tokenizer), World(QUICK.seed).scenes("heldout", 0, QUICK.eval_samples)
    for name in MODELS:
        images = torch.load(folder / "eval" / f"{name}.pt", weights_only=True)
        assert images.shape == (QUICK.eval_samples, 3, 32, 32) and 0 <= images.min() <= images.max() <= 1
        again = caption_accuracy(classifier, images, scenes).set_index("attribute")
        for attribute, row in again.iterrows():
            assert table.loc[name, attribute] == pytest.approx(row["accuracy"])
            assert table.loc[name, f"{attribute}_se"] == pytest.approx(row["stderr"])
    params = table["transformer_params_M"]
    assert params["pruned"] == params["distilled"] < params["teacher"] == pytest.approx(1.79, abs=0.01)


def test_report_names_every_step_criterion_and_finding(quick_run):
    out, _, _ = quick_run
    text = (out / "README.md").read_text()
    assert "prunelab demo-run --model demo-dit --out" in text and "--quick" in text
    for step in STEPS:
        assert re.search(rf"^\| {step} \| ran \| [0-9.]+ \|", text, re.M), step
    for criterion in CRITERIA:
        assert re.search(rf"^\| {criterion} \| 12 \|", text, re.M), criterion  # the importance summary row
    assert "feature KD (block outputs" in text and "## Findings" in text
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert set(figures) == {"scores.png", "samples.png", "distill_loss.png"}  # no skips in a transformer
    assert all((out / f).stat().st_size > 1000 for f in figures)


def test_findings_agree_with_a_hand_computation(quick_run):
    from scipy.stats import spearmanr

    out, _, folder = quick_run
    found = json.loads((out / "run.json").read_text())["findings"]
    scores = pd.read_csv(folder / "scores.csv")
    assert (found["k"], found["quorum"]) == (4, 3)
    least = {c: set(p.nsmallest(4, "importance")["name"]) for c, p in scores.groupby("criterion")}
    votes = [sum(b in names for names in least.values()) for b in BLOCKS]
    assert [r["votes"] for r in found["consensus"]] == votes
    assert [r["agreed"] for r in found["consensus"]] == [v >= 3 for v in votes]
    wide = scores.pivot(index="name", columns="criterion", values="importance").loc[BLOCKS]
    for row in found["agreement"]:
        assert row["spearman"] == pytest.approx(spearmanr(wide[row["a"]], wide[row["b"]]).statistic)
    assert len(found["agreement"]) == 10 and len(found["hypotheses"]) == 6


def test_rerun_reuses_every_step_with_the_same_results(quick_run):
    out, work, folder = quick_run
    produced = ("scores.csv", "plan.json", "pruned/plan.json", "distilled/done.json", "eval.csv")
    before = {p: (folder / p).read_bytes() for p in produced}
    findings = json.loads((out / "run.json").read_text())["findings"]
    result = run_demo(default_config("demo-dit", quick=True), work, out, progress=False, model="demo-dit")
    assert result.job.work == folder
    status = dict(zip(result.job.record_frame()["step"], result.job.record_frame()["status"]))
    assert status == {**{s: "reused" for s in STEPS}, "report": "ran"}
    assert {p: (folder / p).read_bytes() for p in produced} == before
    assert json.loads((out / "run.json").read_text())["findings"] == findings


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--criterion", "similarity"], "--criterion 'similarity'"),  # a transformer criterion: not for the U-Net
        (["--model", "demo-dit", "--criterion", "clips"], "--criterion 'clips'"),
        (["--model", "demo-dit", "--budget", "params=2x"], "--budget"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, flags, message):
    code, err = _cli(["demo-run", "--quick", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *flags])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_unknown_model_is_refused_by_the_parser(tmp_path):
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["demo-run", "--model", "demo-xl", "--work", str(tmp_path / "w")])
    assert exit_info.value.code == 2 and "--model" in err.getvalue()
    assert not (tmp_path / "w").exists()
