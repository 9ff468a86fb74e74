"""Messages that mislead today (`misleading-messages`) and library entry points given wrong Python types
(`library-types`)."""

from __future__ import annotations

import functools
import re

from . import commands as C
from .harness import Case, Ctx, Outcome
from .inputs import folder, put

CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


def line_lacks(*patterns: str):
    """`check`: the error line matches none of `patterns` (regular expressions, case-insensitive)."""

    def check(ctx: Ctx, o: Outcome) -> list[str]:
        last = o.err_lines[-1] if o.err_lines else ""
        for p in patterns:
            if re.search(p, last, re.I):
                return [f"MISLEADING says {p!r}: {last[:140]}"]
        return []

    return check


def succeeds(written: str | None = None):
    """`verdict`: a valid input that is refused today must run (exit 0, writing `written` under tmp)."""

    def verdict(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
        if o.exc is not None:
            return [f"TRACEBACK {type(o.exc).__name__}: {str(o.exc)[:140]}"]
        if o.rc != 0:
            return [f"REFUSED rc={o.rc}: {(o.err_lines or [''])[-1][:140]}"]
        if written and not (ctx.tmp / written).exists():
            return [f"ACCEPTED but {written} was not written"]
        return []

    return verdict


# ======================================================================================= misleading-messages
add(
    Case(
        "misleading-messages",
        "plot-o-existing-dir",
        C.override(C.PLOT, "-o", "{d}"),
        setup=folder("d", "figures", {"keep.txt": "x"}),
        expect=("-o", "name:d"),
        check=line_lacks(r"format '?\w+'? is not supported", r"\.tmp"),
    ),
    Case(
        "misleading-messages",
        "score-synthetic-samples-0",
        C.override(C.SCORE_TAYLOR, "--samples", "0"),
        expect=("--samples",),
        check=line_lacks("needs calibration data"),
    ),
    Case(
        "misleading-messages",
        "score-synthetic-timesteps-0",
        C.override(C.SCORE_TAYLOR, "--timesteps", "0"),
        expect=("--timesteps",),
        check=line_lacks("needs calibration data"),
    ),
    Case(
        "misleading-messages",
        "width-synthetic-samples-0",
        C.override(C.WIDTH_TAYLOR, "--samples", "0"),
        expect=("--samples",),
        check=line_lacks("needs calibration data"),
    ),
    Case(
        "misleading-messages",
        "plan-preset-criterion-bogus",
        (*C.PLAN_PRESET, "--scores", "{scores}", "--criterion", "bogus"),
        expect=("--criterion", "bogus"),
    ),
    Case(
        "misleading-messages",
        "plan-preset-criterion-without-scores",
        (*C.PLAN_PRESET, "--criterion", "magnitude"),
        expect=("--criterion",),
    ),
    Case(
        "misleading-messages",
        "apply-preset-criterion-without-scores",
        (*C.APPLY, "--criterion", "magnitude"),
        expect=("--criterion",),
    ),
    Case(
        "misleading-messages",
        "plan-preset-criterion-picks-from-merged-scores",
        (*C.PLAN_PRESET, "--scores", "{scores_multi}", "--criterion", "magnitude"),
        verdict=succeeds("p.json"),
    ),
    Case(
        "misleading-messages",
        "plan-target-empty",
        ("plan", "--model", "demo", "--target", "", "--predicted", "--scores", "{scores}", "-o", "{tmp}/p.csv"),
        expect=("--target",),
    ),
    Case("misleading-messages", "blocks-kind-bogus", (*C.BLOCKS, "--kind", "bogus"), expect=("--kind", "bogus")),
    Case(
        "misleading-messages",
        "blocks-kind-one-bogus",
        (*C.BLOCKS, "--kind", "resnet", "atention"),
        expect=("atention",),
    ),
    Case(
        "misleading-messages",
        "generate-resolution-0",
        C.override(C.GENERATE, "--resolution", "0"),
        expect=("--resolution",),
    ),
    Case(
        "misleading-messages",
        "report-resolution-0",
        C.override(C.REPORT, "--resolution", "0"),
        expect=("--resolution",),
    ),
    Case(
        "misleading-messages",
        "score-o-json-overwrites-its-csv",
        C.override(C.SCORE, "-o", "{tmp}/s.json"),
        expect=("-o", "s.json"),
    ),
    Case(
        "misleading-messages",
        "cache-latents-model-demo",
        C.override(C.CACHE, "--model", "demo"),
        verdict=succeeds("c/cache.json"),
    ),
    Case(
        "misleading-messages",
        "plot-scores-without-criterion-column",
        ("plot", "{bad}", "-o", "{tmp}/f.png"),
        setup=put("bad", "bad-scores.csv", "name,importance\nmid_block,1.0\nup_blocks.0,2.0\n"),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "plan-preset-scores-binary",
        (*C.PLAN_PRESET, "--scores", "{bad}"),
        setup=put("bad", "bad-scores.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00"),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "generate-prompts-csv-unbalanced-quote",
        C.override(C.GENERATE, "--prompts", "{bad}"),
        setup=put("bad", "bad-prompts.csv", 'file_name,text\na.png,"a red circle\nb.png,x"y"z\n'),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "generate-prompts-txt-not-utf8",
        C.override(C.GENERATE, "--prompts", "{bad}"),
        setup=put("bad", "bad-prompts.txt", b"a red circle\n\xff\xfe blue\n"),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "score-prompts-txt-not-utf8",
        C.override(C.SCORE_CLIP, "--prompts", "{bad}"),
        setup=put("bad", "bad-prompts.txt", b"a red circle\n\xff\xfe blue\n"),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "score-compare-missing-column",
        ("score", "--compare", "{bad}", "{scores}"),
        setup=put("bad", "bad-scores.csv", "name,criterion\nmid_block,magnitude\n"),
        expect=("name:bad",),
    ),
)

# a folder given where a file is expected is not "missing"
DIR_FOR_FILE = {
    "plan-preset--scores": (*C.PLAN_PRESET, "--scores", "{d}"),
    "plan-target--scores": C.override(C.PLAN_TARGET, "--scores", "{d}"),
    "apply--keep": C.override(C.APPLY_KEEP, "--keep", "{d}"),
    "report--keep": C.override(C.REPORT_KEEP, "--keep", "{d}"),
    "generate--prompts": C.override(C.GENERATE, "--prompts", "{d}"),
    "score--prompts": C.override(C.SCORE_CLIP, "--prompts", "{d}"),
    "score--calib-cache": (*C.drop(C.SCORE_TAYLOR, "--synthetic"), "--calib-cache", "{d}"),
    "width--calib-cache": (*C.drop(C.WIDTH_TAYLOR, "--synthetic"), "--calib-cache", "{d}"),
    "coco-prompts--annotations": C.override(C.COCO, "--annotations", "{d}"),
    "plot-scores": ("plot", "{d}", "-o", "{tmp}/f.png"),
    "score--compare": ("score", "--compare", "{d}", "{scores}"),
}
for name, argv in DIR_FOR_FILE.items():
    add(
        Case(
            "misleading-messages",
            f"{name}-is-a-folder",
            argv,
            setup=folder("d", "a-folder", {"x.txt": "x"}),
            expect=("name:d",),
            check=line_lacks("does not exist", "not found"),
        )
    )


# every --model help names `demo`
def _help(command: str, flag: str):
    def call(ctx: Ctx) -> str:
        from prune_lab.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        return next(a for a in sub._actions if flag in a.option_strings).help or ""

    return call


def _names_demo(ctx: Ctx, o: Outcome, changes: dict) -> list[str]:
    if o.exc is not None:
        return [f"TRACEBACK {type(o.exc).__name__}: {o.exc}"]
    return [] if re.search(r"\bdemo\b", o.value) else [f"HELP does not list demo: {o.value[:120]}"]


for command, flag in (
    ("blocks", "--model"),
    ("presets", "--model"),
    ("apply", "--model"),
    ("plan", "--model"),
    ("score", "--model"),
    ("report", "--model"),
    ("width", "--model"),
    ("generate", "--model"),
    ("cache-latents", "--model"),
    ("distill", "--teacher"),
):
    add(
        Case(
            "misleading-messages", f"help-{command}-{flag}-lists-demo", call=_help(command, flag), verdict=_names_demo
        )
    )


# ============================================================================================= library-types
@functools.cache
def _loaded():
    from prune_lab import load_unet

    return load_unet("demo")


def _unet():
    return _loaded().unet


@functools.cache
def _plan():
    from prune_lab import create_plan

    return create_plan(_unet(), "bk-small", source="demo")


def _plan_dict(**changes):
    data = _plan().to_dict()
    data.update(changes)
    return data


def lib(name: str, call, expect: tuple[str, ...], exc=(TypeError, ValueError)) -> Case:
    return Case("library-types", name, call=call, exc=exc, expect=expect)


def _create_plan(*args, **kw):
    from prune_lab import create_plan

    return lambda ctx: create_plan(*[a() if callable(a) else a for a in args], **kw)


def _apply(loaded, plan, out, **kw):
    from prune_lab import apply_plan

    def call(ctx: Ctx):
        target = ctx.fmt(out) if isinstance(out, str) else out
        return apply_plan(loaded() if callable(loaded) else loaded, plan() if callable(plan) else plan, target, **kw)

    return call


def _fn(module: str, name: str, *args, **kw):
    def call(ctx: Ctx):
        import importlib

        fn = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
        return fn(*args, **kw)

    return call


add(
    lib("create_plan-model-none", _create_plan(None, "bk-small", source="x"), ("model",)),
    lib("create_plan-model-name-string", _create_plan("demo", "bk-small", source="x"), ("model",)),
    lib("create_plan-preset-number", _create_plan(_unet, 123, source="x"), ("preset",)),
    lib("create_plan-preset-list", _create_plan(_unet, ["bk-small"], source="x"), ("preset",)),
    lib("create_plan-source-none", _create_plan(_unet, "bk-small", source=None), ("source",)),
    lib(
        "create_plan-scores-path-string", _create_plan(_unet, "bk-small", source="x", scores="scores.csv"), ("scores",)
    ),
    lib("create_plan-scores-list", _create_plan(_unet, "bk-small", source="x", scores=[1.0, 2.0]), ("scores",)),
    lib("apply_plan-loaded-name-string", _apply("demo", _plan, "{tmp}/out"), ("loaded",)),
    lib("apply_plan-loaded-bare-unet", _apply(_unet, _plan, "{tmp}/out"), ("loaded",)),
    lib("apply_plan-plan-dict", _apply(_loaded, lambda: _plan().to_dict(), "{tmp}/out"), ("plan",)),
    lib("apply_plan-plan-path-string", _apply(_loaded, "plan.json", "{tmp}/out"), ("plan",)),
    lib("apply_plan-out-number", _apply(_loaded, _plan, 123), ("out_dir",)),
    lib("apply_plan-out-none", _apply(_loaded, _plan, None), ("out_dir",)),
    lib("apply_plan-overwrite-string", _apply(_loaded, _plan, "{tmp}/out", overwrite="no"), ("overwrite",)),
    lib("load_pruned-none", _fn("prune_lab", "load_pruned", None), ("path",)),
    lib("load_pruned-number", _fn("prune_lab", "load_pruned", 123), ("path",)),
    lib("load_pruned-bytes", _fn("prune_lab", "load_pruned", b"/nonexistent"), ("path",)),
    lib("load_pruned-list", _fn("prune_lab", "load_pruned", ["a", "b"]), ("path",)),
    lib("load_pruned-model-object", lambda ctx: __import__("prune_lab").load_pruned(_unet()), ("path",)),
    lib("Plan.from_dict-none", _fn("prune_lab", "Plan.from_dict", None), ("plan", "data", "dict")),
    lib("Plan.from_dict-list", _fn("prune_lab", "Plan.from_dict", []), ("plan", "data", "dict")),
    lib("Plan.from_dict-string", _fn("prune_lab", "Plan.from_dict", "plan.json"), ("plan", "data", "dict")),
    lib(
        "Plan.from_dict-base-list", lambda ctx: __import__("prune_lab").Plan.from_dict(_plan_dict(base=[])), ("base",)
    ),
    lib(
        "Plan.from_dict-base-string",
        lambda ctx: __import__("prune_lab").Plan.from_dict(_plan_dict(base="sd")),
        ("base",),
    ),
    lib(
        "Plan.from_dict-actions-list",
        lambda ctx: __import__("prune_lab").Plan.from_dict(_plan_dict(actions=["x"])),
        ("actions",),
    ),
    lib(
        "Plan.from_dict-meta-string",
        lambda ctx: __import__("prune_lab").Plan.from_dict(_plan_dict(meta="x")),
        ("meta",),
    ),
    lib(
        "Plan.from_dict-where-number",
        lambda ctx: __import__("prune_lab").Plan.from_dict([], where=5),
        ("plan", "where"),
    ),
    lib("Plan.load-none", _fn("prune_lab", "Plan.load", None), ("path",)),
    lib("Plan.load-number", _fn("prune_lab", "Plan.load", 123), ("path",)),
    lib("Plan.load-dict", lambda ctx: __import__("prune_lab").Plan.load(_plan().to_dict()), ("path",)),
    lib("parse_budget-none", _fn("prune_lab.search", "parse_budget", None), ("budget", "target")),
    lib("parse_budget-float", _fn("prune_lab.search", "parse_budget", 0.5), ("budget", "target")),
    lib("parse_budget-bytes", _fn("prune_lab.search", "parse_budget", b"params=0.5"), ("budget", "target")),
    lib("parse_budget-list", _fn("prune_lab.search", "parse_budget", ["params=0.5"]), ("budget", "target")),
    lib("parse_budget-dict", _fn("prune_lab.search", "parse_budget", {"params": 0.5}), ("budget", "target")),
    lib("read_scores-none", _fn("prune_lab.scoring", "read_scores", None), ("path", "scores")),
    lib("read_scores-number", _fn("prune_lab.scoring", "read_scores", 123), ("path", "scores")),
    lib(
        "read_scores-dataframe",
        lambda ctx: __import__("prune_lab.scoring").scoring.read_scores(
            __import__("pandas").DataFrame({"name": ["a"]})
        ),
        ("path", "scores"),
    ),
    lib("read_importance-none", _fn("prune_lab.backbones", "read_importance", None), ("path", "scores")),
    lib(
        "read_importance-criterion-number",
        lambda ctx: __import__("prune_lab.backbones").backbones.read_importance(ctx["scores"], 5),
        ("criterion",),
    ),
    lib(
        "make_plan-keep-string",
        lambda ctx: __import__("prune_lab").make_plan(_unet(), "mid_block", source="x"),
        ("keep",),
    ),
    lib("make_plan-keep-none", lambda ctx: __import__("prune_lab").make_plan(_unet(), None, source="x"), ("keep",)),
    lib("make_plan-keep-ints", lambda ctx: __import__("prune_lab").make_plan(_unet(), [1, 2], source="x"), ("keep",)),
    lib("load_unet-none", _fn("prune_lab", "load_unet", None), ("model",)),
    lib("load_unet-number", _fn("prune_lab", "load_unet", 123), ("model",)),
    lib("load_unet-list", _fn("prune_lab", "load_unet", ["demo"]), ("model",)),
    lib("walk-none", _fn("prune_lab", "walk", None), ("model",)),
    lib("walk-name-string", _fn("prune_lab", "walk", "demo"), ("model",)),
    lib(
        "build_student-plan-dict",
        lambda ctx: __import__("prune_lab").build_student(_unet(), _plan().to_dict()),
        ("plan",),
    ),
    lib(
        "resolve-plan-dict",
        lambda ctx: __import__("prune_lab").resolve(_plan().to_dict(), __import__("prune_lab").walk(_unet())),
        ("plan",),
    ),
)
