"""The package tree is the architecture: lower layers never import higher ones, and no module
imports itself back through others (no cycles). Every import counts, also those inside
functions (the lazy ones that keep `chat --help` fast) and those only for type checking.

    core < models < engine.output < engine < client < {repl, api, serve} < cli

repl, api (api.py + responses.py) and serve are peers: none imports another.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatcli"

RANKS = {"core": 0, "models": 1, "engine.output": 2, "engine": 3, "client": 4, "repl": 5,
         "api": 5, "serve": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    """The layer a chatcli module belongs to; None for the package's face (chatcli/__init__,
    __main__, __version__)."""
    rest = module.split(".")[1:]
    if not rest or rest[0] in ("__main__", "__version__"):
        return None
    if rest[0] in ("api", "responses"):
        return "api"
    if rest[:2] == ["engine", "output"]:
        return "engine.output"
    return rest[0]


def imports(path: Path) -> set[str]:
    """The chatcli modules ``path`` imports (``from x import y`` counts as x.y when y is a
    module, else x)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chatcli"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("chatcli"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if MODULES.get(sub) else target)
    return found - {me}


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}
GRAPH = {module_name(f): imports(f) for f in FILES}


def test_no_module_imports_a_higher_layer_or_a_peer():
    wrong = []
    for module, targets in GRAPH.items():
        mine = layer(module)
        if mine is None:
            continue
        for target in targets:
            theirs = layer(target)
            if theirs is None or theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_import_graph_has_no_cycle():
    # Only edges to modules (a package's __init__ counts as the package).
    graph = {m: {t for t in ts if t in MODULES} for m, ts in GRAPH.items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path
                              else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_layers_are_the_tree():
    """Every module sits in a layer package (nothing flat beside them but the package face)."""
    flat = {m for m, f in MODULES.items() if f.parent == PACKAGE and f.name != "__init__.py"
            and layer(m) not in (None, "api")}
    assert flat == set(), flat
    assert all(layer(m) in RANKS for m in MODULES if layer(m)), \
        {m: layer(m) for m in MODULES if layer(m) and layer(m) not in RANKS}
