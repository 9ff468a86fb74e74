"""The demo job's report: ``README.md`` with the regenerating command, the machine, step timings, every step's
tables, and PNG figures beside it (score bars from :mod:`prune_lab.plots`, samples and the distillation loss here).

Figures take results (tensors, tables), never models.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from ..runtime.atomic import write_figure
from ..runtime.tables import render
from .job import Job, StepRecord, agreement, feature_scope, importance_summary, write_text
from .run_eval import cost_columns, sample_images

#: What each step does, for the timings table (`{network}`, `{scored}`: the run's :class:`~.job.DemoModel`).
STEP_TEXT = {
    "data": "render demo-world training scenes (calibration + distillation data)",
    "units": "walk the {network} graph: the units table",
    "score": "score {scored} with every registered criterion",
    "plot": "bar charts of the scores ({scored})",
    "plan": "greedy plan search under the budget",
    "apply": "export the pruned student pipeline",
    "distill": "short feature-KD distillation of the student",
    "evaluate": "generate, classify, FID; params and MACs",
    "report": "this file and its figures",
}


def _save(fig: Figure, path: Path) -> Path:
    return write_figure(path, fig, dpi=120, bbox_inches="tight")


def plot_samples(images: dict[str, torch.Tensor], captions: list[str], path: Path) -> Path:
    """One row per model of images ``[k, 3, H, W]`` in [0, 1], one column per caption."""
    k = min(len(captions), *(len(x) for x in images.values()))
    fig = Figure(figsize=(1.2 * k + 0.8, 1.35 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), k, squeeze=False)
    for row, (name, batch) in enumerate(images.items()):
        for col in range(k):
            ax = axes[row, col]
            ax.imshow(batch[col].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(captions[col].removeprefix("a "), fontsize=7)
        axes[row, 0].set_ylabel(name, fontsize=8)
    return _save(fig, path)


def plot_losses(losses: pd.DataFrame, path: Path) -> Path:
    """The distillation's loss terms per optimizer step (``losses.csv`` of the recipe)."""
    fig = Figure(figsize=(5.5, 3.0), layout="constrained")
    ax = fig.subplots()
    for column in ("loss", "task", "out", "feat"):
        if column in losses:
            ax.plot(losses["step"], losses[column], label=column, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def machine() -> str:
    """CPU, cores, torch threads and the load average (the machine may be shared)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch thread(s), load average {load} (1/5/15 min) when the report was written, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def _timings(job: Job) -> pd.DataFrame:
    words = {"network": job.model.network, "scored": job.model.scored}
    rows = [
        {"step": r.step, "status": r.status, "seconds": round(r.seconds, 1), "what": STEP_TEXT[r.step].format(**words)}
        for r in job.records
    ]
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame, digits: int = 4) -> str:
    return render(df.round(digits), "markdown")


def _significant(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Float columns as text with `digits` significant digits (importances span many orders of magnitude)."""
    floats = df.select_dtypes("float").columns
    return df.assign(**{c: [f"{v:.{digits}g}" if pd.notna(v) else "" for v in df[c]] for c in floats})


def _label(units: pd.DataFrame):
    labels = dict(zip(units["name"], units["label"]))
    return lambda name: labels.get(name, name)


def _calibrated(scores: pd.DataFrame) -> str:
    """The criteria of `scores` that read calibration batches, in words (`taylor and ablation`)."""
    from ..scoring import get_criterion

    names = [c for c in ("taylor", "ablation", "similarity") if c in set(scores["criterion"])]
    names += [c for c in scores["criterion"].unique() if c not in names and "batches" in get_criterion(c).needs]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _scores_section(job: Job, units: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    c, label = job.config, _label(units)
    summary = importance_summary(scores)
    summary["most"], summary["least"] = summary["most"].map(label), summary["least"].map(label)
    ranked = scores.sort_values(["criterion", "rank"]).groupby("criterion", sort=False)
    top = pd.DataFrame(
        {
            "criterion": list(ranked.groups),
            "top 5 (most important first)": [", ".join(p["label"].head(5)) for _, p in ranked],
            "bottom 5": [", ".join(p["label"].tail(5)) for _, p in ranked],
        }
    )
    return [
        "## Scores (step `score`, `plot`)",
        "",
        f"{scores['name'].nunique()} units ({job.model.units}) x "
        f"{scores['criterion'].nunique()} criteria ({', '.join(scores['criterion'].unique())}). Calibration for "
        f"{_calibrated(scores)}: {c.calib_samples} demo-world training scenes x {c.timesteps} timesteps; clip: "
        f"{c.clip_prompts} held-out captions generated with `{c.scheduler}`, {c.steps} steps, guidance "
        f"{c.guidance:g} per unit, scored by `demo-clip`. Importance: higher = more important.",
        "",
        render(_significant(summary), "markdown"),
        "",
        "`max_min_ratio`: importance of the most over the least important unit (empty when the least is <= 0, "
        "i.e. removing it raised the metric). Rank agreement between criteria (units matched by name):",
        "",
        _md(agreement(scores)),
        "",
        _md(top),
        "",
        "![scores per unit](scores.png)",
        *(["", "![skip connections](scores_skips.png)"] if scores["kind"].eq("skip").any() else []),
    ]


def _plan_section(job: Job, plan: dict, units: pd.DataFrame) -> list[str]:
    label, search = _label(units), plan["search"]
    costs = pd.DataFrame(
        [
            {
                "resource": r,
                "teacher": base,
                "plan": plan["predicted"][r],
                "kept_pct": 100 * plan["predicted"][r] / base,
            }
            for r, base in plan["base"].items()
        ]
    )
    lost, total = plan["importance_lost"], plan["importance_total"]
    return [
        "## Plan (steps `plan`, `apply`)",
        "",
        f"Greedy search (`prunelab plan --target {search['target']} --criterion {search['criterion']}`) on the "
        f"**{search['criterion']}** scores: {len(plan['removed'])} units removed in {len(plan['moves'])} moves; "
        f"importance lost {lost:.4g} of {total:.4g} ({100 * lost / total:.1f}%).",
        "",
        "Removed: " + ", ".join(label(n) for n in plan["removed"]),
        "",
        _md(costs, 2),
        "",
        f"Exported as a pipeline folder (`{job.path('pruned')}`) whose {job.model.network} "
        + ("is a plain diffusers config." if plan.get("expressible") else "loads with `prune_lab.load_pruned`."),
    ]


def _distill_section(job: Job) -> list[str]:
    c, folder = job.config, job.path("distilled")
    losses = pd.read_csv(folder / "losses.csv")
    plot_losses(losses, job.out / "distill_loss.png")
    first, last = losses.iloc[0], losses.iloc[-1]
    return [
        "## Distillation (step `distill`)",
        "",
        f"`DistillRecipe(DistillConfig(...))` (what `prunelab distill` runs): {c.distill_steps} steps, batch "
        f"{c.distill_batch}, AdamW lr {c.lr:g} (constant), task + output KD + feature KD "
        f"({feature_scope(job.model).removesuffix('s')} outputs, weights 1), "
        f"resolution 32, no flips, on {c.train_scenes} demo-world training scenes. Loss {first['loss']:.4g} at "
        f"step 1 -> {last['loss']:.4g} at step {int(last['step'])} (feature KD {first['feat']:.4g} -> "
        f"{last['feat']:.4g}).",
        "",
        "![distillation loss](distill_loss.png)",
    ]


def _evaluation_section(job: Job, evaluation: pd.DataFrame) -> list[str]:
    from .world import World

    c = job.config
    table = evaluation.copy()
    for attribute in ("colour", "shape", "colour+shape"):
        table[attribute] = [
            f"{100 * a:.1f} ± {100 * s:.1f}%" for a, s in zip(table[attribute], table[f"{attribute}_se"])
        ]
    shown = ["model", "n", "colour", "shape", "colour+shape", "fid", *cost_columns(table)]
    real, scenes = World(c.seed).batch("heldout", 0, 8)
    plot_samples({**sample_images(job), "real": real}, [s.caption for s in scenes], job.out / "samples.png")
    fid = (
        f"FID: Frechet distance to the {c.eval_samples} real held-out scenes in `demo-clip`'s 64-d image-embedding "
        "space (`prune_lab.runtime.clip.fid_extractor`); at this small n it is biased upwards, so compare rows with "
        f"each other and with the `real` row (the next {c.eval_samples} real held-out scenes), not with other reports."
        if c.fid
        else "FID: off in this run."
    )
    return [
        "## Evaluation (step `evaluate`)",
        "",
        f"Each model draws the captions of the first {c.eval_samples} held-out scenes (`{c.scheduler}`, {c.steps} "
        f"steps, guidance {c.guidance:g}, the seeds of `prune_lab.demo.quality.generation_accuracy`); `demo-clip` "
        "reads colour and shape off each image (zero-shot over the world's captions). Accuracy ± binomial "
        "standard error; the `real` row reads the real scenes (the scorer's own accuracy, the ceiling). Params and "
        f"MACs: `prune_lab.report` ({job.model.network} per step; whole = {job.model.encoders} + {job.model.network} "
        "x 25 steps + VAE decoder).",
        "",
        render(table[[s for s in shown if s in table]].round(3), "markdown"),
        "",
        fid,
        "",
        "![samples: teacher, pruned, distilled, and the real scenes](samples.png)",
    ]


def _header(job: Job, command: str, units: pd.DataFrame) -> list[str]:
    kinds = units.groupby("kind", sort=False).size().rename("units").reset_index()
    total = math.fsum(r.seconds for r in job.records if math.isfinite(r.seconds))
    wall = time.perf_counter() - job.started
    return [
        f"# prune_lab demo: score, plan, prune, distil and evaluate the `{job.model.name}` model",
        "",
        f"Regenerate with `{command}`{job.model.note}. Written {datetime.date.today().isoformat()}; run "
        f"folder `{job.work}` (settings in its `config.json`; a killed run resumes there).",
        "",
        f"Machine: {machine()}.",
        "",
        "## Steps",
        "",
        f"Seconds each step took when it ran ({total / 60:.1f} min in all; `reused`: its outputs came from an "
        f"earlier run with the same settings and weights). This invocation took {wall / 60:.1f} min of wall time, "
        "loading included.",
        "",
        "TIMINGS",
        "",
        "## Units (step `units`)",
        "",
        f"The graph walker's units of the demo {job.model.network} ({len(units)} in all; table in the run folder's "
        "`units.csv`):",
        "",
        _md(kinds),
    ]


def write_report(job: Job, units: pd.DataFrame, scores: pd.DataFrame, plan: dict, evaluation, command: str) -> Path:
    """Write ``README.md`` and its figures into ``job.out``; records the `report` step on `job`."""
    from .run_findings import findings, findings_record, findings_section

    start = time.perf_counter()
    found = findings(units, scores, plan)
    lines = [
        *_header(job, command, units),
        "",
        *_scores_section(job, units, scores),
        "",
        *_plan_section(job, plan, units),
        "",
        *_distill_section(job),
        "",
        *_evaluation_section(job, evaluation),
        "",
        *([*findings_section(found), ""] if found is not None else []),
    ]
    job.records.append(StepRecord("report", "ran", time.perf_counter() - start, [str(job.out / "README.md")]))
    text = "\n".join(lines).replace("TIMINGS", _md(_timings(job), 1))
    path = write_text(job.out / "README.md", text)
    record = {
        "command": command,
        "config": asdict(job.config),
        "steps": [asdict(r) for r in job.records],
        "evaluation": json.loads(evaluation.to_json(orient="records")),
        **findings_record(found),
    }
    write_text(job.out / "run.json", json.dumps(record, indent=1) + "\n")
    return path
