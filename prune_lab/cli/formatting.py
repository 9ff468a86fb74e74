"""Rendering DataFrames for the terminal (the renderer lives in :mod:`prune_lab.runtime.tables`)."""

from ..runtime.tables import FORMATS, render

__all__ = ["FORMATS", "render"]
