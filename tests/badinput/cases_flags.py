"""Bad flag values (`numeric-flags`) and bad output locations (`output-paths`)."""

from __future__ import annotations

from . import commands as C
from .harness import Case
from .inputs import copy, folder, put

CASES: list[Case] = []
HUGE_SEED = str(2**64)


def flag_cases(prefix: str, base: tuple[str, ...], values: dict[str, tuple[str, ...]], **kw) -> None:
    """One `numeric-flags` case per `flag -> bad values`, expecting the message to name the flag."""
    for flag, bad in values.items():
        for value in bad:
            label = {"-1": "neg", "-8": "neg", "-5": "neg", HUGE_SEED: "2^64"}.get(value, value)
            CASES.append(
                Case("numeric-flags", f"{prefix}{flag}={label}", C.override(base, flag, value), expect=(flag,), **kw)
            )


# ----------------------------------------------------------------------------------------------------- score
flag_cases("score", C.SCORE, {"--threads": ("0", "-1"), "--device": ("bogus", "cuda")})
flag_cases(
    "score-taylor",
    C.SCORE_TAYLOR,
    {
        "--samples": ("0", "-1"),
        "--timesteps": ("0", "-1"),
        "--batch-size": ("0", "-1"),
        "--seed": ("-1", HUGE_SEED),
        "--dtype": ("float16",),
    },
)
flag_cases("score-clip", C.SCORE_CLIP, {"--steps": ("0", "-1"), "--guidance": ("nan", "inf")})
flag_cases("score-clip-pndm", C.override(C.SCORE_CLIP, "--scheduler", "pndm"), {"--steps": ("1",)})

# ------------------------------------------------------------------------------------------------------ plan
flag_cases("plan", C.PLAN_TARGET, {"--target": ("params=0", "params=nan", "params=inf", "params=-1", "params=2")})
LATENCY = C.override(C.PLAN_TARGET, "--target", "latency=100ms")
flag_cases("plan-latency", LATENCY, {"--runs": ("0", "-1"), "--warmup": ("-1",), "--device": ("bogus", "cuda")})

# ---------------------------------------------------------------------------------------------------- report
flag_cases("report", C.REPORT, {"--resolution": ("0", "-8", "17"), "--steps": ("0", "-1")})
flag_cases(
    "report-latency",
    (*C.REPORT, "--latency", "--runs", "1", "--warmup", "0"),
    {"--runs": ("0",), "--warmup": ("-1",), "--threads": ("0",), "--device": ("bogus", "cuda")},
)

# -------------------------------------------------------------------------------------------------- generate
flag_cases(
    "generate",
    C.GENERATE,
    {
        "--steps": ("0", "-1"),
        "--resolution": ("-8", "17"),
        "--batch-size": ("0", "-1"),
        "--seed": ("-1", HUGE_SEED),
        "--guidance": ("nan", "inf", "-inf"),
    },
)

# --------------------------------------------------------------------------------------------- cache-latents
flag_cases(
    "cache-latents",
    C.CACHE,
    {
        "--resolution": ("0", "-8", "17"),
        "--batch-size": ("0",),
        "--shard-size": ("0", "-1"),
        "--num-workers": ("-1",),
        "--device": ("bogus", "cuda"),
    },
)

# --------------------------------------------------------------------------------------------------- distill
flag_cases(
    "distill",
    C.DISTILL,
    {
        "--max-steps": ("0",),
        "--grad-accum": ("0",),
        "--lr": ("nan", "inf", "-1"),
        "--resolution": ("0", "17"),
        "--seed": ("-1",),
        "--checkpoint-every": ("-1",),
        "--checkpoints-limit": ("-1",),
        "--num-workers": ("-1",),
        "--weight-decay": ("nan", "-1"),
        "--max-grad-norm": ("nan", "-1"),
        "--lambda-task": ("nan",),
        "--lambda-out": ("inf",),
    },
)
flag_cases("distill-ema", (*C.DISTILL, "--ema"), {"--ema-decay": ("2", "nan")})
flag_cases("distill", C.DISTILL, {"--feature-loss": ("l1",)})

# ----------------------------------------------------------------------------------------------- progressive
flag_cases(
    "progressive",
    C.PROGRESSIVE,
    {
        "--rounds": ("0", "-1"),
        "--steps-per-round": ("0",),
        "--target": ("params=0", "params=2", "latency=100ms"),
        "--criterion": ("bogus",),
        "--schedule": ("cosine",),
        "--strategy": ("bogus",),
        "--feature-loss": ("l1",),
        "--feature-layers": ("bogus",),
        "--checkpoint-every": ("0",),
        "--lr": ("nan",),
        "--calib-samples": ("0",),
    },
)
flag_cases(
    "distill-validation",
    (*C.DISTILL, "--validation-prompts", "a red circle", "--validation-every", "1", "--validation-steps", "1"),
    {"--validation-every": ("0",), "--validation-steps": ("0",)},
)

# ----------------------------------------------------------------------------------------------------- width
flag_cases(
    "width",
    C.WIDTH,
    {"--round-to": ("-1",), "--seed": ("-1",), "--target": ("params=0", "params=2", "params=nan", "bogus")},
)
flag_cases(
    "width-taylor",
    C.WIDTH_TAYLOR,
    {
        "--samples": ("0",),
        "--calib-timesteps": ("0",),
        "--batch-size": ("0",),
        "--timestep-threshold": ("nan", "-1"),
    },
)

# --------------------------------------------------------------------------------------------- small writers
flag_cases("demo-data", C.DEMO_DATA, {"-n": ("-1",), "--start": ("-1",), "--world-seed": ("-1",)})
flag_cases("coco-prompts", C.COCO, {"--n": ("0", "-1"), "--seed": ("-1",)})
for flag, value in (("--batch-size", "0"), ("--resize", "0"), ("--resize", "-1"), ("--num-workers", "-1")):
    CASES.append(
        Case(
            "numeric-flags",
            f"eval{flag}={value}",
            C.override(C.EVAL, flag, value),
            setup=copy("imgs", "data", "imgs"),
            expect=(flag,),
        )
    )

# ---------------------------------------------------------------------------------------------- demo commands
#: the demo commands run for minutes once started: a bad flag must be refused at once
DEMO = dict(timeout=6)
flag_cases("demo-run", C.DEMO_RUN, {"--eval-samples": ("1",), "--threads": ("0",), "--budget": ("params=2",)}, **DEMO)
flag_cases(
    "demo-run-dit",
    (*C.DEMO_RUN, "--model", "demo-dit"),
    {"--eval-samples": ("1",), "--budget": ("params=2",)},
    **DEMO,
)
flag_cases(
    "demo-quality",
    C.DEMO_QUALITY,
    {"-n": ("0",), "--steps": ("0",), "--batch-size": ("0",), "--guidance": ("nan",), "--threads": ("0",)},
    **DEMO,
)
flag_cases("demo-study", C.DEMO_STUDY, {"--steps": ("0",), "--lr": ("nan",), "--data-n": ("0",), "-n": ("0",)}, **DEMO)
flag_cases(
    "study",
    C.STUDY,
    {
        "--steps": ("0",),
        "--lr": ("nan",),
        "--jobs": ("0",),
        "--latency-runs": ("-1",),
        "--seed": ("-1",),
        "--arms": ("bogus:x", "kd:task", "criterion:magnitude@params=2"),
        "--base": ("kd:task",),
        "--metric": ("bogus",),
    },
    **DEMO,
)
flag_cases("demo-train", C.DEMO_TRAIN, {"--threads": ("0",), "--vae-steps": ("-1",)}, **DEMO)
flag_cases("demo-train-dit", C.DEMO_TRAIN_DIT, {"--dit-steps": ("0",), "--backbone": ("bogus",)}, **DEMO)
flag_cases("demo-quality-dit", C.override(C.DEMO_QUALITY, "--model", "demo-dit"), {"--steps": ("0",)}, **DEMO)
# a flag of the other backbone's recipe is refused, naming it
CASES += [
    Case(
        "numeric-flags", "demo-train-dit--stages", (*C.DEMO_TRAIN_DIT, "--stages", "vae"), expect=("--stages",), **DEMO
    ),
    Case(
        "numeric-flags", "demo-train--dit-steps", (*C.DEMO_TRAIN, "--dit-steps", "2"), expect=("--dit-steps",), **DEMO
    ),
]

# score CSVs a numeric column of which is bad: every reader of scores
SCORE_CSV = {
    "header-only": "name,label,kind,criterion,raw,importance,rank\n",
    "non-numeric": "name,kind,criterion,importance\nmid_block,mid,magnitude,high\nup_blocks.0,stage,magnitude,1.0\n",
    "nan": "name,kind,criterion,importance\nmid_block,mid,magnitude,nan\nup_blocks.0,stage,magnitude,1.0\n",
    "inf": "name,kind,criterion,importance\nmid_block,mid,magnitude,inf\nup_blocks.0,stage,magnitude,1.0\n",
}
for what, text in SCORE_CSV.items():
    for entry, argv in (
        ("plan-target", C.override(C.PLAN_TARGET, "--scores", "{bad}")),
        ("plan-preset", (*C.PLAN_PRESET, "--scores", "{bad}")),
        ("plot", ("plot", "{bad}", "-o", "{tmp}/f.png")),
        ("compare", ("score", "--compare", "{bad}", "{scores}")),
    ):
        CASES.append(
            Case(
                "numeric-flags",
                f"{entry}-scores-csv-{what}",
                argv,
                setup=put("bad", "bad-scores.csv", text),
                expect=("name:bad",),
            )
        )

# argparse's own type errors (these already meet the contract: the suite should say so)
CASES += [
    Case("numeric-flags", "generate--steps=abc", C.override(C.GENERATE, "--steps", "abc"), expect=("--steps",)),
    Case("numeric-flags", "score--samples=1.5", C.override(C.SCORE_TAYLOR, "--samples", "1.5"), expect=("--samples",)),
]
# a criterion that does not apply to the model's backbone (similarity needs block streams; demo is a U-Net)
CASES += [
    Case(
        "misleading-messages",
        "score-similarity-on-unet",
        C.override(C.SCORE, "--criterion", "similarity"),
        expect=("--criterion",),
    )
]


# ============================================================================================== output-paths
def _file(key: str = "f"):
    return put(key, "existing-file", "a user's file\n")


def _dir(key: str = "f"):
    return folder(key, "existing-dir", {"keep.txt": "a user's file\n"})


def out_cases(prefix: str, base: tuple[str, ...], flag: str, want: str, extra: tuple[str, ...] = (), **kw) -> None:
    """`want` is `dir` (the flag names a folder to write) or `file`."""
    wrong = ("existing-file", _file()) if want == "dir" else ("existing-dir", _dir())
    shapes = [wrong, ("empty-string", None), ("under-a-file", _file())]
    for name, setup in shapes:
        value = {"existing-file": "{f}", "existing-dir": "{f}", "empty-string": "", "under-a-file": "{f}/sub/x"}[name]
        if name == "under-a-file" and want == "file":
            value = "{f}/x.out"
        CASES.append(
            Case(
                "output-paths",
                f"{prefix}{flag}-{name}",
                (*C.override(base, flag, value), *extra),
                setup=setup,
                expect=(flag, "name:f") if setup else (flag,),
                **kw,
            )
        )


out_cases("apply", C.APPLY, "--out", "dir")
out_cases("width", C.WIDTH, "--out", "dir")
out_cases("distill", C.DISTILL, "--out", "dir")
out_cases("progressive", C.PROGRESSIVE, "--out", "dir")
out_cases("generate", C.GENERATE, "--out", "dir")
out_cases("demo-data", C.DEMO_DATA, "--out", "dir")
out_cases("cache-latents", C.CACHE, "--out", "dir")
out_cases("plan-preset", C.PLAN_PRESET, "-o", "file")
out_cases("score", C.SCORE, "-o", "file")
out_cases("score", (*C.SCORE_TAYLOR, "--save-calib", "{tmp}/c.safetensors"), "--save-calib", "file")
out_cases("width", (*C.WIDTH_TAYLOR, "--save-calib", "{tmp}/c.safetensors"), "--save-calib", "file")
out_cases("coco-prompts", C.COCO, "-o", "file")
out_cases("plot", C.PLOT, "-o", "file")
out_cases("demo-quality", (*C.DEMO_QUALITY, "--out", "{tmp}/q.md"), "--out", "file", **DEMO)
CASES += [
    Case(
        "output-paths",
        "plan-target-o-existing-dir",
        C.override(C.PLAN_TARGET, "-o", "{f}"),
        setup=_dir(),
        expect=("-o", "name:f"),
    ),
    Case(
        "output-paths",
        "demo-data--out-existing-file-overwrite",
        (*C.override(C.DEMO_DATA, "--out", "{f}"), "--overwrite"),
        setup=_file(),
        expect=("--out", "name:f"),
    ),
    Case("output-paths", "plot-o-no-suffix", C.override(C.PLOT, "-o", "{tmp}/figure"), expect=("-o", "suffix")),
    Case(
        "output-paths",
        "plot-o-unknown-suffix",
        C.override(C.PLOT, "-o", "{tmp}/figure.xyz"),
        expect=("-o", "figure.xyz"),
    ),
    Case(
        "output-paths",
        "demo-study--out-existing-file",
        C.override(C.DEMO_STUDY, "--out", "{f}"),
        setup=_file(),
        expect=("--out", "name:f"),
        **DEMO,
    ),
    Case(
        "output-paths",
        "demo-run--out-existing-file",
        C.override(C.DEMO_RUN, "--out", "{f}"),
        setup=_file(),
        expect=("--out", "name:f"),
        **DEMO,
    ),
    Case(
        "output-paths",
        "demo-run--work-existing-file",
        C.override(C.DEMO_RUN, "--work", "{f}"),
        setup=_file(),
        expect=("--work", "name:f"),
        **DEMO,
    ),
    Case(
        "output-paths",
        "demo-train--work-existing-file",
        C.override(C.DEMO_TRAIN, "--work", "{f}"),
        setup=_file(),
        expect=("--work", "name:f"),
        **DEMO,
    ),
]
