"""The house's one direction (simulations -> strategies -> peerkd), no module cycles, and config
that agrees with itself across entry points."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from import_graph import LAYERS, cycle_path, cycles, graph, imports, upward

REPO = Path(__file__).resolve().parent.parent


def test_no_layer_imports_a_higher_one():
    # Prepare / Execute: every import statement of the project, inside functions too.
    edges = imports(REPO)
    # Assert: there are edges to judge, and none runs upward.
    assert any(dst.startswith("peerkd") for src, dst, _ in edges if src.startswith("strategies"))
    assert upward(edges) == []


def test_no_module_imports_itself_through_a_cycle():
    # Prepare / Execute: every import resolved to the module it loads, inside functions too.
    edges = graph(REPO)
    found = cycles(edges)
    # Assert: there are edges to judge, and no module reaches itself through them.
    assert any(src.startswith("strategies") and dst.startswith("peerkd") for src, dst, _ in edges)
    listing = "\n".join("  " + " -> ".join(cycle_path(c, edges)) for c in found)
    assert found == [], f"{len(found)} import cycles (break each, e.g. move the shared part down a module):\n{listing}"


def test_cycles_finds_each_component_once():
    # Prepare: a -> b -> c -> a is a cycle and d only leads into it; e imports itself; f -> g is a chain.
    edges = [("c", "a", 3), ("a", "b", 1), ("d", "a", 4), ("b", "c", 2)]
    # Execute
    found = cycles(edges)
    # Assert: one component without d, and one concrete path round it from its first module.
    assert found == [["a", "b", "c"]]
    assert cycle_path(found[0], edges) == ["a", "b", "c", "a"]
    assert cycles(edges + [("e", "e", 5)]) == [["a", "b", "c"], ["e"]]
    assert cycle_path(["e"], [("e", "e", 5)]) == ["e", "e"]
    assert cycles([("f", "g", 6)]) == []


def test_graph_resolves_function_level_imports_of_submodules(tmp_path):
    # Prepare: peerkd.a and peerkd.b import each other, but only inside functions; the package
    # __init__ re-exports a, and c uses relative imports and a name that is not a module.
    files = {
        "__init__.py": "from peerkd.a import f\n",
        "a.py": "def f():\n    from peerkd import b\n    return b\n",
        "b.py": "import os\n\n\ndef g():\n    import peerkd.a\n    return peerkd.a\n",
        "c.py": "from . import a\nfrom .b import g\nfrom peerkd import f\n",
    }
    (tmp_path / "peerkd").mkdir()
    for name, text in files.items():
        (tmp_path / "peerkd" / name).write_text(text)
    # Execute
    edges = graph(tmp_path)
    # Assert: `from peerkd import b` loads peerkd.b, `from peerkd import f` loads the package, no edge
    # to a parent package is made up, and the one cycle is a <-> b.
    assert sorted(edges) == [
        ("peerkd", "peerkd.a", 1),
        ("peerkd.a", "peerkd.b", 2),
        ("peerkd.b", "peerkd.a", 5),
        ("peerkd.c", "peerkd", 3),
        ("peerkd.c", "peerkd.a", 1),
        ("peerkd.c", "peerkd.b", 2),
    ]
    assert cycles(edges) == [["peerkd.a", "peerkd.b"]]


@pytest.mark.parametrize("layer", LAYERS[:2])
def test_importing_a_layer_loads_nothing_above_it(layer):
    # Execute: import every module of the layer in a fresh interpreter.
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / layer).rglob("*.py")
        if p.stem != "__main__"
    )
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'peerkd', 'strategies', 'simulations'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    # Assert: only this layer and those below it were loaded.
    assert eval(out) == sorted(LAYERS[: LAYERS.index(layer) + 1])


def test_flwr_run_config_defaults_are_peerkd_runs():
    from simulations.flwr_app import RUN_CONFIG_KEYS, run_config_defaults

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == run_config_defaults()
    assert set(declared) == set(RUN_CONFIG_KEYS)
    assert (declared["data"], declared["rounds"]) == ("mnist5k", 20)
