"""The command line's frame: an import-cheap parser and `--help`, one-line user errors but tracebacks for bugs,
both dtype spellings on every dtype flag, one budget grammar for `plan` and `width`."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from prune_lab import cli
from prune_lab.cli import build_parser, main

HEAVY = ("torch", "diffusers")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a.choices, dict))
    return list(action.choices)


SUBCOMMANDS = _subcommands()


# ---------------------------------------------------------------------------------------------- import cost
def test_building_the_parser_imports_neither_torch_nor_diffusers():
    done = _python(
        f"import sys, prune_lab.cli; prune_lab.cli.build_parser(); print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_subcommand_help_exits_0_and_imports_neither_torch_nor_diffusers():
    done = _python(
        "import contextlib, io, json, sys\n"
        "from prune_lab.cli import main\n"
        "codes = {}\n"
        f"for name in {SUBCOMMANDS!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit as e:\n"
        "            codes[name] = e.code\n"
        f"print(json.dumps({{'codes': codes, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["codes"] == dict.fromkeys(SUBCOMMANDS, 0) and result["heavy"] == []
    assert {"blocks", "score", "plan", "width", "report", "generate", "distill", "demo-run"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_mentions_every_flag(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and f"usage: prunelab {name}" in capsys.readouterr().out


def test_commands_on_tables_import_only_what_they_run(tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("name,criterion,importance\na,m,1\nb,m,2\nc,m,3\na,t,3\nb,t,1\nc,t,2\n")
    done = _python(
        "import sys\n"
        "from prune_lab.cli import main\n"
        f"assert main(['score', '--compare', {str(scores)!r}, '--format', 'csv']) == 0\n"
        f"assert main(['plot', {str(scores)!r}, '-o', {str(tmp_path / 'scores.png')!r}]) == 0\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and "m,t,3,-0.3333" in done.stdout


def test_import_prune_lab_is_cheap_and_keeps_its_public_names():
    done = _python(
        "import sys, prune_lab\n"
        f"cheap = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "missing = [n for n in prune_lab.__all__ if n not in dir(prune_lab)]\n"
        "from prune_lab import walk, Plan, load_unet\n"
        "print(cheap, missing, walk.__module__, Plan.__module__, load_unet.__module__)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "[]", "prune_lab.backbones", "prune_lab.plan", "prune_lab.models"]


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def raising(monkeypatch):
    """A `boom` subcommand raising the exception it is given (the only command of the parser)."""
    module = types.ModuleType("_prunelab_boom")

    def register(subparsers):
        parser = subparsers.add_parser("boom")
        parser.set_defaults(func=lambda args: (_ for _ in ()).throw(module.exception))

    module.register = register
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "COMMANDS", (module.__name__,))
    return module


@pytest.mark.parametrize(
    "exception", [ValueError("bad --x 3; use 1"), FileNotFoundError("no such plan"), FileExistsError("out exists")]
)
def test_user_errors_are_one_line_and_exit_2(raising, exception, capsys):
    raising.exception = exception
    assert main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == f"prunelab boom: error: {exception}\n"


@pytest.mark.parametrize("exception", [KeyError("name"), TypeError("a bug"), AttributeError("a bug")])
def test_a_programming_error_keeps_its_traceback(raising, exception):
    raising.exception = exception
    with pytest.raises(type(exception)):
        main(["boom"])


# ---------------------------------------------------------------------------------------------------- dtypes
DTYPE_FLAGS = {
    "score": (["score"], "--dtype", "float32"),
    "plan": (["plan", "--model", "m", "--pareto", "-o", "x.csv"], "--dtype", "float32"),
    "report": (["report", "--model", "m"], "--dtype", "float32"),
    "generate": (["generate", "--model", "m", "--prompts", "p", "--out", "o"], "--dtype", "auto"),
    "cache-latents": (["cache-latents", "--model", "m", "--data", "d", "--out", "o"], "--dtype", "fp16"),
    "distill": (
        ["distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o"],
        "--mixed-precision",
        None,
    ),
}


@pytest.mark.parametrize("command", DTYPE_FLAGS)
@pytest.mark.parametrize("spelling", ["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"])
def test_every_dtype_flag_takes_both_spellings_and_keeps_its_default(command, spelling):
    argv, flag, default = DTYPE_FLAGS[command]
    dest = flag.lstrip("-").replace("-", "_")
    assert getattr(build_parser().parse_args(argv), dest) == default
    assert getattr(build_parser().parse_args([*argv, flag, spelling]), dest) == spelling


@pytest.mark.parametrize(
    "spelling,accelerate", [("fp16", "fp16"), ("float16", "fp16"), ("bf16", "bf16"), ("float32", "no"), ("no", "no")]
)
def test_mixed_precision_spellings_reach_accelerate_names(spelling, accelerate):
    from prune_lab.cli.distill import config_from_args

    argv, flag, _ = DTYPE_FLAGS["distill"]
    args = build_parser().parse_args([*argv, flag, spelling])
    assert config_from_args(args).mixed_precision == accelerate


def test_cast_model_casts_a_diffusers_model_without_its_spurious_fp32_warning():
    import logging

    import torch
    from conftest import TINY_SD, tiny_unet

    from prune_lab.runtime.dtypes import cast_model

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    records = Records()
    logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root (caplog)
    logger.addHandler(records)
    try:
        unet = tiny_unet(TINY_SD)
        reference = {k: v.to(torch.bfloat16) for k, v in unet.state_dict().items()}
        assert cast_model(unet, "bf16") is unet
        assert cast_model(unet, torch.bfloat16) is unet  # no-op
        assert records.messages == []
        assert all(torch.equal(v, reference[k]) for k, v in unet.state_dict().items())
        unet.to(torch.float32)  # what cast_model replaces: diffusers warns though the model keeps nothing in fp32
        assert any("kept in float32" in m for m in records.messages)
    finally:
        logger.removeHandler(records)


# --------------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    "text,fraction,amount", [("params=0.5", 0.5, None), ("params=50%", 0.5, None), ("params=480M", None, 480e6)]
)
def test_width_reads_plans_budget_grammar(text, fraction, amount):
    from prune_lab.runtime.budget import parse_budget
    from prune_lab.width import Target

    target = Target.parse(text)
    assert (target.metric, target.fraction, target.amount) == ("params", fraction, amount)
    budget = parse_budget(text)  # the same text means the same bound for plan
    assert target.limit(1e9) == int(budget.limit(1e9))
    assert Target.parse(str(target)) == target


def test_width_budget_errors():
    from prune_lab.width import Target

    for text, message in [
        ("0.5", "METRIC=FRACTION"),
        ("flops=0.5", "metric 'flops' is not supported"),
        ("params=1.5", "fraction must be in (0, 1)"),
        ("params=100%", "fraction must be in (0, 1)"),
        ("params=5Q", "unknown unit 'Q'"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Target.parse(text)
    with pytest.raises(ValueError, match="nothing to prune"):
        Target.parse("params=2G").limit(1e9)
