"""The results contract (docs/design.md, "Results"): ``config.yaml``, ``metrics.jsonl`` appended as the run
goes, ``summary.json`` written last. Pure summaries here; the writer is the only I/O."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.jsonl", "summary.json"
PROVENANCE_FILE = "provenance.json"
PACKAGES = (
    "peerkd",
    "flwr",
    "flwr-datasets",
    "torch",
    "numpy",
    "ray",
    "hydra-core",
    "scikit-learn",
    "mlxtend",
    "mnist1d",
)
SUMMARY_KEYS = (
    "strategy",
    "dataset",
    "num_clients",
    "rounds",
    "seed",
    "acc_mean",
    "acc_worst",
    "acc_std",
    "teacher_acc",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "per_client",
)


def accuracy_stats(accs: list[float]) -> dict[str, float | None]:
    """Mean, worst (minimum) and population std of client accuracies; None when empty.

    ``accuracy_stats([0.5, 0.7, 0.9]) == {"acc_mean": 0.7, "acc_worst": 0.5, "acc_std": 0.1633}``
    """
    if not accs:
        return {"acc_mean": None, "acc_worst": None, "acc_std": None}
    a = np.asarray(accs, dtype=np.float64)
    return {"acc_mean": float(a.mean()), "acc_worst": float(a.min()), "acc_std": float(a.std())}


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path once it is known to be a directory this process can write results
    into (it may not exist yet: it is created, checked and removed again); else ConfigError
    naming ``out``. Runs call it before any engine starts, so a bad path costs no simulation."""
    import tempfile

    from peerkd.errors import ConfigError

    path, allowed = Path(out_dir), "a directory path that can be created and written"
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError("out", f"{str(path)!r} is an existing file, not a directory", allowed)
        created = [p for p in (path, *path.parents) if not p.exists()]
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ConfigError("out", f"{str(path)!r} is not a usable path: {exc}", allowed) from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("out", f"cannot write results in {str(path)!r}: {reason}", allowed) from None
    finally:
        for p in created:  # innermost first: leave the filesystem as found
            if p.is_dir():
                try:
                    p.rmdir()
                except OSError:
                    break
    return path


class RunWriter:
    """Writes one run's directory. Every metrics line is flushed when written, so a killed
    run keeps all it finished; the summary is replaced atomically."""

    def __init__(self, out_dir: str | os.PathLike, config: dict[str, Any], resume: bool = False):
        import yaml

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SUMMARY_FILE).unlink(missing_ok=True)  # a rerun is unfinished until it ends
        (self.dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        (self.dir / PROVENANCE_FILE).write_text(json.dumps(provenance(), indent=2))
        # resume: keep the rows written so far (``keep_rounds`` trims them to the checkpoint)
        self._metrics = open(self.dir / METRICS_FILE, "a" if resume else "w", encoding="utf-8")

    def keep_rounds(self, last_round: int) -> None:
        """Drop metrics rows of rounds after ``last_round`` (and final evaluations, and a torn
        last line): a resumed run rewrites them, so none is lost or duplicated."""
        path = self.dir / METRICS_FILE
        self._metrics.close()
        rows = read_jsonl(path) if path.is_file() else []
        kept = [r for r in rows if r.get("round", 0) <= last_round and not r.get("final_evaluation")]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)
        self._metrics = open(path, "a", encoding="utf-8")

    def log(self, *rows: dict[str, Any]) -> None:
        """Append one JSON object per row to metrics.jsonl and flush them to disk (one fsync
        per call: a round's thousands of client rows cost one disk sync, not one each)."""
        self._metrics.write("".join(json.dumps(_clean(row)) + "\n" for row in rows))
        self._metrics.flush()
        os.fsync(self._metrics.fileno())

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json (atomically) and close the metrics file."""
        tmp = self.dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(_clean(summary), indent=2))
        os.replace(tmp, self.dir / SUMMARY_FILE)
        self._metrics.close()


def provenance() -> dict[str, Any]:
    """Package versions, Python, machine and the git revision of the peerkd source tree."""
    import platform
    import subprocess
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    src = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_revision": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, skipping a torn last line left by a killed run (and any
    other line that is not a JSON object; ``read_jsonl_counted`` counts them)."""
    return read_jsonl_counted(path)[0]


def read_jsonl_counted(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON-lines file, and how many lines were skipped: torn, not UTF-8, not JSON, not an object."""
    rows, skipped = [], 0
    for line in Path(path).read_bytes().splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # torn or garbage; RecursionError: "[[[[..." nested too deep
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif line.strip():
            skipped += 1
    return rows, skipped
