"""The import graph of peerkd's three layers, read with ``ast`` (imports inside functions too).

    python tests/import_graph.py [REPO]     # edges between layers, any that run upward, and any module cycle

The layers are ``simulations -> strategies -> peerkd``: a module may import its own layer
or a lower one, never a higher one, and no module may import itself through a chain of
other modules (a cycle), not even from inside a function. tests/test_layers.py asserts both.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

LAYERS = ("peerkd", "strategies", "simulations")  # lowest first


def _trees(repo: Path) -> Iterator[tuple[Path, ast.Module]]:
    """Every source file of the layers, parsed."""
    for layer in LAYERS:
        for path in sorted((repo / layer).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def imports(repo: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of a project module."""
    edges = []
    for path, tree in _trees(repo):
        module = ".".join(path.relative_to(repo).with_suffix("").parts)
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            )
            edges += [(module, name, node.lineno) for name in names if name.split(".")[0] in LAYERS]
    return edges


def upward(edges: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The imports of a higher layer by a lower one."""
    rank = {layer: k for k, layer in enumerate(LAYERS)}
    return [e for e in edges if rank[e[1].split(".")[0]] > rank[e[0].split(".")[0]]]


def module_name(repo: Path, path: Path) -> str:
    """Dotted name of a source file; a package is its ``__init__`` under the package's own name."""
    return ".".join(path.relative_to(repo).with_suffix("").parts).removesuffix(".__init__")


def resolve(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement loads (no implicit edges to parent packages).

    Parameters
    ----------
    node
        The ``import`` or ``from ... import`` statement.
    module, is_package
        Dotted name of the importing module, and whether it is a package ``__init__``.
    known
        Dotted names of all project modules.

    Returns
    -------
    list of str
        ``import a.b.c`` gives ``a.b.c``; ``from a.b import c`` gives ``a.b.c`` when that is a module,
        else ``a.b``; relative imports count from the importing module's package. A name that is not
        a project module falls back to its longest prefix that is; names outside the project give nothing.
    """

    def project(name: str) -> list[str]:
        parts = name.split(".")
        found = [".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in known]
        return found[:1]

    if isinstance(node, ast.Import):
        return list(dict.fromkeys(m for alias in node.names for m in project(alias.name)))
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 > len(package) - 1:
            return []  # beyond the top-level package: not ours to judge
        base = ".".join(package[: len(package) - (node.level - 1)] + ([base] if base else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out += [sub] if alias.name != "*" and sub in known else project(base)
    return list(dict.fromkeys(out))


def graph(repo: Path) -> list[tuple[str, str, int]]:
    """(importing module, loaded module, line) for every import of a project module, resolved."""
    known = {module_name(repo, path) for layer in LAYERS for path in (repo / layer).rglob("*.py")}
    edges = []
    for path, tree in _trees(repo):
        module = module_name(repo, path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges += [(module, dst, node.lineno) for dst in resolve(node, module, path.stem == "__init__", known)]
    return edges


def cycles(edges: Iterable[tuple[str, ...]]) -> list[list[str]]:
    """Strongly connected components of more than one module, plus any module importing itself.

    Iterative Tarjan over ``(src, dst, ...)`` edges; each component sorted, components sorted.
    """
    succ: dict[str, list[str]] = {}
    for src, dst, *_ in edges:
        succ.setdefault(src, []).append(dst)
        succ.setdefault(dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1 or v in succ[v]:
                    found.append(sorted(component))
    return sorted(found)


def cycle_path(component: list[str], edges: Iterable[tuple[str, ...]]) -> list[str]:
    """One concrete cycle through a component: its first module, a shortest way round, back to it."""
    members = set(component)
    succ: dict[str, set[str]] = {}
    for src, dst, *_ in edges:
        if src in members and dst in members:
            succ.setdefault(src, set()).add(dst)
    start = component[0]
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(succ.get(v, ())):
            if w == start:
                path = [start, v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise ValueError(f"{component} is not a cycle of these edges")


def main(repo: str = ".") -> int:
    edges = imports(Path(repo))
    counts = Counter((a.split(".")[0], b.split(".")[0]) for a, b, _ in edges)
    for (src, dst), n in sorted(counts.items()):
        print(f"{src:12s} -> {dst:12s} {n:3d} imports")
    bad = upward(edges)
    for src, dst, line in bad:
        print(f"UPWARD: {src} (line {line}) imports {dst}")
    print(f"{len(bad)} upward imports")
    resolved = graph(Path(repo))
    loops = cycles(resolved)
    for component in loops:
        print("CYCLE: " + " -> ".join(cycle_path(component, resolved)))
    print(f"{len(loops)} cycles")
    return 1 if bad or loops else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
