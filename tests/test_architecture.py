"""The package's layering (ARCHITECTURE.md): no import cycles, imports point down, the demo and the CLI stay on top.

Every `import` statement anywhere in a module counts (those inside functions too): a lazy import is still a
dependency. Registries that load plug-ins by module-path strings (`BUILTIN_BACKBONES`, `BUILTIN_READERS`, ...) are
the deliberate exception: a lower layer may name an upper one there, never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prune_lab"

#: Components bottom up; a component may import its own layer or any layer below, never above.
LAYERS = [
    {"runtime"},
    {"units"},
    {"plan"},
    {"backbones"},
    {"formats"},
    {"models", "pipelines"},
    {"report", "scoring", "search", "distill", "evaluation", "width", "plots", "study", "compat"},
    {"analysis"},
    {"demo"},
    {"cli"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(module: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("prune_lab")]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not base.startswith("prune_lab"):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the prune_lab modules it imports (anywhere in its body)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(t for t in _targets(module, path, node, set(files)) if t in files and t != module)
        graph[module] = found
    return graph


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_checker_sees_a_cycle_and_a_known_edge(graph):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "prune_lab.backbones.base" in graph["prune_lab.backbones.unet"]  # a relative import resolved


def test_no_module_import_cycle(graph):
    assert cycles(graph) == []


def test_no_component_import_cycle(graph):
    components: dict[str, set[str]] = {}
    for module, targets in graph.items():
        components.setdefault(component(module), set()).update(component(t) for t in targets)
    components = {k: v - {k} for k, v in components.items() if k}
    assert cycles(components) == []


def test_every_component_is_placed_in_a_layer(graph):
    assert {component(m) for m in graph} - {""} <= set(LEVEL)


@pytest.mark.parametrize("lower", sorted(LEVEL, key=lambda c: (LEVEL[c], c)))  # same order in every xdist worker
def test_imports_point_down(graph, lower):
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if component(m) == lower
        for t in targets
        if component(t) and LEVEL[component(t)] > LEVEL[lower]
    )
    assert upward == []


def test_library_never_imports_the_cli_or_the_demo(graph):
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if (component(t) == "cli" and component(m) != "cli")
        or (component(t) == "demo" and component(m) not in ("demo", "cli"))
    )
    assert bad == []


def test_architecture_md_maps_every_module():
    import re

    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"^\| `(prune_lab/[\w/]+\.py)` \|", text, re.M))
    present = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    assert listed == present
