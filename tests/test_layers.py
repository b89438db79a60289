"""The house's one direction (simulations -> strategies -> peerkd), and config that agrees
with itself across entry points."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from import_graph import LAYERS, imports, upward

REPO = Path(__file__).resolve().parent.parent


def test_no_layer_imports_a_higher_one():
    # Prepare / Execute: every import statement of the project, inside functions too.
    edges = imports(REPO)
    # Assert: there are edges to judge, and none runs upward.
    assert any(dst.startswith("peerkd") for src, dst, _ in edges if src.startswith("strategies"))
    assert upward(edges) == []


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
