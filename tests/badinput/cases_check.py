"""Bad input to `prunelab check` and `apply --check` (issue 16): refused with exit code 2, nothing written."""

from __future__ import annotations

from . import commands as C
from .harness import Case
from .inputs import folder, put

CASES: list[Case] = [
    Case("misleading-messages", "check-dir-missing", ("check", "{tmp}/no-such-export"), expect=("no-such-export",)),
    Case(
        "misleading-messages",
        "check-dir-is-a-file",
        ("check", "{bad}"),
        setup=put("bad", "export.txt", "x"),
        expect=("name:bad",),
    ),
    Case(
        "misleading-messages",
        "check-dir-not-an-export",
        ("check", "{d}"),
        setup=folder("d", "a-folder", {"notes.txt": "x"}),
        expect=("name:d",),
    ),
    Case(
        "json-shape",
        "check-marker-not-json",
        ("check", "{d}"),
        setup=folder("d", "export", {"unet/prune_lab_pruned.json": "{not json"}),
        expect=("prune_lab_pruned.json",),
    ),
    Case(
        "json-shape",
        "check-marker-format-number",
        ("check", "{d}"),
        setup=folder("d", "export", {"unet/prune_lab_pruned.json": '{"format": 7, "version": 1}'}),
        expect=("prune_lab_pruned.json",),
        also=("format",),
    ),
    Case("misleading-messages", "check-only-unknown", ("check", "{export}", "--only", "lorra"), expect=("lorra",)),
    Case("numeric-flags", "check-format-bogus", ("check", "{export}", "--format", "xml"), expect=("--format",)),
    Case("misleading-messages", "apply-only-without-check", (*C.APPLY, "--only", "lora"), expect=("--only",)),
    Case(
        "misleading-messages",
        "apply-check-only-unknown",
        (*C.APPLY, "--check", "--only", "lorra"),
        expect=("lorra",),
    ),
]
