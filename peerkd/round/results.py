"""The results contract (docs/design.md, "Results"): ``config.yaml``, ``metrics.jsonl`` appended as the run
goes, ``summary.json`` written last. Pure summaries here; the writer and the run directory's lock are the only I/O.

A run directory belongs to one run (``hold_run_dir``). Its files are created beside their names and renamed
over them, never opened through a symbolic link someone planted there: a link is replaced, or refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import mmap
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from peerkd.errors import ConfigError

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.yaml", "metrics.jsonl", "summary.json"
PROVENANCE_FILE = "provenance.json"
LOCK_FILE = ".lock"  # held by the run writing the directory; holds its pid
_CREATE = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # a planted link fails with ELOOP, never written through
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


@contextlib.contextmanager
def hold_run_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out_dir`` (created if missing) for one run, until the block ends.

    An exclusive ``filelock`` lock on ``<out>/.lock``, which records the holder's pid; the OS
    drops it when the process dies, however it dies. Re-entrant in this process (a runner
    holds the directory and then calls ``run_on``, which holds it too).

    Raises
    ------
    ConfigError
        Another process holds ``out_dir`` (naming its pid), or the lock cannot be written there.
    """
    from filelock import FileLock, Timeout

    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(
            path.absolute() / LOCK_FILE, thread_local=False, is_singleton=True, blocking=False, on_acquired=_write_pid
        )
        lock.acquire()
    except Timeout:
        holder = f"{path} is held by another run (pid {_holder_pid(path / LOCK_FILE)})"
        raise ConfigError("out", holder, "another out directory, or this one once that run has ended") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield path
    finally:
        lock.release()


def _write_pid(fd: int) -> None:
    """The lock's holder: this process."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder_pid(lock_file: Path) -> str:
    """The pid a lock file records, or ``unknown`` (its holder has not written it yet)."""
    try:
        with open(os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="ascii") as f:
            pid = f.read(32).strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return pid if pid.isdigit() else "unknown"


def write_error(out_dir: str | os.PathLike, exc: OSError) -> ConfigError:
    """``exc``, met writing results in ``out_dir``, as a ConfigError naming ``out`` (one line)."""
    where = exc.filename or out_dir
    reason = "a symbolic link: a run writes only files of its own" if exc.errno == errno.ELOOP else exc.strerror
    allowed = "a directory this process can write, with free space"
    return ConfigError("out", f"cannot write {str(where)!r}: {reason or exc}", allowed)


def is_write_error(out_dir: str | os.PathLike, exc: OSError) -> bool:
    """Whether ``exc`` means results cannot be written in ``out_dir``: a full disk or quota, a
    read-only filesystem, or any error on a file inside ``out_dir``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return True
    if not isinstance(exc.filename, (str, bytes, os.PathLike)):
        return False
    return Path(os.path.abspath(os.fsdecode(exc.filename))).is_relative_to(Path(out_dir).absolute())


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with a file holding ``data`` (text as UTF-8), whole or not at all (a link
    at ``path`` is replaced, its target untouched)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_file(path: Path, reuse: Path | None = None, direct: bool = False) -> Iterator[IO[bytes]]:
    """A new file to write ``path``'s content to: created beside it under a name of its own
    (exclusively, never through a planted link), fsynced and renamed onto ``path`` when the block
    ends without error; removed otherwise. Every results file and checkpoint is written so.

    With ``reuse``, an older file of the caller's that nothing reads any more is moved to that name
    and written over from its start, cut where the new content ends (a link, a file with other
    names, or none there: a new file as without). Its pages are written again instead of fresh ones
    faulted in: on a VM, where freed memory goes back to the host, a new 530 MB checkpoint took
    4–5.5 s of CPU and one written over 0.7–0.8 s (2-core box).

    With ``direct``, the content goes to the disk without the page cache (``DirectFile``) where the
    filesystem allows it (else as without): 0.57 s of CPU for that new 530 MB file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = _moved_here(reuse, tmp) if reuse is not None else None
        fd = os.open(tmp, os.O_WRONLY | os.O_EXCL | _CREATE, 0o666) if fd is None else fd
        if direct and _set_direct(fd):
            try:
                with contextlib.closing(DirectFile(fd)) as direct_file:
                    yield direct_file
                    direct_file.finish()
            finally:
                os.close(fd)
        else:
            with open(fd, "wb") as f:
                yield f
                f.truncate()  # at the end of what was written: a reused file's tail goes
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _set_direct(fd: int, on: bool = True) -> bool:
    """Switch ``fd`` to O_DIRECT (or back); False (``fd`` as it was) where the filesystem or OS has none."""
    flag = getattr(os, "O_DIRECT", 0)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        return bool(flag) and fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag) == 0
    except OSError:
        return False


class DirectFile:
    """A write-only file over an O_DIRECT ``fd`` at offset 0: bytes gathered in one page-aligned
    buffer and written in whole blocks; ``finish`` pads the tail to ``ALIGN``, writes it, cuts the
    file back to what was written and fsyncs it; ``close`` frees the buffer (``fd`` stays open). A
    filesystem that took O_DIRECT but refuses these writes (EINVAL: an alignment it wants larger)
    gets them, and the rest, through the page cache."""

    BLOCK = 4 << 20  # bytes per write
    ALIGN = 4096  # offsets and sizes of every write: a multiple of any disk's logical block

    def __init__(self, fd: int):
        self.fd, self.buf, self.used, self.size = fd, mmap.mmap(-1, self.BLOCK), 0, 0
        self.buffered = False  # O_DIRECT dropped after the filesystem refused a write

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            take = min(len(view) - done, self.BLOCK - self.used)
            self.buf[self.used : self.used + take] = view[done : done + take]
            self.used, done = self.used + take, done + take
            if self.used == self.BLOCK:
                self._put(self.BLOCK)
                self.used = 0
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do: whole blocks are written as they fill; the tail waits for ``finish``."""

    def finish(self) -> None:
        if self.used:
            end = self.used + (-self.used % self.ALIGN)
            self.buf[self.used : end] = bytes(end - self.used)
            self._put(end)
            self.used = 0
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)

    def close(self) -> None:
        self.buf.close()

    def _put(self, size: int) -> None:
        """The buffer's first ``size`` bytes (a multiple of ``ALIGN``) written, a short write (a disk
        filling up) continued from where it stopped, so that a full disk raises ENOSPC. The views
        are released even when a write raises: the buffer can then be closed."""
        done = 0
        with memoryview(self.buf) as whole:
            while done < size:
                with whole[done:size] as part:
                    try:
                        written = os.write(self.fd, part)
                    except OSError as exc:
                        if exc.errno != errno.EINVAL or self.buffered or not _set_direct(self.fd, on=False):
                            raise
                        self.buffered = True
                        continue
                if written <= 0:
                    raise OSError(errno.EIO, f"a write made no progress at byte {done} of {size}")
                done += written


def _moved_here(old: Path, tmp: Path) -> int | None:
    """``old`` renamed to ``tmp`` and opened to write from its start; None (nothing left at ``tmp``)
    if it is missing, a link, or not a regular file of one name (a hard link would write elsewhere too)."""
    try:
        os.rename(old, tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return fd
    os.close(fd)
    tmp.unlink(missing_ok=True)
    return None


def _staged(path: Path, text: str) -> Path:
    """A new file beside ``path`` (a name of its own, created exclusively) holding ``text``, fsynced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_EXCL | _CREATE, 0o666), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _append(path: Path) -> IO[str]:
    """``path`` opened to append to (created if missing); a link there is refused (ELOOP)."""
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | _CREATE, 0o666), "a", encoding="utf-8")


def append_jsonl(path: str | os.PathLike, *rows: dict[str, Any]) -> None:
    """Append one JSON object per row to ``path`` (created if missing) and flush them to disk."""
    with _append(Path(path)) as f:
        f.write("".join(json.dumps(_clean(row)) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


class RunWriter:
    """Writes one run's directory (``hold_run_dir`` keeps other runs out of it).

    Every metrics line is fsynced when written, so a killed run keeps all it finished; the
    other files are replaced atomically. A rerun replaces an earlier run's files only once
    its own first files are on disk: a full disk or a read-only directory leaves the earlier
    run as it was.
    """

    def __init__(self, out_dir: str | os.PathLike, config: dict[str, Any], resume: bool = False):
        import yaml

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)}
        files[PROVENANCE_FILE] = json.dumps(provenance(), indent=2)
        if not resume:  # resume: keep the rows written so far (``keep_rounds`` trims them to the checkpoint)
            files[METRICS_FILE] = ""
        staged = {}
        try:
            for name, text in files.items():
                staged[name] = _staged(self.dir / name, text)
            (self.dir / SUMMARY_FILE).unlink(missing_ok=True)  # a rerun is unfinished until it ends
            for name, tmp in staged.items():
                os.replace(tmp, self.dir / name)
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)  # those not renamed: an error came first
        self._metrics = _append(self.dir / METRICS_FILE)

    def keep_rounds(self, last_round: int) -> None:
        """Drop metrics rows of rounds after ``last_round`` (and final evaluations, and a torn
        last line): a resumed run rewrites them, so none is lost or duplicated."""
        path = self.dir / METRICS_FILE
        self._metrics.close()
        rows = read_jsonl(path) if path.is_file() else []
        kept = [r for r in rows if r.get("round", 0) <= last_round and not r.get("final_evaluation")]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._metrics = _append(path)

    def log(self, *rows: dict[str, Any]) -> None:
        """Append one JSON object per row to metrics.jsonl and flush them to disk (one fsync
        per call: a round's thousands of client rows cost one disk sync, not one each)."""
        self._metrics.write("".join(json.dumps(_clean(row)) + "\n" for row in rows))
        self._metrics.flush()
        os.fsync(self._metrics.fileno())

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json (atomically) and close the metrics file."""
        write_atomic(self.dir / SUMMARY_FILE, json.dumps(_clean(summary), indent=2))
        self._metrics.close()

    def close(self) -> None:
        """Close the metrics file (a run that ends without a summary)."""
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


_PLAIN = (int, str, bool, type(None))  # what ``_clean`` returns as it is (a finite float too)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):  # plain values are kept without a call: 10,000 client rows a round
        return {str(k): v if type(v) in _PLAIN else _clean(v) for k, v in obj.items()}
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
