"""Counts of the bad-input suite from a JUnit XML report: cases and failures per class, and failure patterns.

    pytest -q tests/test_bad_input.py --junitxml=bad.xml; python tests/badinput/tally.py bad.xml

Every failure message line starts with a pattern tag (`TRACEBACK`, `ACCEPTED`, `DISK`, ...; see `harness.py`).
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

CASE = re.compile(r"^test_bad_input\[(?P<cls>[a-z-]+):(?P<name>.+)\]$")


def read(path: str) -> list[dict]:
    rows = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        m = CASE.match(tc.get("name", ""))
        if not m:
            continue
        bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
        message = "" if bad is None else (bad.get("message") or bad.text or "")
        message = message.removeprefix("Failed: ")
        rows.append({**m.groupdict(), "failed": bad is not None, "lines": message.strip().splitlines()})
    return rows


def table(rows: list[dict]) -> str:
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["cls"]].append(r)
    out = ["| class | cases | failing now | passing |", "|---|---|---|---|"]
    for cls, part in by_class.items():
        failing = sum(r["failed"] for r in part)
        out.append(f"| {cls} | {len(part)} | {failing} | {len(part) - failing} |")
    failing = sum(r["failed"] for r in rows)
    out.append(f"| **all** | **{len(rows)}** | **{failing}** | **{len(rows) - failing}** |")
    return "\n".join(out)


def patterns(rows: list[dict]) -> str:
    """Cases per pattern tag (a case counts once per tag it shows), with one example each."""
    count, example = Counter(), {}
    for r in rows:
        tags = {line.split(" ", 1)[0]: line for line in r["lines"] if line and line.split(" ", 1)[0].isupper()}
        for tag, line in tags.items():
            count[tag] += 1
            example.setdefault(tag, f"`{r['cls']}:{r['name']}`: {line[:200]}")
    out = ["| pattern | cases | example |", "|---|---|---|"]
    out += [f"| {tag} | {n} | {example[tag].replace('|', '/')} |" for tag, n in count.most_common()]
    return "\n".join(out)


def main(path: str) -> None:
    rows = read(path)
    print(table(rows))
    print()
    print(patterns(rows))


if __name__ == "__main__":
    main(sys.argv[1])
