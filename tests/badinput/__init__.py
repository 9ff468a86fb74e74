"""The bad-input suite of issue 14: cases as table rows (see `harness.Case`), run by `tests/test_bad_input.py`."""

from __future__ import annotations

from collections import Counter

from .harness import CLASSES, Case


def all_cases() -> list[Case]:
    from . import cases_check, cases_files, cases_flags, cases_messages, cases_safety

    cases = [
        *cases_safety.CASES,
        *cases_files.CASES,
        *cases_flags.CASES,
        *cases_messages.CASES,
        *cases_check.CASES,
    ]
    ids = Counter(c.id for c in cases)
    dup = [i for i, n in ids.items() if n > 1]
    assert not dup, f"duplicate case ids: {dup}"
    unknown = {c.cls for c in cases} - set(CLASSES)
    assert not unknown, f"unknown classes: {unknown}"
    return cases
