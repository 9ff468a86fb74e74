"""Base command lines that work (tiny sizes on the `demo` model); a case changes exactly one thing in one of them.

`{key}` placeholders name shared fixtures (:mod:`.fixtures`) or the case's own paths (`{tmp}`, `{cwd}`, or what its
setup added). `test_bad_input.py::test_baseline_works` runs a few of them as they are, so a red case means its one
change, not a broken base.
"""

from __future__ import annotations

from .fixtures import DISTILL_TINY

BLOCKS = ("blocks", "--model", "demo")
PRESETS = ("presets", "--model", "demo")
APPLY = ("apply", "--model", "demo", "--preset", "bk-small", "--out", "{tmp}/out")
APPLY_KEEP = ("apply", "--model", "demo", "--keep", "{plan}", "--out", "{tmp}/out")
PLAN_PRESET = ("plan", "--model", "demo", "--preset", "bk-small", "-o", "{tmp}/p.json")
PLAN_TARGET = ("plan", "--model", "demo", "--target", "params=0.6", "--scores", "{scores}", "-o", "{tmp}/p.json")
REPORT = ("report", "--model", "demo")
REPORT_KEEP = ("report", "--model", "demo", "--keep", "{plan}")
SCORE = ("score", "--model", "demo", "--criterion", "magnitude", "-o", "{tmp}/s.csv", "--quiet")
SCORE_TAYLOR = (
    "score",
    "--model",
    "demo",
    "--criterion",
    "taylor",
    "--synthetic",
    "--samples",
    "2",
    "--timesteps",
    "1",
    "--batch-size",
    "2",
    "-o",
    "{tmp}/s.csv",
    "--quiet",
)
SCORE_CALIB = (
    "score",
    "--model",
    "demo",
    "--criterion",
    "taylor",
    "--calib-dir",
    "{data}",
    "--samples",
    "2",
    "--timesteps",
    "1",
    "--batch-size",
    "2",
    "-o",
    "{tmp}/s.csv",
    "--quiet",
)
SCORE_CLIP = (
    "score",
    "--model",
    "demo",
    "--criterion",
    "clip",
    "--clip-model",
    "demo-clip",
    "--prompts",
    "{prompts_txt}",
    "--samples",
    "1",
    "--steps",
    "1",
    "--scheduler",
    "dpm",
    "--only",
    "mid_block.attentions.0",
    "-o",
    "{tmp}/s.csv",
    "--quiet",
)
COMPARE = ("score", "--compare", "{scores}", "{scores_multi}")
PLOT = ("plot", "{scores}", "-o", "{tmp}/f.png")
GENERATE = (
    "generate",
    "--model",
    "demo",
    "--prompts",
    "{prompts_txt}",
    "--out",
    "{tmp}/g",
    "--steps",
    "1",
    "--resolution",
    "32",
)
CACHE = (
    "cache-latents",
    "--model",
    "{demo}",
    "--data",
    "{data}",
    "--out",
    "{tmp}/c",
    "--resolution",
    "32",
    "--dtype",
    "fp32",
    "--num-workers",
    "0",
    "--batch-size",
    "4",
)
DISTILL = (
    "distill",
    "--teacher",
    "demo",
    "--student",
    "{export}",
    "--data",
    "{data}",
    "--out",
    "{tmp}/d",
    *DISTILL_TINY,
)
PROGRESSIVE = (
    "progressive",
    "--model",
    "demo",
    "--data",
    "{data}",
    "--target",
    "params=0.8",
    "--rounds",
    "1",
    "--criterion",
    "magnitude",
    "--steps-per-round",
    "1",
    "--out",
    "{tmp}/p",
    *DISTILL_TINY[2:-1],  # no --max-steps (--steps-per-round)
    "1",  # --checkpoint-every: progressive resumes a round from its checkpoints
)
WIDTH = ("width", "--model", "demo", "--out", "{tmp}/w", "--quiet")
WIDTH_TAYLOR = (
    *WIDTH,
    "--criterion",
    "taylor",
    "--synthetic",
    "--samples",
    "2",
    "--calib-timesteps",
    "2",
    "--batch-size",
    "2",
)
EVAL = (
    "eval",
    "--images",
    "{imgs}",
    "--prompts",
    "{imgs}/metadata.csv",
    "--metrics",
    "clip",
    "--clip-model",
    "demo-clip",
    "--num-workers",
    "0",
    "--device",
    "cpu",
)
COCO = ("coco-prompts", "--annotations", "{coco}", "--n", "2", "-o", "{tmp}/p.csv")
DEMO_DATA = ("demo-data", "--out", "{tmp}/dd", "-n", "2")
DEMO_QUALITY = ("demo-quality", "-n", "2", "--steps", "1", "--batch-size", "2", "--quiet")
DEMO_STUDY = (
    "demo-study",
    "--out",
    "{tmp}/study",
    "--work",
    "{tmp}/study-work",
    "--steps",
    "1",
    "--batch-size",
    "2",
    "--data-n",
    "4",
    "-n",
    "2",
    "--arms",
    "task",
    "--quiet",
)
DEMO_RUN = ("demo-run", "--out", "{tmp}/report", "--work", "{tmp}/work", "--quick", "--quiet")
DEMO_TRAIN = (
    "demo-train",
    "--out",
    "{tmp}/trained",
    "--work",
    "{tmp}/train-work",
    "--stages",
    "vae",
    "--vae-steps",
    "1",
    "--quiet",
)
DEMO_TRAIN_DIT = (
    "demo-train",
    "--backbone",
    "sd3",
    "--out",
    "{tmp}/trained",
    "--work",
    "{tmp}/train-work",
    "--dit-steps",
    "1",
    "--quiet",
)


def override(base: tuple[str, ...], flag: str, *values: str) -> tuple[str, ...]:
    """`base` with `flag`'s value(s) replaced (or `flag VALUES` appended when absent; no values: a switch)."""
    argv = list(base)
    if flag in argv:
        i = argv.index(flag)
        j = i + 1
        while j < len(argv) and not (argv[j].startswith("-") and len(argv[j]) > 1 and not _number(argv[j])):
            j += 1
        argv[i:j] = [flag, *values]
    else:
        argv += [flag, *values]
    return tuple(argv)


def drop(base: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """`base` without `flag` and its value(s)."""
    argv = list(base)
    if flag not in argv:
        return base
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not (argv[j].startswith("-") and len(argv[j]) > 1 and not _number(argv[j])):
        j += 1
    del argv[i:j]
    return tuple(argv)


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


STUDY = (
    "study",
    "--model",
    "demo",
    "--data",
    "{data}",
    "--prompts",
    "{prompts_csv}",
    "--arms",
    "preset:bk-small",
    "--out",
    "{tmp}/study",
    "--work",
    "{tmp}/study-work",
    "--steps",
    "1",
    "--batch-size",
    "2",
    "--resolution",
    "32",
    "--no-flip",
    "--sample-steps",
    "1",
    "--metric",
    "demo-accuracy",
    "--latency-runs",
    "0",
    "--quiet",
)
