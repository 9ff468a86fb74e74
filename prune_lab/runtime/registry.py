"""One registry for everything prune_lab looks up by name (timm's `register_model` / `create_model` pattern).

Criteria, search strategies, presets, width criteria, budget resources, samplers, CLIP scorers and backbones are
each a :class:`Registry`: `register` adds an entry (as a decorator or a call), `get` returns it or raises a
`ValueError` that names the closest registered key and the full list, `names` lists the keys. A registry may be
given a `loader`, called once before the first lookup, that imports the modules whose registrations fill it (so
the registry module itself imports none of them and no import cycle arises).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries of one kind.

    Args:
        kind: what an entry is, for messages (`criterion`, `preset`, `sampler` ...).
        loader: imports the built-in entries on first use (optional).
        hint: appended to the unknown-name message (e.g. which command lists the entries).
    """

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._loader = loader
        self._entries: dict[str, T] = {}

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Add `entry` under `name`; without `entry`, a decorator that registers what it wraps.

        Raises:
            ValueError: `name` is taken (pass `replace=True` to re-register on purpose).
        """
        if entry is None:

            def wrap(obj):
                self.register(name, obj, replace=replace)
                return obj

            return wrap
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered as `name`.

        Raises:
            ValueError: unknown name, with the closest registered one and the full list.
        """
        self._load()
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The message for an unknown `name`."""
        self._load()
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        tail = f" ({self.hint})" if self.hint else ""
        return f"unknown {self.kind} {name!r}; {hint}choose from: {', '.join(self.names())}{tail}"

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
