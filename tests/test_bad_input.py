"""Issue 14: every bad input gets exit code 2 (or the stated exception), no traceback, one line on stderr naming the
file or flag, and the disk exactly as it was.

The cases are rows in `tests/badinput/cases_*.py` (class, argv or callable, setup, expected fragment); this file runs
them in-process through `prune_lab.cli.main`, with shared valid inputs built once (`tests/badinput/fixtures.py`).
Counts per class: `python tests/badinput/tally.py` on a JUnit XML of this file (see `tests/badinput/BEFORE.md`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from badinput import all_cases
from badinput.commands import CACHE, DISTILL, EVAL, GENERATE, PLAN_PRESET, PROGRESSIVE, SCORE, SCORE_CLIP
from badinput.fixtures import Fixtures
from badinput.harness import (
    Ctx,
    cli_problems,
    disk_problems,
    lib_problems,
    placeholders,
    run_call,
    run_cli,
    tree_diff,
    tree_hash,
)
from badinput.inputs import copy

CASES = all_cases()


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("badinput-fixtures"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Per case: refuse any rmtree outside pytest's temporary folders, and restore global state afterwards."""
    import torch

    base = Path(tmp_path_factory.getbasetemp()).resolve()
    shared_tmp = Path(tempfile.gettempdir()).resolve()
    real_rmtree = shutil.rmtree

    def guarded(path, *args, **kwargs):
        target = Path(os.path.abspath(path)).resolve()
        own = target.parent == shared_tmp and target.name.startswith("prunelab-")  # the demo scorer's mkdtemp
        if not own and target != base and base not in target.parents:
            raise PermissionError(f"bad-input suite: refused rmtree({path}) outside the test folders")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _ctx(tmp_path: Path, fx: Fixtures, monkeypatch) -> Ctx:
    ctx = Ctx(tmp_path, fx)
    ctx.cwd.mkdir()
    monkeypatch.chdir(ctx.cwd)
    return ctx


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, fx, tmp_path, capfd, monkeypatch):
    ctx = _ctx(tmp_path, fx, monkeypatch)
    if case.setup is not None:
        case.setup(ctx)
    argv = [ctx.fmt(a) for a in case.argv] if case.argv is not None else None  # builds the fixtures it names
    shared = sorted(k for k in placeholders(case.argv or ()) if k in fx and k not in ctx.local)
    watched = {"tmp": ctx.tmp, **{k: ctx[k] for k in (*case.hashed, *shared)}}
    before = {k: tree_hash(p) for k, p in watched.items()}
    if argv is not None:
        outcome = run_cli(argv, capfd, case.timeout)
    else:
        outcome = run_call(case.call, ctx, capfd, case.timeout)
    changes = {k: tree_diff(before[k], tree_hash(p)) for k, p in watched.items()}
    if case.verdict is not None:
        problems = [f"TIMEOUT after {case.timeout} s"] if outcome.timed_out else case.verdict(ctx, outcome, changes)
    else:
        standard = cli_problems if argv is not None else lib_problems
        problems = standard(case, ctx, outcome) + disk_problems(changes)
        if case.check is not None:
            problems += case.check(ctx, outcome)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_at_least_300_cases_in_every_class():
    from badinput.harness import CLASSES

    assert len(CASES) >= 300
    assert {c.cls for c in CASES} == set(CLASSES)


@pytest.mark.parametrize(
    "argv",
    [PLAN_PRESET, SCORE, SCORE_CLIP, GENERATE, CACHE, DISTILL, EVAL, PROGRESSIVE],
    ids=["plan", "score", "score-clip", "generate", "cache-latents", "distill", "eval", "progressive"],
)
def test_baseline_works(argv, fx, tmp_path, monkeypatch):
    """The base command lines the cases change work as they are: a red case is its one change, not the base."""
    from prune_lab.cli import main

    ctx = _ctx(tmp_path, fx, monkeypatch)
    copy("imgs", "data", "imgs")(ctx)
    assert main([ctx.fmt(a) for a in argv]) == 0
