"""The files of ``peerkd report`` and ``peerkd compare``: read a results directory, write the tables.

``simulations.report`` holds the maths and the text, as pure functions of loaded runs; this
module is their only I/O: it reads run directories (``summary.json``, ``config.yaml``,
``metrics.jsonl``, ``provenance.json``) and writes ``report.md`` with its PNG plots and a
comparison's ``comparison.csv`` / ``comparison.md``.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peerkd.errors import ConfigError
from peerkd.round.results import CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, SUMMARY_FILE, read_jsonl
from simulations.report import COLUMNS, compare_table, flatten, markdown_table, report_markdown

log = logging.getLogger("peerkd")
REPORT_FILE, SWEEP_FILE, RUNS_FILE = "report.md", "sweep.json", "runs.csv"
COMPARISON_CSV, COMPARISON_MD = "comparison.csv", "comparison.md"


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """A CSV file with a header of ``fields``; keys of a row not in ``fields`` are left out."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def load_run(run_dir: Path) -> dict[str, Any]:
    """One finished run's files: summary, flattened config, round rows of metrics.jsonl, provenance."""
    import yaml

    cfg_path, metrics, prov = run_dir / CONFIG_FILE, run_dir / METRICS_FILE, run_dir / PROVENANCE_FILE
    config = flatten(yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    return {
        "path": str(run_dir),
        "summary": json.loads((run_dir / SUMMARY_FILE).read_text()),
        "config": config,
        "rounds": [r for r in read_jsonl(metrics) if r.get("type") == "round"] if metrics.is_file() else [],
        "provenance": json.loads(prov.read_text()) if prov.is_file() else None,
        "chance": chance_level(
            config.get("data.name"),
            config.get("data.path"),
            config.get("data.label"),
            int(config.get("data.size") or 0),
        ),
    }


@functools.lru_cache(maxsize=16)
def chance_level(name: str | None, path: str | None, label: str | None, size: int = 0) -> float | None:
    """The share of the dataset's commonest class: what always guessing it scores on the test
    split (stratified splits keep the class shares). None where the data can't be read here
    (a user file moved, or a run without a data config)."""
    from peerkd.world.data import load_dataset

    if not name:
        return None
    try:
        y = load_dataset(name, path or None, label, size).y.reshape(-1)  # text: every position's next token
    except (ConfigError, OSError, ValueError):
        return None
    return float(np.bincount(y).max() / len(y))


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


def write_comparison(root: Path, summaries: list[dict[str, Any]], rules: list[str], title: str) -> list[dict[str, Any]]:
    """Write ``comparison.csv`` and ``comparison.md`` (``title`` above the table): one row per
    rule, mean ± std over seeds. Returns the rows."""
    rows = compare_table(summaries, rules)
    write_csv(root / COMPARISON_CSV, COLUMNS, rows)
    (root / COMPARISON_MD).write_text(title + markdown_table(rows))
    return rows
