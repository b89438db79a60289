"""Per-round checkpoints, so that a killed run resumes where it stopped (docs/design.md, "Results").

After every finished round the server writes ``<out>/checkpoint/server.pkl`` (temp file,
then ``os.replace``: a kill leaves the previous round's file or this one, never half of
one). It holds the rule object (its targets, weights and round state: pickled to a local
file, it never crosses the wire), the round counter, the run's totals, the global RNG
states and, in the batched engine, every student (``StudentStore.snapshot``).

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

import logging
import os
import pickle
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peerkd.errors import RunInterrupted  # noqa: F401  (re-exported: where a run stops)

log = logging.getLogger("peerkd")

CHECKPOINT_DIR, SERVER_FILE, CLIENTS_DIR = "checkpoint", "server.pkl", "clients"
_CLIENT_FILE = re.compile(r"c(\d+)-r(\d+)\.pt")


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
        The engine's students as one picklable value, and back (the batched engine's
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

    @property
    def client_dir(self) -> str | None:
        """Where clients write their students (absolute), or None when the engine snapshots them."""
        return None if self.snapshot else str((self.dir / CLIENTS_DIR).resolve())

    def exists(self) -> bool:
        """Whether a finished round was checkpointed."""
        return (self.dir / SERVER_FILE).is_file()

    def save(self, state: RunState) -> None:
        """Write ``state`` (with the engine's students) atomically, then drop client files it no longer needs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state.students = self.snapshot() if self.snapshot else None
        tmp = self.dir / (SERVER_FILE + ".tmp")
        with open(tmp, "wb") as f:
            _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / SERVER_FILE)
        if self.client_dir:
            prune_client_files(self.client_dir, state.round)

    def load(self) -> RunState:
        """The last checkpointed state (students restored into the engine)."""
        with open(self.dir / SERVER_FILE, "rb") as f:
            state: RunState = _Unpickler(f).load()
        if state.engine != self.engine:
            from peerkd.errors import ConfigError

            raise ConfigError(
                "engine.name", f"the checkpoint in {self.dir} was written by {state.engine}", state.engine
            )
        if self.restore and state.students is not None:
            self.restore(state.students)
        set_rng_state(state.rng)
        return state

    def clear(self) -> None:
        """Remove the checkpoint (a run started afresh, or finished)."""
        shutil.rmtree(self.dir, ignore_errors=True)


class _Pickler(pickle.Pickler):
    """Pickles a rule's ``World`` as its spec: the data is rebuilt on load, not copied every round."""

    def persistent_id(self, obj: Any) -> Any:
        from peerkd.world.build import World

        return ("world", obj.spec) if isinstance(obj, World) else None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        from peerkd.world.build import build_world

        kind, spec = pid
        if kind != "world":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return build_world(spec)


def save_client(client_dir: str, client: int, server_round: int, arch: str, weights: dict[str, torch.Tensor]) -> None:
    """Write one client's student after ``server_round`` (temp file, then ``os.replace``)."""
    path = Path(client_dir)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".c{client}-r{server_round}.{os.getpid()}.tmp"
    torch.save({"arch": arch, "weights": {k: v.detach().cpu() for k, v in weights.items()}}, tmp)
    os.replace(tmp, path / f"c{client}-r{server_round}.pt")


def load_client(client_dir: str, client: int, upto_round: int) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The newest student ``client`` wrote in a round ``<= upto_round``: (arch, weights), or None."""
    rounds = [r for c, r in _client_files(client_dir) if c == client and r <= upto_round]
    if not rounds:
        return None
    saved = torch.load(Path(client_dir) / f"c{client}-r{max(rounds)}.pt", weights_only=True)
    return saved["arch"], saved["weights"]


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
    """Rename node ids in a rule's per-node state (dicts keyed by node id) after a resume.

    Flower's simulation draws fresh node ids each time it starts, and rules key the
    state they carry between rounds (a peer's last logits, WML's node -> client map) by
    node id. Each dict attribute whose keys are all old node ids is re-keyed; entries of
    a node whose client is gone now (new id None) are dropped.
    """
    if all(k == v for k, v in old_to_new.items()):
        return
    for name, value in list(vars(strategy).items()):
        if isinstance(value, dict) and value and set(value) <= set(old_to_new):
            setattr(strategy, name, {old_to_new[k]: v for k, v in value.items() if old_to_new[k] is not None})
