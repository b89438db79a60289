"""Per-round checkpoints, so that a killed run resumes where it stopped (docs/design.md, "Results").

A checkpoint is data: JSON and tensors, read without running code (no pickle; tensors through
``torch.load(weights_only=True)``). After every finished round the server writes, in
``<out>/checkpoint/``:

- ``server-r<round>.pt``: every tensor and array of the state, one flat ``{name: tensor}`` dict
  (names are paths: ``rule.logits.1000``, ``students.archs.mlp64.weights.0.weight``,
  ``rng.torch``): the batched engine's students stacked per architecture, the rule's arrays
  and modules' weights, the RNG states' arrays;
- ``server.json``, written last (the commit point): format and version, the round, the
  engine, the world (``WorldSpec.to_config``), the rule's name and state, the totals, each
  client's last row, node ids, RNG states and hook states, in the typed encoding of
  ``encode``, and the tensor file's name and SHA-256.

Each file is a temp file, fsynced, then ``os.replace``d: a kill leaves the previous round's
pair or this one. A file that does not parse or verify is refused with one line
(``CheckpointError``), never half used. Resuming builds the rule afresh from the run's
settings, ``resume``s it (no teacher is trained again) and loads its saved attributes
(``strategies.base.DistillationStrategy.state_dict``).

In Flower's simulation each student lives in its node's ``context.state``, which a new
simulation starts empty; so the ClientApp also writes its student to
``<out>/checkpoint/clients/c<client>-r<round>.pt`` after each training message, and a
resumed simulation tells it (``P.CFG_RESUME_ROUND``) to load the newest file of a round
not after the server's checkpoint. Simulation only: a deployed SuperNode keeps its
context across ServerApp runs of one ``flwr run``, not across runs.

A stop request (Ctrl-C, SIGTERM) reaches the round loop through a ``threading.Event``;
the loop then raises ``RunInterrupted`` and no ``summary.json`` is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
from torch.utils.serialization import config as torch_serialization

from peerkd import clock
from peerkd.errors import ConfigError
from peerkd.round.results import atomic_file

log = logging.getLogger("peerkd")

CHECKPOINT_DIR, SERVER_FILE, CLIENTS_DIR = "checkpoint", "server.json", "clients"
BACKGROUND_CPU = "checkpoint_cpu"  # the clock's name for a background write's CPU seconds
FORMAT, VERSION = "peerkd-checkpoint", 2
READS = (1, 2)  # version 2 added tables (``{"rows": ...}``); a version-1 file is read as before
_LEGACY_FILE = "server.pkl"  # peerkd before format 1 pickled its checkpoint: refused, never read
_TENSOR_FILE = re.compile(r"server-r(\d+)\.pt")
_CLIENT_FILE = re.compile(r"c(\d+)-r(\d+)\.pt")
_SCALARS = (bool, int, float, str)
_PLAIN = frozenset({type(None), *_SCALARS})  # JSON's own values
_NUMPY_DTYPES = frozenset(
    "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 complex64 complex128".split()
)
_SIGNED_TWIN = {"uint16": np.int16, "uint32": np.int32, "uint64": np.int64}  # kept as these bits in a tensor


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed (damaged, another format, made for other settings):
    one line naming it and how to start over. A sweep may catch it and redo the run."""


class _Damaged(ValueError):
    """A checkpoint file's fault, said in words (its line names no exception type)."""


class ModuleWeights(dict):
    """A module's ``state_dict`` in a rule's saved state: a resumed rule loads it into its own module."""


class Resumable(Protocol):
    """What a checkpoint needs of a rule (``strategies.base.DistillationStrategy`` provides it)."""

    name: str

    def resume(self, ctx: Any) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RunState:
    """What the round loop needs to carry on after round ``round``."""

    round: int  # the last finished round
    strategy: Any
    run_metrics: dict[str, Any]
    latest: dict[int, dict[str, Any]]  # each client's last accepted row
    totals: Counter
    replies: Counter  # accepted replies per client
    nodes: dict[int, int]  # node id -> client id, as of the checkpoint
    wall_s: float  # seconds spent before the checkpoint
    engine: str
    rng: dict[str, Any] = field(default_factory=dict)
    students: Any = None  # the engine's snapshot of every student (None: clients keep their own files)
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # each round hook's ``state()`` (``hook_states``)
    world: dict[str, Any] = field(default_factory=dict)  # the world's ``WorldSpec.to_config()``


@dataclass
class Saved:
    """A checkpoint as read back, before anything is applied: the state (``strategy`` None)
    and the rule's name and saved attributes."""

    state: RunState
    rule: str
    rule_state: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch) a rule or a model may draw from."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class Checkpoint:
    """One run's checkpoint directory.

    Parameters
    ----------
    out_dir : str | os.PathLike
        The run's results directory.
    engine : str
        The engine's name; a checkpoint is resumed only by the engine that wrote it.
    snapshot, restore : callables, optional
        The engine's students as data (``encode``'s types), and back (the batched engine's
        ``StudentStore.snapshot``/``restore``). Without them the clients write their own
        files under ``client_dir``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        engine: str,
        snapshot: Callable[[], Any] | None = None,
        restore: Callable[[Any], None] | None = None,
    ):
        self.dir = Path(out_dir) / CHECKPOINT_DIR
        self.engine, self.snapshot, self.restore = engine, snapshot, restore
        self._writer: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._buffers: dict[str, Any] = {}  # the stacks' and copies' arrays, reused round after round (``materialize``)
        self._live: Path | None = None  # the tensor file server.json names, written by this process
        self._spare: Path | None = None  # the one it named before: written over next (``atomic_file``'s reuse)

    @property
    def client_dir(self) -> str | None:
        """Where clients write their students (absolute), or None when the engine snapshots them."""
        return None if self.snapshot else str((self.dir / CLIENTS_DIR).resolve())

    def exists(self) -> bool:
        """Whether a finished round was checkpointed (an old pickled checkpoint counts: it is refused)."""
        self.wait()
        return (self.dir / SERVER_FILE).is_file() or (self.dir / _LEGACY_FILE).is_file()

    def save(self, state: RunState, background: bool = False) -> None:
        """Write ``state`` (with the engine's students): the tensor file, then ``server.json``
        naming it; then drop the files it no longer needs.

        The state is taken as data here: arrays and tensors copied, a rule's arrays by node
        stacked into last round's stack (``materialize``; the last write is done by then). With
        ``background`` the files are then written by a thread while the next round runs. One
        write at a time: a save first waits for the last, and raises its error. A kill mid-write
        leaves the previous round's checkpoint.

        Raises TypeError naming the attribute (``rule.<name>``) whose value is not data.
        """
        self.wait()
        self.dir.mkdir(parents=True, exist_ok=True)
        state.students = self.snapshot() if self.snapshot else None
        tensors: dict[str, Any] = {}
        data = {
            "run_metrics": state.run_metrics,
            "latest": state.latest,
            "totals": dict(state.totals),
            "replies": dict(state.replies),
            "nodes": state.nodes,
            "rng": state.rng,
            "hooks": state.hooks,
            "students": state.students,
            "rule": state.strategy.state_dict(),
        }
        doc = {"format": FORMAT, "version": VERSION, "round": state.round, "engine": state.engine}
        doc |= {"wall_s": state.wall_s, "world": state.world, "rule_name": state.strategy.name}
        doc |= {key: encode(value, key, tensors) for key, value in data.items()}
        tensors = materialize(tensors, self._buffers)  # here, not in the thread: the rule may change its arrays next
        if not background:
            return self._write(doc, tensors)
        self._writer = threading.Thread(target=self._write_caught, args=(doc, tensors), name="checkpoint", daemon=True)
        self._writer.start()

    def wait(self) -> None:
        """Wait for a background write to finish; raise the error it met, if any (once)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def close(self) -> None:
        """Wait for a background write, logging (not raising) its error: for a run ending on another error."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001
            log.error("checkpoint: the last round's files were not written (%s)", _one_line(exc))

    def _write_caught(self, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """A background write; its CPU time, taken from the round it overlaps, is recorded as
        ``checkpoint_cpu`` (``clock.record``)."""
        cpu = time.thread_time()
        try:
            self._write(doc, tensors)
        except BaseException as exc:  # noqa: BLE001  (raised in the round loop by the next ``wait``)
            self._failed = exc
        finally:
            clock.record(BACKGROUND_CPU, time.thread_time() - cpu)

    def _write(self, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """The tensor file (hashed as it is written, past the page cache where the filesystem allows),
        then ``server.json``; older files removed, but for the one named before, which the next save
        writes over (``atomic_file``'s ``reuse``, ``direct``)."""
        name = f"server-r{doc['round']}.pt"
        digest = hashlib.sha256()
        reuse, self._spare = self._spare, None
        _write_atomic(self.dir / name, lambda f: _save_unchecked(tensors, _Hashing(f, digest)), reuse, direct=True)
        doc["tensors"] = {"file": name, "sha256": digest.hexdigest()}
        _write_atomic(self.dir / SERVER_FILE, lambda f: f.write(json.dumps(doc).encode()))
        self._spare, self._live = self._live, self.dir / name
        keep = {name, self._spare.name if self._spare else None}
        for old in os.listdir(self.dir):
            if (_TENSOR_FILE.fullmatch(old) and old not in keep) or old == _LEGACY_FILE:
                (self.dir / old).unlink(missing_ok=True)
        if self.client_dir:
            prune_client_files(self.client_dir, doc["round"])

    def read(self) -> Saved:
        """The checkpoint as data, parsed and verified; nothing is applied.

        Raises
        ------
        CheckpointError
            The files are missing, damaged, of another format, or hold what no checkpoint holds.
        """
        self.wait()
        path = self.dir / SERVER_FILE
        if not path.is_file() and (self.dir / _LEGACY_FILE).is_file():
            raise self._refused(
                self.dir / _LEGACY_FILE, "it is a pickle written by an older peerkd (loading it could run code)"
            )
        try:
            doc = _read_json(path)
            tensors = _read_tensors(self.dir, doc)
            saved = {key: decode(doc[key], key, tensors) for key in _FIELDS}
            _check_fields(doc, saved)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever untrusted bytes make a parser raise, the file is refused)
            raise self._refused(path, _one_line(exc)) from None
        counts = {key: Counter(saved[key]) for key in ("totals", "replies")}
        state = RunState(
            doc["round"], None, saved["run_metrics"], saved["latest"], **counts, nodes=saved["nodes"],
            wall_s=float(doc["wall_s"]), engine=doc["engine"], rng=saved["rng"], students=saved["students"],
            hooks=saved["hooks"], world=doc["world"],
        )  # fmt: skip
        return Saved(state, doc["rule_name"], saved["rule"])

    def load(self, rule: Resumable, ctx: Any) -> RunState:
        """The last checkpointed state, its rule ``rule`` (built afresh from the run's settings)
        resumed with ``ctx`` and its saved attributes, students and RNG states restored.

        Raises
        ------
        CheckpointError
            As ``read``, or the checkpoint was made for another rule, world or rule settings.
        ConfigError
            It was written by another engine (``engine.name``).
        """
        saved = self.read()
        state, where = saved.state, self.dir / SERVER_FILE
        if state.engine != self.engine:
            raise ConfigError(
                "engine.name", f"the checkpoint in {self.dir} was written by {state.engine}", state.engine
            )
        if saved.rule != rule.name:
            raise self._refused(where, f"it holds a run of rule {saved.rule}, not {rule.name}")
        if change := _first_change(state.world, ctx.world.spec.to_config()):
            raise self._refused(where, f"it was made for another world ({change})")
        settings = {k: v for k, v in vars(rule).items() if v is None or type(v) in _SCALARS}
        rule.resume(ctx)
        if change := _first_change(saved.rule_state, settings):
            raise self._refused(where, f"it was made with other rule settings (strategy.{change})")
        try:
            rule.load_state_dict(saved.rule_state)
            if self.restore and state.students is not None:
                self.restore(state.students)
            set_rng_state(state.rng)
        except Exception as exc:  # noqa: BLE001  (state of the wrong shape or type: the file is refused)
            raise self._refused(where, _one_line(exc)) from None
        state.strategy = rule
        return state

    def clear(self) -> None:
        """Remove the checkpoint (a run started afresh, or finished), after any write in flight."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _refused(self, path: Path, problem: str) -> CheckpointError:
        return CheckpointError(
            "resume",
            f"cannot resume from {path}: {problem}",
            "resume=false to start the run over (compare and sweep start it over by themselves)",
        )


_FIELDS = ("run_metrics", "latest", "totals", "replies", "nodes", "rng", "hooks", "students", "rule")


def encode(value: Any, path: str, tensors: dict[str, Any]) -> Any:
    """``value`` as JSON data; its tensors and arrays go into ``tensors``, named by their ``path``.

    Data is None, bool, int, float, str; a list; a tuple (``{"tuple": [...]}``); a set
    (``{"set": [...]}``); a dict with int or str keys (``{"dict": [[key, value], ...]}``);
    ``ModuleWeights`` (``{"module": [[name, tensor], ...]}``); a torch tensor
    (``{"tensor": name}``); a numeric NumPy array or scalar (``{"ndarray"|"scalar": name,
    "dtype": "float32"}``); a dict of two or more such arrays of one shape and dtype is stored as
    its keys and one stacked array (``{"stacked": [keys], "ndarray": name, "dtype": ...}``); a dict
    of two or more rows of plain values with the same fields as a table (``_table``: ``{"rows":
    [keys], "fields": [...], "values": [[...], ...]}``).
    ``encode(("a", {1: 2.5}), "x", {}) == {"tuple": ["a", {"dict": [[1, 2.5]]}]}``.

    Arrays and tensors are copied, so that ``tensors`` holds what ``value`` is now; a stack is made
    by ``materialize`` (in last time's array): until then its entry holds the arrays.

    Raises TypeError naming ``path`` for anything else.
    """
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is list:
        if set(map(type, value)) <= _PLAIN:  # e.g. a fleet's client ids: no call per item
            return list(value)
        return [encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if type(value) in (tuple, set):
        return {type(value).__name__: [encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if type(value) is dict and (table := _table(value, path)) is not None:  # e.g. clients' last rows
        return table
    if type(value) is dict and _stackable(value):  # e.g. a rule's logits by node: one tensor, not thousands
        keys, arrays = [_key(k, path) for k in value], list(value.values())
        name = _put(tensors, f"{path}.stacked", _Stack(arrays))  # stacked by ``materialize``
        return {"stacked": keys, "ndarray": name, "dtype": arrays[0].dtype.name}
    if type(value) in (dict, ModuleWeights):
        pairs = [  # scalars are their own data: no call, no path (10,000 client rows a round)
            [_key(k, path), v if v is None or type(v) in _SCALARS else encode(v, f"{path}.{k}", tensors)]
            for k, v in value.items()
        ]
        return {"module" if type(value) is ModuleWeights else "dict": pairs}
    if isinstance(value, torch.Tensor) and value.layout == torch.strided:
        return {"tensor": _put(tensors, path, _Copy(value))}  # copied by ``materialize``
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.name in _NUMPY_DTYPES:
        kind = "ndarray" if isinstance(value, np.ndarray) else "scalar"
        return {kind: _put(tensors, path, _tensor_of(np.array(value, order="C"))), "dtype": value.dtype.name}
    raise TypeError(
        f"{path}: a {type(value).__name__} is not checkpoint data (None, bool, int, float, str, list, tuple, "
        "set, dict, torch tensors, numeric NumPy arrays, module weights)"
    )


@dataclass(frozen=True)
class _Stack:
    """Arrays of one shape and dtype, to be stacked by ``materialize``."""

    arrays: list[np.ndarray]

    def into(self, buffer: np.ndarray | torch.Tensor | None) -> np.ndarray:
        """The stack, in ``buffer`` when it has the stack's shape and dtype, else in a new array."""
        shape, dtype = (len(self.arrays), *self.arrays[0].shape), self.arrays[0].dtype
        if not isinstance(buffer, np.ndarray) or buffer.shape != shape or buffer.dtype != dtype:
            buffer = np.empty(shape, dtype)
        return np.stack(self.arrays, out=buffer)


@dataclass(frozen=True)
class _Copy:
    """A tensor whose elements ``materialize`` copies to the CPU (its own, not a view's base): training
    the module on must not change what is written."""

    tensor: torch.Tensor

    def into(self, buffer: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        """The copy, in ``buffer`` when it is a tensor of the same shape and dtype, else in a new one."""
        t = self.tensor.detach()
        if not isinstance(buffer, torch.Tensor) or buffer.shape != t.shape or buffer.dtype != t.dtype:
            buffer = torch.empty(t.shape, dtype=t.dtype)
        return buffer.copy_(t)


def materialize(tensors: dict[str, Any], buffers: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """``encode``'s tensors, the stacks among them made and the tensors copied: what the tensor file
    holds. With ``buffers`` (by name, kept by the caller), a stack or copy is made in last time's
    array: a run's logits by node and its students have one shape every round, and memory written
    before is far cheaper to write again than fresh memory (on a VM: 0.05 s against 2-4 s for 400 MB)."""
    out = {}
    for name, value in tensors.items():
        if isinstance(value, (_Stack, _Copy)):
            made = value.into(None if buffers is None else buffers.get(name))
            if buffers is not None:
                buffers[name] = made
            value = _tensor_of(made) if isinstance(value, _Stack) else made
        out[name] = value
    return out


def _tensor_of(arr: np.ndarray) -> torch.Tensor:
    """A numeric array (owned by the caller) as a tensor of its bytes: native byte order, unsigned
    types of 16 bits or more as their signed twins (``decode`` reads them back by ``dtype``)."""
    dtype = arr.dtype.name
    arr = arr.astype(arr.dtype.newbyteorder("="), order="C", copy=False)
    return torch.from_numpy(arr.view(_SIGNED_TWIN[dtype]) if dtype in _SIGNED_TWIN else arr)


class _Hashing:
    """A file that feeds everything written to it into ``digest`` too (a file's hash without reading it back)."""

    def __init__(self, f: BinaryIO, digest: Any):
        self.f, self.digest = f, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _table(d: dict, path: str) -> dict[str, list] | None:
    """``d`` as a table when it maps int or str keys to two or more rows: dicts of the same str keys
    in the same order, holding only None, bool, int, float and str (a fleet's client rows: one JSON
    list a row, not an encoded dict a row); else None. ``{1: {"a": 2}, 3: {"a": 4}}`` is
    ``{"rows": [1, 3], "fields": ["a"], "values": [[2], [4]]}``."""
    rows = list(d.values())
    if len(rows) < 2 or type(rows[0]) is not dict or not all(type(f) is str for f in rows[0]):
        return None
    fields = tuple(rows[0])
    if not all(type(r) is dict and tuple(r) == fields for r in rows):
        return None
    values = [list(r.values()) for r in rows]
    if not set(map(type, itertools.chain.from_iterable(values))) <= _PLAIN:
        return None
    return {"rows": [_key(k, path) for k in d], "fields": list(fields), "values": values}


def _untable(data: dict, path: str) -> dict:
    """Inverse of ``_table``; _Damaged for rows and values of other numbers or types, or a key twice."""
    names, fields, values = (_list(data[k], path) for k in ("rows", "fields", "values"))
    if not all(type(k) in (int, str) for k in names) or len(set(names)) != len(names) or len(values) != len(names):
        raise _Damaged(f"{path}: {len(names)} row keys for {len(values)} rows, or a key twice")
    if not all(type(f) is str for f in fields) or len(set(fields)) != len(fields):
        raise _Damaged(f"{path}: fields {str(fields)[:60]} are not distinct names")
    if not all(type(v) is list and len(v) == len(fields) for v in values):
        raise _Damaged(f"{path}: a row of another length than its {len(fields)} fields")
    if not set(map(type, itertools.chain.from_iterable(values))) <= _PLAIN:
        raise _Damaged(f"{path}: a row holds what no row holds (only None, bool, int, float, str)")
    return {k: dict(zip(fields, v)) for k, v in zip(names, values)}


def _stackable(d: dict) -> bool:
    """Two or more numeric NumPy arrays of one dtype and shape, under int or str keys."""
    values = list(d.values())
    if len(values) < 2 or not all(type(k) in (int, str) for k in d):
        return False
    first = values[0]
    if type(first) is not np.ndarray or first.dtype.name not in _NUMPY_DTYPES:
        return False
    return all(type(v) is np.ndarray and v.dtype == first.dtype and v.shape == first.shape for v in values)


def decode(data: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``encode``. Raises ValueError naming ``path`` for anything ``encode`` does not write."""
    if data is None or type(data) in _SCALARS:
        return data
    if type(data) is list:
        return [decode(v, f"{path}.{i}", tensors) for i, v in enumerate(data)]
    keys = set(data) if type(data) is dict else None
    if keys in ({"tuple"}, {"set"}):
        (kind,) = keys
        items = [decode(v, f"{path}.{i}", tensors) for i, v in enumerate(_list(data[kind], path))]
        return tuple(items) if kind == "tuple" else set(items)
    if keys in ({"dict"}, {"module"}):
        (kind,) = keys
        pairs = [_pair(p, path) for p in _list(data[kind], path)]
        out = {k: decode(v, f"{path}.{k}", tensors) for k, v in pairs}
        if len(out) != len(pairs):
            raise _Damaged(f"{path}: a key appears twice")
        return ModuleWeights(out) if kind == "module" else out
    if keys == {"rows", "fields", "values"}:
        return _untable(data, path)
    if keys == {"stacked", "ndarray", "dtype"}:
        names = _list(data["stacked"], path)
        stacked = _array(tensors, {"ndarray": data["ndarray"], "dtype": data["dtype"]}, path)
        if not all(type(k) in (int, str) for k in names) or len(stacked) != len(names) or len(set(names)) != len(names):
            raise _Damaged(f"{path}: {len(names)} keys for {len(stacked)} stacked arrays, or a key twice")
        return {k: stacked[i] for i, k in enumerate(names)}
    if keys == {"tensor"}:
        return _tensor(tensors, data["tensor"], path)
    if keys in ({"ndarray", "dtype"}, {"scalar", "dtype"}):
        return _array(tensors, data, path)
    raise _Damaged(f"{path}: {json.dumps(data)[:60]} is not checkpoint data")


_SAVING = threading.Lock()  # torch's CRC switch is process-wide: one unchecked save at a time


def _save_unchecked(tensors: dict[str, torch.Tensor], f: Any) -> None:
    """``torch.save`` without the zip records' CRC-32: the SHA-256 in ``server.json`` already covers
    every byte. The CRC was 40 % of a background write's time (0.75 s of CPU a round at 10,000
    students, 530 MB), taken from the training threads on a 2-core box; ``torch.load`` reads the
    file as before. The switch is torch's, for the process: a ``torch.save`` another thread makes
    meanwhile skips its CRC too (its file loads all the same)."""
    with _SAVING, torch_serialization.patch("save.compute_crc32", False):
        torch.save(tensors, f)


def _write_atomic(
    path: Path, write: Callable[[BinaryIO], Any], reuse: Path | None = None, direct: bool = False
) -> None:
    """``write`` ``path``'s content through ``atomic_file`` (over ``reuse``'s pages when given; past
    the page cache with ``direct``); a linked directory on the way is refused."""
    if path.parent.is_symlink():
        raise ConfigError("out", f"{path.parent} is a symbolic link: a run writes only files of its own", "a directory")
    with atomic_file(path, reuse, direct) as f:
        try:
            write(f)
        except RuntimeError as exc:  # torch.save's zip writer hides a failed write (a full disk) or a Ctrl-C
            cause = exc.__context__  # landing mid-write behind its own; a stop must stay a stop (exit 130)
            if isinstance(cause, OSError) or (cause is not None and not isinstance(cause, Exception)):
                raise cause from None
            raise


def _key(key: Any, path: str) -> int | str:
    """A dict key as JSON keeps it: int (NumPy ints too) or str."""
    if isinstance(key, np.integer):
        return int(key)
    if type(key) in (int, str):
        return key
    raise TypeError(f"{path}: a dict key {key!r} ({type(key).__name__}) is not checkpoint data (int or str)")


def _put(tensors: dict[str, Any], path: str, t: torch.Tensor | _Stack | _Copy) -> str:
    name = path if path not in tensors else f"{path}#{len(tensors)}"
    tensors[name] = t
    return name


def _list(value: Any, path: str) -> list:
    if type(value) is not list:
        raise _Damaged(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _pair(pair: Any, path: str) -> tuple[int | str, Any]:
    if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (int, str):
        raise _Damaged(f"{path}: expected [int or str key, value] pairs")
    return pair[0], pair[1]


def _tensor(tensors: dict[str, torch.Tensor], name: Any, path: str) -> torch.Tensor:
    if type(name) is not str or name not in tensors:
        raise _Damaged(f"{path}: no tensor {name!r} in the tensor file")
    return tensors[name]


def _array(tensors: dict[str, torch.Tensor], data: dict[str, Any], path: str) -> np.ndarray | np.generic:
    """A NumPy array (or scalar) of ``data['dtype']`` from its tensor."""
    dtype, scalar = data["dtype"], "scalar" in data
    if dtype not in _NUMPY_DTYPES:
        raise _Damaged(f"{path}: dtype {dtype!r} is not checkpoint data")
    arr = _tensor(tensors, data["scalar" if scalar else "ndarray"], path).numpy()
    if arr.dtype != np.dtype(dtype):
        if arr.dtype != _SIGNED_TWIN.get(dtype):
            raise _Damaged(f"{path}: a {arr.dtype} tensor cannot hold {dtype}")
        arr = arr.view(dtype)
    return arr[()] if scalar else arr


def _read_tensors(directory: Path, doc: Any) -> dict[str, torch.Tensor]:
    """The tensor file ``doc`` names, once its format, version and SHA-256 check out."""
    if type(doc) is not dict or doc.get("format") != FORMAT:
        raise _Damaged(f"not a {FORMAT} file")
    if doc.get("version") not in READS:
        raise _Damaged(
            f"format version {doc.get('version')!r}; this peerkd reads versions {', '.join(map(str, READS))}"
        )
    ref = doc.get("tensors")
    if type(ref) is not dict or type(ref.get("file")) is not str or not _TENSOR_FILE.fullmatch(ref["file"]):
        raise _Damaged("it names no tensor file server-r<round>.pt beside it")
    path = directory / ref["file"]
    if not path.is_file():
        raise _Damaged(f"its tensor file {path.name} is missing")
    if _sha256(path) != ref.get("sha256"):
        raise _Damaged(f"{path.name} is not the tensor file it was saved with (SHA-256 differs)")
    tensors = _torch_load(path)
    if type(tensors) is not dict or not all(type(k) is str and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise _Damaged(f"{path.name} is not a dict of named tensors")
    return tensors


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; _Damaged in one line if torch refuses it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a pickle protocol torch does not write: refused anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (torch's own message suggests weights_only=False: never here)
        raise _Damaged(f"{path.name} is damaged or holds objects, not only tensors; it was not unpickled") from None


def _read_json(path: Path) -> Any:
    """The JSON document in ``path``; _Damaged in one line if it is not JSON."""
    if not path.is_file():
        raise _Damaged(f"{path.name} is missing")
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _Damaged(f"{path.name} is not JSON ({_one_line(exc)})") from None


def _check_fields(doc: dict[str, Any], saved: dict[str, Any]) -> None:
    """_Damaged unless the header and the decoded fields have the types the loop reads."""
    header = {"round": int, "engine": str, "wall_s": (int, float), "world": dict, "rule_name": str}
    for key, kind in header.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise _Damaged(f"{key}: {str(doc.get(key))[:40]!r} is of the wrong type")
    if doc["round"] < 1:
        raise _Damaged(f"round: {doc['round']} is not a finished round")
    shapes = {
        "run_metrics": (str, object),
        "latest": (int, dict),
        "totals": (str, (int, float)),
        "replies": (int, int),
        "nodes": (int, int),
        "rng": (str, object),
        "hooks": (str, dict),
        "rule": (str, object),
    }
    for key, (key_type, value_type) in shapes.items():
        value = saved[key]
        if not isinstance(value, dict) or not all(
            isinstance(k, key_type) and isinstance(v, value_type) for k, v in value.items()
        ):
            raise _Damaged(f"{key}: not a mapping of the types a checkpoint holds")


def _first_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """``key: old, now new`` for the first key both have whose values differ (a key only one side
    has is a field added to peerkd since); None if they agree."""
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            return f"{key}: {old[key]!r}, now {new[key]!r}"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type (unless _Damaged) and the first line of its message."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, _Damaged):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def save_client(client_dir: str, client: int, server_round: int, arch: str, weights: dict[str, torch.Tensor]) -> None:
    """Write one client's student after ``server_round`` (temp file, fsync, then ``os.replace``)."""
    path = Path(client_dir)
    path.mkdir(parents=True, exist_ok=True)
    saved = {"arch": arch, "weights": {k: v.detach().cpu() for k, v in weights.items()}}
    _write_atomic(path / f"c{client}-r{server_round}.pt", lambda f: torch.save(saved, f))


def load_client(client_dir: str, client: int, upto_round: int) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The newest student ``client`` wrote in a round ``<= upto_round``: (arch, weights), or None.

    Raises CheckpointError (one line naming the file) if that file does not parse as one.
    """
    rounds = [r for c, r in _client_files(client_dir) if c == client and r <= upto_round]
    if not rounds:
        return None
    path = Path(client_dir) / f"c{client}-r{max(rounds)}.pt"
    try:
        saved = _torch_load(path)
        arch, weights = saved["arch"], saved["weights"]
        if type(arch) is not str or not all(type(k) is str and isinstance(v, torch.Tensor) for k, v in weights.items()):
            raise _Damaged("not an architecture and named tensors")
    except Exception as exc:  # noqa: BLE001  (whatever untrusted bytes make a parser raise, the file is refused)
        raise CheckpointError(
            "resume", f"cannot resume from {path}: {_one_line(exc)}", "resume=false to start the run over"
        ) from None
    return arch, weights


def prune_client_files(client_dir: str, upto_round: int) -> None:
    """Keep each client's newest file of a round ``<= upto_round`` and any later one; delete the rest."""
    files = _client_files(client_dir)
    newest: dict[int, int] = {}
    for c, r in files:
        if r <= upto_round:
            newest[c] = max(newest.get(c, r), r)
    for c, r in files:
        if r < newest.get(c, -1):
            (Path(client_dir) / f"c{c}-r{r}.pt").unlink(missing_ok=True)


def _client_files(client_dir: str) -> list[tuple[int, int]]:
    """(client, round) of every student file in ``client_dir``."""
    path = Path(client_dir)
    if not path.is_dir():
        return []
    return [(int(m[1]), int(m[2])) for name in os.listdir(path) if (m := _CLIENT_FILE.fullmatch(name))]


def rekey_nodes(strategy: Any, old_to_new: dict[int, int | None]) -> None:
    """Rename node ids in a rule's per-node state (dicts keyed by node id, sets of node ids) after a resume.

    Flower's simulation draws fresh node ids each time it starts, and rules key the
    state they carry between rounds (a peer's last logits, WML's node -> client map, the
    senders of peer_sum's sum) by node id. Each dict attribute whose keys are all old node
    ids is re-keyed, each such set renamed; entries of a node whose client is gone now
    (new id None) are dropped.
    """
    if all(k == v for k, v in old_to_new.items()):
        return
    for name, value in list(vars(strategy).items()):
        if isinstance(value, dict) and value and set(value) <= set(old_to_new):
            setattr(strategy, name, {old_to_new[k]: v for k, v in value.items() if old_to_new[k] is not None})
        elif isinstance(value, set) and value and value <= set(old_to_new):
            setattr(strategy, name, {old_to_new[k] for k in value if old_to_new[k] is not None})
