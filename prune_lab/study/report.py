"""The study's report: ``README.md`` (settings, the regenerating command, tables), ``study.png`` and
``results.json`` (every result, per-prompt values included), written from a :func:`~prune_lab.study.run_study`
result alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime.atomic import write_figure, write_json, write_text
from ..runtime.tables import render


def plot_study(result: dict, path: str | os.PathLike) -> Path:
    """Left: the ranking value per model with 1.96-standard-error bars. Right: importance lost (first scored
    criterion) against that value after retraining, one point per arm (or, without scores, the arms' task loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, value = result["models"], result["primary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(table) + 2.5))
    y = np.arange(len(table))
    se = table[f"{value}_se"] if f"{value}_se" in table else None
    left.barh(y, table[value], xerr=None if se is None else 1.96 * se, color="tab:blue", alpha=0.8)
    left.set_yticks(y, table["model"], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel(f"{value} (95% CI)")
    lost = result["importance"]
    if len(lost):
        criterion = lost["criterion"].iloc[0]
        part = lost[lost["criterion"] == criterion]
        quality = table.set_index("model")[value]
        right.scatter(part["lost_pct"], [quality[f"arm:{a}"] for a in part["arm"]])
        right.set_xlabel(f"importance lost under {criterion} (% of total)")
        right.set_ylabel(f"{value} after retraining")
    else:
        for arm, frame in result["losses"].items():
            right.plot(frame["step"], frame["task"].rolling(25, min_periods=1).mean(), label=arm)
        right.set_xlabel("retraining step")
        right.set_ylabel("task loss, 25-step mean")
        right.legend(fontsize=6)
    fig.tight_layout()
    write_figure(path, fig, dpi=110, bbox_inches="tight")  # long arm names stay readable
    plt.close(fig)
    return Path(path)


def _with_se(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    for column in [c for c in table if f"{c}_se" in table]:
        shown[column] = [f"{v:.4g} ± {s:.2g}" for v, s in zip(table[column], table[f"{column}_se"])]
    return shown[[c for c in shown if not c.endswith("_se")]]


def study_report(result: dict, command: str, minutes: float) -> str:
    """The Markdown report (`command` regenerates it; this invocation took `minutes`)."""
    c, r, s = result["config"], result["config"]["recipe"], result["config"]["sampling"]
    diffs = result["differences"].copy()
    sampler = f"sampler `{s['scheduler']}`" if s["scheduler"] else "the model family's sampler"
    diffs["difference"] = [f"{d:+.4g} ± {e:.2g}" for d, e in zip(diffs["difference"], diffs["se"])]
    lines = [
        "# Which plan makes the best student? Arms compared after equal retraining",
        "",
        f"Regenerate with `{command.strip()}` (this invocation took {minutes:.1f} min; tasks already done in the "
        "work folder are reused).",
        "",
        f"Teacher `{c['model']}`. Every arm is retrained by `prunelab distill` for {r['steps']} steps (batch "
        f"{r['batch_size']} x {r['grad_accum']}, AdamW at a constant {r['lr']:g}, seed {r['seed']}, resolution "
        f"{r['resolution']}, feature layers {r['feature_layers']}) on `{c['data']}`; the arms differ only where "
        f"their spec says (default objective: task {r['lambda_task']:g}, out {r['lambda_out']:g}, feat "
        f"{r['lambda_feat']:g}). Every model draws the prompts of `{c['prompts']}` from the same initial noises "
        f"({sampler}, {s['steps']} steps, guidance {s['guidance']}, seed {s['seed']}). Metrics: "
        f"{', '.join(c['metrics'])}; arms are ranked by `{result['primary']}`. ± is a standard error: over prompts "
        "for a model, of the per-prompt differences for a pair.",
        "",
        "## Models",
        "",
        render(_with_se(result["models"]).round(4), "markdown"),
        "",
        "## Paired differences (same prompts and noises)",
        "",
        render(diffs[["value", "a", "b", "difference", "n"]], "markdown"),
    ]
    if len(result["importance"]):
        lost = result["importance"].pivot(index="arm", columns="criterion", values="lost_pct")
        lines += ["", "## Importance lost per arm (% of each criterion's total)", ""]
        lines += [render(lost.reset_index().round(2), "markdown"), ""]
        lines += [
            f"Rank correlation (Spearman) of importance lost with `{result['primary']}` after retraining, over the "
            "arms retrained like the first (only the plan differs); p: two-sided permutation p-value.",
            "",
            render(result["correlation"].round(4), "markdown"),
        ]
    return "\n".join([*lines, "", "![per-model quality and importance lost](study.png)", ""])


def record(result: dict) -> dict:
    """JSON-ready: every table as records, per-prompt values and settings; loss curves left out."""
    out = {k: v for k, v in result.items() if k != "losses"}
    for key, value in out.items():
        if isinstance(value, pd.DataFrame):
            out[key] = value.replace({np.nan: None}).to_dict("records")
    return out


def write_study_report(result: dict, out: str | os.PathLike, command: str, minutes: float) -> list[Path]:
    """Write `out/README.md`, `out/results.json` and `out/study.png`; the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_study(result, out / "study.png")
    readme = write_text(out / "README.md", study_report(result, command, minutes))
    return [readme, write_json(out / "results.json", record(result)), figure]
