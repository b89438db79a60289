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
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from peerkd.errors import ConfigError
from peerkd.round import results
from peerkd.round.results import CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, SUMMARY_FILE, read_jsonl_counted
from simulations.report import COLUMNS, compare_table, flatten, markdown_table, report_markdown

log = logging.getLogger("peerkd")
REPORT_FILE, SWEEP_FILE, RUNS_FILE = "report.md", "sweep.json", "runs.csv"
COMPARISON_CSV, COMPARISON_MD = "comparison.csv", "comparison.md"


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """A CSV file with a header of ``fields``; keys of a row not in ``fields`` are left out."""
    with open(path, "w", newline="") as f:
        csv_rows(f, fields, rows)


def csv_rows(f: IO[str], fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """CSV text into ``f``: a header of ``fields``, then the rows (keys not in ``fields`` left out)."""
    writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


class DamagedRun(ConfigError):
    """A run directory (the field) whose files do not parse or break the summary contract:
    ``runs/x: summary.json does not parse (line 1 col 5)``. Reports skip such runs; sweeps redo them."""

    def __init__(self, run_dir: str, file: str, problem: str):
        super().__init__(run_dir, problem)
        self.file, self.problem = file, problem  # file: the damaged one's name

    def __reduce__(self):
        return type(self), (self.field, self.file, self.problem)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63  # int64: what seeds and counts fit


def is_number(v: Any) -> bool:
    """A finite number (not a boolean), as JSON and YAML give it."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


KINDS: dict[str, Callable[[Any], bool]] = {
    "text": lambda v: isinstance(v, str),
    "text or null": lambda v: v is None or isinstance(v, str),
    "an integer": _is_int,
    "a positive integer": lambda v: _is_int(v) and v > 0,  # a divisor of the traffic per client and round
    "a count": lambda v: _is_int(v) and v >= 0,
    "a count or null": lambda v: v is None or (_is_int(v) and v >= 0),
    "a number": is_number,
    "a number or null": lambda v: v is None or is_number(v),
    "a share (0 to 1) or null": lambda v: v is None or (is_number(v) and 0 <= v <= 1),
    "true, false or null": lambda v: v is None or isinstance(v, bool),
    "a list of clients": lambda v: (
        isinstance(v, list) and all(isinstance(c, dict) and KINDS["a share (0 to 1) or null"](c.get("acc")) for c in v)
    ),
}
# The summary contract (``SUMMARY_KEYS``) with each key's kind, then keys only some runs have that reports read.
SUMMARY_TYPES = {
    "strategy": "text",
    "dataset": "text",
    "num_clients": "a positive integer",
    "rounds": "a positive integer",
    "seed": "an integer",
    "acc_mean": "a share (0 to 1) or null",
    "acc_worst": "a share (0 to 1) or null",
    "acc_std": "a share (0 to 1) or null",
    "teacher_acc": "a share (0 to 1) or null",
    "bytes_up": "a count",
    "bytes_down": "a count",
    "wall_s": "a number",
    "per_client": "a list of clients",
}
SUMMARY_OPTIONAL = {
    "ppl_mean": "a number or null",
    "teacher_ppl": "a number or null",
    "floor_ppl": "a number or null",
    "private": "true, false or null",
}
# Flattened config keys a report reads (the dataset, for the chance level; the partition, for the text).
CONFIG_TYPES = {
    "data.name": "text or null",
    "data.path": "text or null",
    "data.label": "text or null",
    "data.size": "a count or null",
    "partition.name": "text or null",
}
PROVENANCE_TYPES = {
    "git_revision": "text or null",
    "git_dirty": "true, false or null",
    "python": "text or null",
    "cpu_count": "a count or null",
}
# What the curves read of a round row (a row without bytes_up or bytes_down counts 0).
ROUND_NUMBERS = {"acc_mean": "a share (0 to 1) or null", "bytes_up": "a count", "bytes_down": "a count"}
MAX_NODES = 100_000  # values in one config.yaml: YAML aliases can nest a small file into billions


def _kind(v: Any) -> str:
    """What a JSON/YAML value is, in words: ``a string``, ``NaN``, ``a list``."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else "infinite"
    if _is_int(v) or isinstance(v, float):
        return f"the number {v:g}"
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", int: "an integer too large"}
    return "null" if v is None else names.get(type(v), f"a {type(v).__name__}")


def check_fields(name: str, record: dict[str, Any], kinds: dict[str, str], required: bool = False) -> None:
    """Raise ValueError naming the first key of ``record`` that is not of its kind in ``kinds``
    (``summary.json: acc_mean is a string, not a number or null``); with ``required``, any key missing."""
    if required and (missing := [k for k in kinds if k not in record]):
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"{name} lacks {listed} (keys of the summary contract)")
    for key, kind in kinds.items():
        if key in record and not KINDS[kind](record[key]):
            raise ValueError(f"{name}: {key} is {_kind(record[key])}, not {kind}")


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    """``parse`` of a file's text; ValueError saying in a few words why it cannot be read."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not text.strip():
        raise ValueError(f"{path.name} is empty")
    try:
        return parse(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} col {exc.colno}"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # a ReaderError (a control character) has a position instead
        where = f"line {mark.line + 1} col {mark.column + 1}" if mark else f"character {getattr(exc, 'position', '?')}"
    except RecursionError:
        where = "nests too deep"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        where = str(exc).splitlines()[0]
    raise ValueError(f"{path.name} does not parse ({where})")


def read_object(path: Path, parse: Callable[[str], Any] = json.loads) -> dict[str, Any]:
    """The file's value, refused unless it is a mapping (a JSON object): ValueError saying why,
    ``summary.json does not parse (line 1 col 5)``."""
    value = _read(path, parse)
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} is {_kind(value)}, not a mapping of keys to values")
    return value


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary.json, checked against the summary contract; DamagedRun if it is not."""
    try:
        summary = read_object(run_dir / SUMMARY_FILE)
        check_fields(SUMMARY_FILE, summary, SUMMARY_TYPES, required=True)
        check_fields(SUMMARY_FILE, summary, SUMMARY_OPTIONAL)
    except ValueError as exc:
        raise DamagedRun(str(run_dir), SUMMARY_FILE, str(exc)) from None
    return summary


def read_config_tree(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml as written (``{}`` where there is none); DamagedRun if it does not
    parse, is not a mapping, or a key a report reads (``CONFIG_TYPES``) has the wrong kind."""
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        tree = read_object(path, yaml.safe_load)
        _count_nodes(tree, [MAX_NODES])
        check_fields(CONFIG_FILE, flatten(tree), CONFIG_TYPES)
    except RecursionError:
        raise DamagedRun(str(run_dir), CONFIG_FILE, f"{CONFIG_FILE} nests too deep") from None
    except ValueError as exc:
        raise DamagedRun(str(run_dir), CONFIG_FILE, str(exc)) from None
    return tree


def _count_nodes(value: Any, budget: list[int]) -> None:
    """ValueError once more than ``budget[0]`` values were seen (shared YAML aliases counted each time)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"{CONFIG_FILE} holds more than {MAX_NODES} values")
    if isinstance(value, (dict, list)):
        for item in value.values() if isinstance(value, dict) else value:
            _count_nodes(item, budget)


def _read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Round rows of metrics.jsonl whose numbers are numbers; damaged lines skipped with a warning."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    try:
        rows, skipped = read_jsonl_counted(path)
    except OSError as exc:
        log.warning("%s: cannot read %s (%s); no per-round curves", run_dir, METRICS_FILE, exc.strerror or exc)
        return []
    rounds = [r for r in rows if r.get("type") == "round"]
    good = [r for r in rounds if all(KINDS[kind](r.get(k, 0)) for k, kind in ROUND_NUMBERS.items())]
    if skipped := skipped + len(rounds) - len(good):
        log.warning("%s: %d damaged line%s of %s skipped", run_dir, skipped, "s" * (skipped > 1), METRICS_FILE)
    return good


def _read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """provenance.json, or None where there is none or it is damaged (with a warning: the numbers still stand)."""
    path = run_dir / PROVENANCE_FILE
    if not path.exists():
        return None
    try:
        prov = read_object(path)
        check_fields(PROVENANCE_FILE, prov, PROVENANCE_TYPES)
        if not isinstance(packages := prov.get("packages", {}), dict) or not all(
            KINDS["text or null"](v) for v in packages.values()
        ):
            raise ValueError(f"{PROVENANCE_FILE}: packages is not a mapping of names to versions")
    except ValueError as exc:
        log.warning("%s: %s; its provenance is left out", run_dir, exc)
        return None
    return prov


def load_run(run_dir: Path) -> dict[str, Any]:
    """One finished run's files: summary, flattened config, round rows of metrics.jsonl, provenance.

    Raises
    ------
    DamagedRun
        summary.json or config.yaml does not parse, or the summary breaks its contract.
    """
    summary, config = read_summary(run_dir), flatten(read_config_tree(run_dir))
    return {
        "path": str(run_dir),
        "summary": summary,
        "config": config,
        "rounds": _read_rounds(run_dir),
        "provenance": _read_provenance(run_dir),
        "chance": chance_level(
            config.get("data.name"), config.get("data.path"), config.get("data.label"), config.get("data.size") or 0
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


class Results(NamedTuple):
    """What a results directory holds: finished runs, the number of unfinished ones, and the
    finished ones skipped because their files are damaged (``DamagedRun``, one per run)."""

    runs: list[dict[str, Any]]
    unfinished: int
    skipped: list[DamagedRun]


def load_results(root: str | Path) -> Results:
    """Every finished run (a directory with summary.json) at or below ``root``; a run whose
    files are damaged is skipped, with one warning naming it and why.

    Raises
    ------
    ConfigError
        ``root`` is not a directory, holds no finished run, or every finished run is damaged.
    """
    root, allowed = Path(root), "a results directory of peerkd run, compare or sweep"
    if not root.is_dir():
        raise ConfigError("dir", f"no such directory {str(root)!r}", allowed)
    finished = sorted(p.parent for p in root.rglob(SUMMARY_FILE))
    unfinished = sum(1 for p in root.rglob(METRICS_FILE) if not (p.parent / SUMMARY_FILE).exists())
    if not finished:
        raise ConfigError("dir", f"no finished runs (summary.json) under {str(root)!r}", allowed)
    runs, skipped = [], []
    for run_dir in finished:
        try:
            runs.append(load_run(run_dir))
        except DamagedRun as exc:
            log.warning("skipped %s", exc)
            skipped.append(exc)
    if not runs:
        raise ConfigError("dir", f"every finished run under {str(root)!r} is damaged ({len(skipped)} skipped)")
    return Results(runs, unfinished, skipped)


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never half (``peerkd.round.results.write_atomic``:
    a new file beside it, never through a planted link, then renamed over it); ConfigError (naming
    ``dir``) if it cannot be written."""
    try:
        results.write_atomic(path, data)
    except OSError as exc:
        raise ConfigError(
            "dir",
            f"cannot write {path.name} in {str(path.parent)!r}: {exc.strerror or exc}",
            "a directory you can write: copy the results elsewhere and report the copy",
        ) from None


def _sweep_wall_s(root: Path) -> float | None:
    """The sweep's wall time from sweep.json, or None (none there, or damaged: a warning)."""
    if not (path := root / SWEEP_FILE).exists():
        return None
    try:
        wall_s = read_object(path).get("wall_s")
    except ValueError as exc:
        log.warning("%s: %s; the report leaves out the sweep's wall time", root, exc)
        return None
    return wall_s if is_number(wall_s) else None


def write_report(root: str | Path, results: Results | None = None) -> Path:
    """Write ``report.md`` and its PNG plots into ``root`` from the files below it (``results``:
    as ``load_results(root)`` read them); return the report's path."""
    from simulations.plots import png_bytes, report_figures

    root = Path(root)
    runs, unfinished, skipped = results or load_results(root)
    plots = []
    for name, caption, fig in report_figures(runs):
        write_atomic(root / name, png_bytes(fig))
        plots.append((name, caption))
    path = root / REPORT_FILE
    skips = [(exc.field, exc.problem) for exc in skipped]
    write_atomic(path, report_markdown(runs, unfinished, _sweep_wall_s(root), plots, skips).encode())
    log.info("report: %s (%d runs, %d plots)", path, len(runs), len(plots))
    return path


def write_comparison(root: Path, summaries: list[dict[str, Any]], rules: list[str], title: str) -> list[dict[str, Any]]:
    """Write ``comparison.csv`` and ``comparison.md`` (``title`` above the table): one row per
    rule, mean ± std over seeds. Returns the rows."""
    import io

    rows = compare_table(summaries, rules)
    table = io.StringIO(newline="")
    csv_rows(table, COLUMNS, rows)
    write_atomic(root / COMPARISON_CSV, table.getvalue().encode())
    write_atomic(root / COMPARISON_MD, (title + markdown_table(rows)).encode())
    return rows
