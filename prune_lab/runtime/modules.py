"""Module-tree helpers shared by surgery, compaction and width pruning."""

from __future__ import annotations

import torch.nn as nn


def set_submodule(root: nn.Module, path: str, module: nn.Module | None) -> None:
    """Replace the submodule at dotted `path` (ModuleList indices included)."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, nn.ModuleList):
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def find_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted `path`, or None when there is none."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None
