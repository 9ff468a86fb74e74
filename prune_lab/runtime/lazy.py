"""Lazy public names for packages: `import prune_lab` (or a capability package) stays cheap.

A package lists, per submodule, the names it re-exports; :func:`lazy_exports` returns the module-level
`__getattr__` and `__dir__` (PEP 562) that import a submodule the first time one of its names is read. The names
behave as plain re-exports (`from prune_lab import walk`, `prune_lab.walk`), but torch and diffusers are imported
only by the code that uses them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` re-exporting `exports`.

    Args:
        package: the package's `__name__`.
        exports: submodule (relative, e.g. ``".graph"``, or absolute) -> the public names it defines.

    Raises:
        ValueError: a name listed under two submodules, or named like its submodule (importing the submodule would
            then replace the name with the module).
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported from both {where[name]} and {module}")
            if name == module.rsplit(".", 1)[-1]:
                raise ValueError(f"{package}: {name!r} is also the name of its submodule {module}; export it eagerly")
            where[name] = module

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
