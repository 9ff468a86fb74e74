"""What plan search may remove: the backbone's candidate moves, and the user's constraints on them.

:func:`candidate_moves` asks the graph's backbone (:meth:`prune_lab.backbones.Backbone.moves`; the U-Net's are
documented in :mod:`prune_lab.backbones.unet.moves`); :func:`protected_atoms` turns `--keep-units` /
`--never-remove` into atoms no move may touch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..backbones import backbone_of
from ..units import Graph, Move, atoms_of, unknown_unit_message


def candidate_moves(graph: Graph) -> list[Move]:
    """Every candidate move of `graph`, in forward order of their first member."""
    return backbone_of(graph).moves(graph)


def protected_atoms(graph: Graph, keep_units: Iterable[str] = (), never_remove: Iterable[str] = ()) -> frozenset:
    """Atoms no move may remove.

    Args:
        keep_units: exact walker names; each protects itself and everything inside it (a transformer layer
            also protects its attention block, which cannot go without it).
        never_remove: unit kinds (`attention`, `skip` ...) or shell-style patterns over names
            (`up_blocks.3.*`, `*attentions.0`).

    Raises:
        ValueError: an unknown name (with the closest one) or a kind / pattern that matches nothing.
    """
    names: set[str] = set()
    for name in keep_units:
        if name not in graph:
            raise ValueError(f"--keep-units: {unknown_unit_message(name, graph.names)}")
        names.add(name)
    for token in never_remove:
        matched = [u.name for u in graph.units if u.kind == token or fnmatch.fnmatchcase(u.name, token)]
        if not matched:
            raise ValueError(
                f"--never-remove {token!r} matches no unit; give a kind ({', '.join(graph.atom_kinds)}) or a pattern "
                "over the names `prunelab blocks` lists, e.g. 'up_blocks.3.*'"
            )
        names.update(matched)
    protected = set(atoms_of(graph, names))
    protected.update(graph[n].parent for n in protected if graph[n].kind in graph.keeps_parent)
    return frozenset(protected)
