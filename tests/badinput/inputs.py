"""Builders of bad inputs: each returns a `setup(ctx)` that writes one under the case's own folder."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .harness import Ctx

Content = str | bytes | Callable[[Ctx], str | bytes]

#: JSON texts of the wrong shape or not JSON at all, by name (used for every JSON file a command reads).
NOT_JSON = {
    "empty": "",
    "invalid": '{"format": ',
    "non-utf8": b'{"a": "\xff\xfe"}',
    "nested": "[" * 100_000 + "]" * 100_000,
}
WRONG_TOP = {"list": "[]", "string": '"x"', "number": "3", "null": "null"}


def _content(ctx: Ctx, content: Content) -> str | bytes:
    return content(ctx) if callable(content) else content


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def put(key: str, rel: str, content: Content = "") -> Callable[[Ctx], None]:
    """Write `content` to `tmp/rel` and name it `key`."""

    def setup(ctx: Ctx) -> None:
        ctx.add(key, _write(ctx.tmp / rel, _content(ctx, content)))

    return setup


def folder(key: str, rel: str, files: dict[str, Content] | None = None) -> Callable[[Ctx], None]:
    """Make the folder `tmp/rel` (with `files` in it) and name it `key`."""

    def setup(ctx: Ctx) -> None:
        path = ctx.add(key, ctx.tmp / rel)
        path.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).items():
            _write(path / name, _content(ctx, content))

    return setup


def copy(key: str, source: str, rel: str | None = None, *edits: Callable[[Ctx, Path], None]) -> Callable:
    """Copy the fixture `source` to `tmp/rel` (default: its name), name it `key`, then apply `edits(ctx, path)`."""

    def setup(ctx: Ctx) -> None:
        src = Path(ctx[source])
        dst = ctx.add(key, ctx.tmp / (rel or src.name))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        for edit in edits:
            edit(ctx, dst)

    return setup


def chain(*setups: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for s in setups:
            s(ctx)

    return setup


def user_files(rel: str = "cwd", key: str | None = None) -> Callable[[Ctx], None]:
    """A folder holding a user's own files (no prune_lab marker): what no command may delete."""
    return folder(
        key or f"user_{rel.replace('/', '_')}",
        rel,
        {"notes.txt": "my notes\n", "thesis/chapter1.md": "# one\n", ".hidden": "secret\n"},
    )


# ------------------------------------------------------------------------------------------------- edits
def write_rel(rel: str, content: Content) -> Callable[[Ctx, Path], None]:
    return lambda ctx, root: _write(root / rel, _content(ctx, content))


def remove_rel(rel: str) -> Callable[[Ctx, Path], None]:
    def edit(ctx: Ctx, root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return edit


def truncate_rel(rel: str, keep: float = 0.5) -> Callable[[Ctx, Path], None]:
    def edit(ctx: Ctx, root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: int(len(data) * keep)])

    return edit


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable[[Ctx, Path], None]:
    """Load `root/rel` (or `root` itself when `rel` is ''), apply `change(data)` (its return value, when not None,
    replaces the data) and write it back."""

    def edit(ctx: Ctx, root: Path) -> None:
        path = root / rel if rel else root
        data = json.loads(path.read_text())
        new = change(data)
        path.write_text(json.dumps(data if new is None else new))

    return edit


def set_key(key: str, value) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def csv_rows(rel: str, rows: list[str], header: str = "file_name,text") -> Callable[[Ctx, Path], None]:
    return write_rel(rel, header + "\n" + "\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------------- files
def png_bytes(size: int = 32, seed: int = 0) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def truncated_png() -> bytes:
    data = png_bytes(64)
    return data[: len(data) // 3]


def safetensors_bytes(tensors: dict | None = None, metadata: dict | None = None) -> bytes:
    import torch
    from safetensors.torch import save

    return save(tensors or {"x": torch.zeros(2)}, metadata=metadata)


class Payload:
    """A pickle that makes the folder `path` when unpickled: proof that a user-handed file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path, 0o777, True))


def pickle_payload(sentinel_rel: str = "PWNED") -> Callable[[Ctx], bytes]:
    def make(ctx: Ctx) -> bytes:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(Payload(ctx.tmp / sentinel_rel), buf)
        return buf.getvalue()

    return make


def no_sentinel(rel: str = "PWNED"):
    """`check`: the pickle payload never ran."""

    def check(ctx: Ctx, outcome) -> list[str]:
        return [f"UNPICKLED a user-handed file (made {rel})"] if (ctx.tmp / rel).exists() else []

    return check
