"""The import graph of peerkd's three layers, read with ``ast`` (imports inside functions too).

    python tests/import_graph.py [REPO]     # edges between layers, and any that run upward

The layers are ``simulations -> strategies -> peerkd``: a module may import its own layer
or a lower one, never a higher one. tests/test_layers.py asserts this.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

LAYERS = ("peerkd", "strategies", "simulations")  # lowest first


def imports(repo: Path) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of a project module."""
    edges = []
    for layer in LAYERS:
        for path in sorted((repo / layer).rglob("*.py")):
            module = ".".join(path.relative_to(repo).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
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


def main(repo: str = ".") -> int:
    edges = imports(Path(repo))
    counts = Counter((a.split(".")[0], b.split(".")[0]) for a, b, _ in edges)
    for (src, dst), n in sorted(counts.items()):
        print(f"{src:12s} -> {dst:12s} {n:3d} imports")
    bad = upward(edges)
    for src, dst, line in bad:
        print(f"UPWARD: {src} (line {line}) imports {dst}")
    print(f"{len(bad)} upward imports")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
