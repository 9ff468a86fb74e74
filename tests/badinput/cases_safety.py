"""Inputs that must never cost data (`data-loss`), leave half-written outputs (`half-written`), run code from a file
a user handed in or write outside the output folder (`untrusted-files`), or misreport reuse (`bookkeeping`)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from . import commands as C
from .harness import Case, Ctx, Outcome, cli_problems, disk_problems
from .inputs import (
    chain,
    copy,
    folder,
    no_sentinel,
    pickle_payload,
    png_bytes,
    put,
    user_files,
)

CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


def rerun(argv: tuple[str, ...], ctx: Ctx) -> tuple[int | None, BaseException | None]:
    """Run a corrected command line (in this process); its output is discarded."""
    from prune_lab.cli import main

    try:
        return main([ctx.fmt(a) for a in argv]) or 0, None
    except SystemExit as e:
        return e.code, None
    except Exception as e:  # noqa: BLE001
        return None, e


def then_succeeds(argv: tuple[str, ...], prepare=None):
    """`check`: once the bad run is over, the corrected `argv` succeeds (nothing the bad run left blocks it)."""

    def check(ctx: Ctx, outcome: Outcome) -> list[str]:
        if prepare is not None:
            prepare(ctx)
        rc, exc = rerun(argv, ctx)
        if rc == 0:
            return []
        what = f"{type(exc).__name__}: {exc}" if exc else f"rc={rc}"
        return [
            f"RERUN-BLOCKED the corrected command failed after the bad one ({' '.join(map(str, what.split()))[:160]})"
        ]

    return check


# ================================================================================================= data-loss
OVERWRITE = ("--overwrite",)
add(
    Case(
        "data-loss",
        "apply-out-dot-overwrite",
        (*C.override(C.APPLY, "--out", "."), *OVERWRITE),
        setup=user_files("cwd"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "apply-out-user-folder-overwrite",
        (*C.override(C.APPLY, "--out", "{mine}"), *OVERWRITE),
        setup=user_files("mine", "mine"),
        expect=("--out", "name:mine"),
    ),
    Case(
        "data-loss",
        "apply-out-parent-of-cwd-overwrite",
        (*C.override(C.APPLY, "--out", ".."), *OVERWRITE),
        setup=chain(user_files("cwd"), user_files("other", "other")),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "apply-out-is-the-model-overwrite",
        (*C.override(C.override(C.APPLY, "--model", "{m}"), "--out", "{m}"), *OVERWRITE),
        setup=copy("m", "demo", "model"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "apply-out-holds-the-plan-overwrite",
        ("apply", "--model", "demo", "--keep", "{proj}/plan.json", "--out", "{proj}", *OVERWRITE),
        setup=chain(user_files("proj", "proj"), copy("p", "plan", "proj/plan.json")),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "cache-latents-out-is-data-overwrite",
        (*C.override(C.override(C.CACHE, "--data", "{d}"), "--out", "{d}"), *OVERWRITE),
        setup=copy("d", "data", "data"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "cache-latents-out-parent-of-data-overwrite",
        (*C.override(C.override(C.CACHE, "--data", "{d}"), "--out", "{tmp}/proj"), *OVERWRITE),
        setup=chain(user_files("proj", "proj"), copy("d", "data", "proj/data")),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "cache-latents-out-user-folder-overwrite",
        (*C.override(C.CACHE, "--out", "{mine}"), *OVERWRITE),
        setup=user_files("mine", "mine"),
        expect=("--out", "name:mine"),
    ),
    Case(
        "data-loss",
        "cache-latents-out-dot-overwrite",
        (*C.override(C.CACHE, "--out", "."), *OVERWRITE),
        setup=user_files("cwd"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "demo-data-out-user-folder-overwrite",
        (*C.override(C.DEMO_DATA, "--out", "{mine}"), *OVERWRITE),
        setup=user_files("mine", "mine"),
        expect=("--out", "name:mine"),
    ),
    Case(
        "data-loss",
        "demo-data-out-dot-overwrite",
        (*C.override(C.DEMO_DATA, "--out", "."), *OVERWRITE),
        setup=user_files("cwd"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "width-out-user-folder-overwrite",
        (*C.override(C.WIDTH, "--out", "{mine}"), *OVERWRITE),
        setup=user_files("mine", "mine"),
        expect=("--out", "name:mine"),
    ),
    Case(
        "data-loss",
        "width-out-dot-overwrite",
        (*C.override(C.WIDTH, "--out", "."), *OVERWRITE),
        setup=user_files("cwd"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "distill-out-is-the-student-resume",
        (*C.override(C.override(C.DISTILL, "--student", "{s}"), "--out", "{s}"), "--resume", "latest"),
        setup=copy("s", "export", "student"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "distill-out-is-the-data-resume",
        (*C.override(C.override(C.DISTILL, "--data", "{d}"), "--out", "{d}"), "--resume", "latest"),
        setup=copy("d", "data", "data"),
        expect=("--out",),
    ),
    Case(
        "data-loss",
        "distill-out-user-folder-resume",
        (*C.override(C.DISTILL, "--out", "{mine}"), "--resume", "latest"),
        setup=folder("mine", "mine", {"unet/my-notes.txt": "mine\n", "plan.json": "{}"}),
        expect=("--out", "name:mine"),
    ),
)


def _limit_zero(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    """Refused (exit 2, naming the flag, nothing written) or run with at least one checkpoint kept."""
    if o.rc == 0 and o.exc is None:
        kept = list((ctx.tmp / "d" / "checkpoints").glob("checkpoint-*"))
        return [] if kept else ["ACCEPTED rc=0 and no checkpoint kept (--checkpoints-limit 0)"]
    case = Case("data-loss", "-", expect=("--checkpoints-limit",))
    return cli_problems(case, ctx, o) + disk_problems(changes)


add(
    Case(
        "data-loss",
        "distill-checkpoints-limit-0",
        C.override(C.override(C.DISTILL, "--checkpoint-every", "1"), "--checkpoints-limit", "0"),
        verdict=_limit_zero,
    ),
)


# ============================================================================================== half-written
def _restore_images(ctx: Ctx) -> None:
    shutil.rmtree(ctx["d"])
    shutil.copytree(ctx["data"], ctx["d"])


def _unknown_unit(ctx: Ctx) -> str:
    data = json.loads(ctx["plan"].read_text())
    data["keep"].append("down_blocks.0.resnets.7")
    return json.dumps(data)


def _all_images_corrupt(ctx: Ctx, root: Path) -> None:
    for png in root.glob("*.png"):
        png.write_bytes(b"")


add(
    Case(
        "half-written",
        "generate-resolution-17-then-32",
        C.override(C.GENERATE, "--resolution", "17"),
        expect=("--resolution",),
        check=then_succeeds(C.GENERATE),
    ),
    Case(
        "half-written",
        "generate-seed-negative-then-0",
        C.override(C.GENERATE, "--seed", "-1"),
        expect=("--seed",),
        check=then_succeeds(C.GENERATE),
    ),
    Case(
        "half-written",
        "score-save-calib-then-fail",
        C.override((*C.SCORE_TAYLOR, "--save-calib", "{tmp}/c.safetensors"), "--timesteps", "0"),
        expect=("--timesteps",),
        check=then_succeeds((*C.SCORE_TAYLOR, "--save-calib", "{tmp}/c.safetensors")),
    ),
    Case(
        "half-written",
        "score-second-criterion-fails",
        C.override(
            (*C.SCORE_CLIP, "--clip-checkpoint", "{tmp}/missing.safetensors"), "--criterion", "magnitude", "clip"
        ),
        expect=("missing.safetensors",),
        check=then_succeeds(C.override(C.SCORE_CLIP, "--criterion", "magnitude")),
    ),
    Case(
        "half-written",
        "distill-batch-larger-than-data-then-2",
        C.override(C.DISTILL, "--batch-size", "100"),
        expect=("--batch-size",),
        check=then_succeeds(C.DISTILL),
    ),
    Case(
        "half-written",
        "distill-no-metadata-then-fixed",
        C.override(C.DISTILL, "--data", "{d}"),
        setup=copy("d", "data", "data", lambda ctx, root: (root / "metadata.csv").rename(root / "captions.csv")),
        expect=("metadata",),
        hashed=("d",),
        check=then_succeeds(C.override(C.DISTILL, "--data", "{d}"), _restore_images),
    ),
    Case(
        "half-written",
        "distill-diverged-then-sane-lr",
        C.override(C.override(C.DISTILL, "--lr", "1e30"), "--max-steps", "3"),
        verdict=lambda ctx, o, ch: _diverged(ctx, o, ch),
        timeout=90,  # divergence shows only after training steps: not a refusal up front, but a guard against a hang
    ),
    Case(
        "half-written",
        "cache-latents-all-images-corrupt-then-fixed",
        C.override(C.CACHE, "--data", "{d}"),
        setup=copy("d", "data", "data", _all_images_corrupt),
        expect=("name:d",),
        hashed=("d",),
        check=then_succeeds(C.override(C.CACHE, "--data", "{d}"), _restore_images),
    ),
    Case(
        "half-written",
        "apply-unknown-unit-then-good-plan",
        C.override(C.APPLY_KEEP, "--keep", "{bad}"),
        setup=put("bad", "bad-plan.json", _unknown_unit),
        expect=("down_blocks.0.resnets.7",),
        check=then_succeeds(C.APPLY_KEEP),
    ),
    Case(
        "half-written",
        "coco-prompts-o-existing-dir-then-file",
        C.override(C.COCO, "-o", "{f}"),
        setup=folder("f", "prompts-dir", {"keep.txt": "x"}),
        expect=("-o", "name:f"),
        check=then_succeeds(C.COCO),
    ),
    Case(
        "half-written",
        "distill-resume-other-lr",
        (*C.override(C.override(C.DISTILL, "--out", "{run}"), "--lr", "0.001"), "--resume", "latest"),
        setup=lambda ctx: shutil.copytree(ctx["ckpt"].parent.parent, ctx.add("run", ctx.tmp / "run")),
        expect=("--lr",),
        also=("0.001",),
    ),
    Case(
        "half-written",
        "generate-resume-other-steps",
        C.override(C.GENERATE, "--steps", "2"),
        setup=lambda ctx: rerun(C.GENERATE, ctx),
        expect=("steps",),
    ),
)


def _diverged(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    """A diverged run may exit 1 or 2, but leaves nothing that makes the sane rerun refuse."""
    problems = []
    if o.exc is not None:
        problems.append(f"TRACEBACK {type(o.exc).__name__}: {str(o.exc)[:120]}")
    elif o.rc == 0:
        problems.append("ACCEPTED rc=0 with --lr 1e30")
    problems += disk_problems(changes)
    return problems + then_succeeds(C.DISTILL)(ctx, o)


# =========================================================================================== untrusted-files
def _planted(rel: str, pkl: str = "custom_checkpoint_0.pkl"):
    """A copy of a real distill checkpoint at `tmp/rel` whose `pkl` is replaced by a payload pickle."""

    def setup(ctx: Ctx) -> None:
        dst = ctx.add("planted", ctx.tmp / rel)
        shutil.copytree(ctx["ckpt"], dst)
        (dst / pkl).write_bytes(pickle_payload()(ctx))

    return setup


add(
    Case(
        "untrusted-files",
        "distill-resume-checkpoint-from-elsewhere",
        (*C.DISTILL, "--resume", "{planted}"),
        setup=_planted("downloads/checkpoint-0000001"),
        expect=("--resume",),
        check=no_sentinel(),
    ),
    Case(
        "untrusted-files",
        "distill-resume-latest-planted-checkpoint",
        (*C.DISTILL, "--resume", "latest"),
        setup=_planted("d/checkpoints/checkpoint-0000001"),
        expect=("checkpoint-0000001", "--resume"),
        check=no_sentinel(),
    ),
    Case(
        "untrusted-files",
        "distill-resume-planted-random-states",
        (*C.DISTILL, "--resume", "{planted}"),
        setup=_planted("downloads/checkpoint-0000001", "random_states_0.pkl"),
        expect=("--resume",),
        check=no_sentinel(),
    ),
    *[
        Case(
            "untrusted-files",
            f"{name}-planted-stage-checkpoint",
            argv,
            setup=put("bad", f"train-work/{stage}/checkpoint.pt", pickle_payload()),
            expect=("checkpoint.pt",),
            check=no_sentinel(),
        )
        for name, argv, stage in (("demo-train", C.DEMO_TRAIN, "vae"), ("demo-train-dit", C.DEMO_TRAIN_DIT, "dit"))
    ],
    Case(
        "untrusted-files",
        "score-clip-checkpoint-pickle",
        (*C.SCORE_CLIP, "--clip-checkpoint", "{bad}"),
        setup=put("bad", "evil.pt", pickle_payload()),
        expect=("--clip-checkpoint", "name:bad"),
        check=no_sentinel(),
    ),
    Case(
        "untrusted-files",
        "eval-inception-pickle",
        (*C.override(C.EVAL, "--metrics", "is"), "--inception", "{bad}"),
        setup=chain(copy("imgs", "data", "imgs"), put("bad", "evil.pth", pickle_payload())),
        expect=("--inception", "name:bad"),
        check=no_sentinel(),
    ),
)
for what, name in (("parent", "../x.json"), ("absolute", "{tmp}/x.json"), ("nested-escape", "sub/../../y.json")):
    add(
        Case(
            "untrusted-files",
            f"eval-json-name-{what}",
            (*C.EVAL, "--json-name", name),
            setup=copy("imgs", "data", "imgs"),
            expect=("--json-name",),
        )
    )


def _escaping(value: str):
    """The data folder copy whose second row's `file_name` points outside it (at a valid image)."""

    def setup(ctx: Ctx) -> None:
        copy("bad", "data", "data")(ctx)
        outside = ctx.tmp / "outside.png"
        outside.write_bytes(png_bytes(32, 1))
        meta = ctx["bad"] / "metadata.csv"
        lines = meta.read_text().splitlines()
        cells = lines[2].split(",")
        cells[0] = value.format(outside=outside)
        lines[2] = ",".join(cells)
        meta.write_text("\n".join(lines) + "\n")

    return setup


ESCAPE_ENTRIES = {
    "score": C.override(C.SCORE_CALIB, "--calib-dir", "{bad}"),
    "cache-latents": C.override(C.CACHE, "--data", "{bad}"),
    "distill": C.override(C.DISTILL, "--data", "{bad}"),
    "width": (*C.drop(C.WIDTH_TAYLOR, "--synthetic"), "--calib-dir", "{bad}"),
}
for entry, argv in ESCAPE_ENTRIES.items():
    for what, value in (("dotdot", "../outside.png"), ("absolute", "{outside}")):
        add(
            Case(
                "untrusted-files",
                f"{entry}-metadata-file-name-{what}",
                argv,
                setup=_escaping(value),
                expect=("outside.png",),
                also=("metadata.csv",),
            )
        )


def _torch_loads(ctx: Ctx) -> list[str]:
    """Every `torch.load(` call in the package that does not pass `weights_only=True`."""
    import prune_lab

    found = []
    for path in sorted(Path(prune_lab.__file__).parent.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start() : end + 1]
            if "weights_only=True" not in call.replace(" ", ""):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(Path(prune_lab.__file__).parent)}:{line}")
    return found


def _no_unsafe_loads(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    if o.exc is not None:
        return [f"TRACEBACK {type(o.exc).__name__}: {o.exc}"]
    return [f"UNSAFE-LOAD torch.load without weights_only=True at {', '.join(o.value)}"] if o.value else []


def _scorer_folder(ctx: Ctx):
    import os
    import tempfile

    from prune_lab.demo.scorer import private_folder, register

    register()
    folder = private_folder()
    return folder, oct(os.stat(folder).st_mode & 0o777), Path(tempfile.gettempdir())


def _private(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    if o.exc is not None:
        return [f"TRACEBACK {type(o.exc).__name__}: {o.exc}"]
    folder, mode, shared = o.value
    if folder.parent == shared and (folder.name.endswith("-") or mode != "0o700"):
        return [f"PREDICTABLE-PATH the scorer writes to {folder} (mode {mode})"]
    return []


add(
    Case("untrusted-files", "package-torch-load-weights-only", call=_torch_loads, verdict=_no_unsafe_loads),
    Case("untrusted-files", "demo-scorer-private-folder", call=_scorer_folder, verdict=_private),
)


# =============================================================================================== bookkeeping
def _job(ctx: Ctx):
    from prune_lab.demo.job import QUICK, Job

    (ctx.tmp / "work").mkdir(exist_ok=True)
    return Job(QUICK, ctx.tmp / "work", ctx.tmp / "report", progress=False)


def _scores_frame(ctx: Ctx, reverse: bool = False):
    import pandas as pd

    df = pd.read_csv(ctx["scores"])
    skip = df.iloc[[0]].assign(name="skip:up_blocks.3.resnets.0", label="D1>U4-R1", kind="skip")
    df = pd.concat([df, skip], ignore_index=True)  # the demo report draws a skip chart too
    if reverse:
        df["importance"] = df["importance"].to_numpy()[::-1]
    return df


def _plot_twice(ctx: Ctx):
    from prune_lab.demo.run import plot

    job = _job(ctx)
    plot(job, _scores_frame(ctx))
    plot(job, _scores_frame(ctx, reverse=True))  # the scores changed: the figures must be redrawn
    return job.record_frame()


def _foreign_figures(ctx: Ctx):
    from prune_lab.demo.run import plot

    job = _job(ctx)
    for name in ("scores.png", "scores_skips.png"):  # figures already in the report folder (a committed report)
        (ctx.tmp / "report").mkdir(exist_ok=True)
        (ctx.tmp / "report" / name).write_bytes(png_bytes(8))
    plot(job, _scores_frame(ctx))
    return job.record_frame()


def _torn_timings(ctx: Ctx):
    job = _job(ctx)
    (ctx.tmp / "work" / "timings.json").write_text('{"units": 1.5, "sco')
    out = ctx.tmp / "work" / "units.csv"
    job.once("units", [out], lambda: out.write_text("x\n"))
    return job.record_frame()


def _header_total(ctx: Ctx):
    import pandas as pd

    from prune_lab.demo.run_report import _header

    job = _job(ctx)
    out = ctx.tmp / "work" / "units.csv"
    out.write_text("x\n")  # reused, with no recorded time
    job.once("units", [out], lambda: None)
    units = pd.DataFrame({"kind": ["resnet"], "name": ["x"]})
    return "\n".join(_header(job, "prunelab demo-run", units))


def _last_status(want: str):
    def verdict(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
        if o.exc is not None:
            return [f"TRACEBACK {type(o.exc).__name__}: {str(o.exc)[:140]}"]
        status = o.value["status"].iloc[-1]
        return [] if status == want else [f"WRONG-REUSE last step {status!r}, wanted {want!r}"]

    return verdict


def _no_nan(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    if o.exc is not None:
        return [f"TRACEBACK {type(o.exc).__name__}: {str(o.exc)[:140]}"]
    found = re.findall(r"[^\n]*\bnan\b[^\n]*", o.value)
    return [f"NAN-TOTAL {found[0].strip()[:140]}"] if found else []


def _finite_seconds(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    if o.exc is not None:
        return [f"TRACEBACK {type(o.exc).__name__}: {str(o.exc)[:140]}"]
    bad = [s for s in o.value["seconds"] if not math.isfinite(s)]
    return [f"NAN-TOTAL a step records {bad[0]} seconds"] if bad else []


add(
    Case(
        "bookkeeping",
        "plot-step-reused-after-scores-changed",
        call=_plot_twice,
        setup=None,
        verdict=_last_status("ran"),
    ),
    Case("bookkeeping", "plot-step-reused-from-foreign-figures", call=_foreign_figures, verdict=_last_status("ran")),
    Case("bookkeeping", "torn-timings-json", call=_torn_timings, verdict=_last_status("ran")),
    Case("bookkeeping", "reused-step-without-timing-prints-nan", call=_header_total, verdict=_no_nan),
    Case("bookkeeping", "reused-step-seconds-finite", call=lambda ctx: _reused_frame(ctx), verdict=_finite_seconds),
    Case(
        "bookkeeping",
        "cache-latents-resume-other-resolution",
        C.override(C.override(C.CACHE, "--out", "{c}"), "--resolution", "16"),
        setup=copy("c", "cache", "cache", lambda ctx, root: (root / "cache.json").unlink()),
        expect=("resolution",),
    ),
)


def _reused_frame(ctx: Ctx):
    job = _job(ctx)
    out = ctx.tmp / "work" / "units.csv"
    out.write_text("x\n")
    job.once("units", [out], lambda: None)
    return job.record_frame()
