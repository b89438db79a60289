"""Runners: one run in Flower's simulation engine, a paired comparison of rules, and the
report of any results directory (read from its files alone)."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

from peerkd.errors import ConfigError
from peerkd.models import build_model
from peerkd.results import CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, SUMMARY_FILE, read_jsonl
from peerkd.server_app import RunSpec, make_server_app
from peerkd.world import build_world
from simulations.report import COLUMNS, compare_table, flatten, markdown_table, report_markdown

log = logging.getLogger("peerkd")


def preflight(spec: RunSpec, strategy) -> None:
    """Fail fast, before Ray starts, on anything the world or the rule would refuse."""
    world = build_world(spec.world)
    for name in sorted(set(spec.students)):
        build_model(name, world.data.input_shape, world.num_classes, seed=0)
    strategy.check(spec.students, spec.world.num_clients)


def run_one(
    spec: RunSpec, strategy, out_dir: str | Path, config: dict[str, Any], resources: dict[str, float], client_app=None,
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one rule on one world in Flower's simulation engine; return its summary.

    Parameters
    ----------
    spec : RunSpec
        World and training settings.
    strategy : DistillationStrategy
        The exchange rule.
    out_dir : str | Path
        Results directory (config.yaml, metrics.jsonl, summary.json).
    config : dict
        The resolved config, written as config.yaml.
    resources : dict
        Client resources for the Ray backend (``num_cpus``, ``num_gpus``).
    client_app : flwr.clientapp.ClientApp | None
        The clients' app (default: peerkd's); tests pass faulty ones.
    ray_init : dict | None
        Extra ``ray.init`` arguments (a sweep running runs side by side gives each its own
        local Ray instance and a share of the CPUs).
    """
    from flwr.simulation import run_simulation

    if client_app is None:
        from peerkd.client_app import app as client_app

    preflight(spec, strategy)
    server = make_server_app(spec, strategy, str(out_dir), config)
    run_simulation(
        server_app=server, client_app=client_app, num_supernodes=spec.world.num_clients,
        backend_config={"client_resources": resources,
                        "init_args": {"logging_level": "ERROR", "log_to_driver": False, **(ray_init or {})}},
    )
    summary_path = Path(out_dir) / SUMMARY_FILE
    if not summary_path.is_file():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    return json.loads(summary_path.read_text())


def compare(
    runs: list[tuple[str, int, RunSpec, Any]], out_dir: str | Path, config: dict[str, Any], resources: dict[str, float], rules: list[str],
) -> list[dict[str, Any]]:
    """Run every (rule, seed) pair, each in ``out_dir/<rule>-seed<seed>``; write the tables.

    Writes ``runs.csv`` (one row per run, as runs finish), ``comparison.csv`` and
    ``comparison.md`` (one row per rule, mean ± std over seeds). Returns the table rows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    t0 = time.perf_counter()
    for k, (rule, seed, spec, strategy) in enumerate(runs, start=1):
        log.info("run %d/%d: %s, seed %d (%.0f s so far)", k, len(runs), rule, seed, time.perf_counter() - t0)
        summary = run_one(spec, strategy, out / f"{rule}-seed{seed}", {**config, "strategy": {**config["strategy"], "name": rule}, "seed": seed}, resources)
        summaries.append(summary)
        _write_runs_csv(out / "runs.csv", summaries)
    rows = compare_table(summaries, rules)
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    world = runs[0][2].world
    header = (f"# peerkd comparison\n\n{world.dataset}, {world.num_clients} clients, {world.partition} partition"
              f"{f' (alpha {world.partition_alpha:g})' if world.partition == 'dirichlet' else ''}, {runs[0][2].rounds} rounds, "
              f"seeds {sorted({s for _, s, _, _ in runs})}; accuracy on the held-out test split, "
              f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s.\n\n")
    (out / "comparison.md").write_text(header + markdown_table(rows))
    write_report(out)
    return rows


RUN_FIELDS = ("strategy", "seed", "dataset", "num_clients", "rounds", "acc_mean", "acc_worst", "acc_std",
              "teacher_acc", "bytes_up", "bytes_down", "wall_s")


def _write_runs_csv(path: Path, summaries: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)


REPORT_FILE, SWEEP_FILE = "report.md", "sweep.json"


def load_run(run_dir: Path) -> dict[str, Any]:
    """One finished run's files: summary, flattened config, round rows of metrics.jsonl, provenance."""
    import yaml

    cfg_path, metrics, prov = run_dir / CONFIG_FILE, run_dir / METRICS_FILE, run_dir / PROVENANCE_FILE
    return {
        "path": str(run_dir),
        "summary": json.loads((run_dir / SUMMARY_FILE).read_text()),
        "config": flatten(yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {},
        "rounds": [r for r in read_jsonl(metrics) if r.get("type") == "round"] if metrics.is_file() else [],
        "provenance": json.loads(prov.read_text()) if prov.is_file() else None,
    }


def load_results(root: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Every finished run (a directory with summary.json) at or below ``root``, and the number
    of unfinished ones (metrics.jsonl but no summary.json)."""
    root, allowed = Path(root), "a results directory of peerkd run, compare or sweep"
    if not root.is_dir():
        raise ConfigError("dir", f"no such directory {str(root)!r}", allowed)
    finished = sorted(p.parent for p in root.rglob(SUMMARY_FILE))
    unfinished = sum(1 for p in root.rglob(METRICS_FILE) if not (p.parent / SUMMARY_FILE).is_file())
    if not finished:
        raise ConfigError("dir", f"no finished runs (summary.json) under {str(root)!r}", allowed)
    return [load_run(d) for d in finished], unfinished


def write_report(root: str | Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``root`` from the files below it; return the report's path."""
    from simulations.plots import png_bytes, report_figures

    root = Path(root)
    runs, unfinished = load_results(root)
    sweep = json.loads((root / SWEEP_FILE).read_text()) if (root / SWEEP_FILE).is_file() else {}
    plots = []
    for name, caption, fig in report_figures(runs):
        (root / name).write_bytes(png_bytes(fig))
        plots.append((name, caption))
    path = root / REPORT_FILE
    path.write_text(report_markdown(runs, unfinished, sweep.get("wall_s"), plots))
    log.info("report: %s (%d runs, %d plots)", path, len(runs), len(plots))
    return path
