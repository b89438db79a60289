"""The batched engine sharded over Ray workers: ``ShardedGrid`` and its ``ShardWorker`` actors.

The students are split into ``workers`` fixed shards of contiguous partition ids; each
shard lives in one long-lived Ray actor holding a ``BatchedGrid`` for it (one per GPU or
node: ``num_cpus``/``num_gpus`` per actor, spread across the cluster's nodes). The
driver-side grid routes each pushed Message to the actor that owns its node, calls the
actors in parallel and gathers their replies: the ServerApp, the rules and reply
screening are unchanged. Messages travel pickled through Ray, as in Flower's own
simulation; what crosses the network is the Messages (config, targets, logits) and
control, never a client's data (each worker builds the world from its seed).

A worker saves its shard's students after every answer that trained them (atomically,
``<state_dir>/shard-<k>.pt``). When a worker dies, Ray restarts the actor, which serves
its students from that file (or, where the file is not visible: another machine without a
shared directory, says that they were lost and starts them afresh), and re-runs the call
it left unanswered. A round it had already saved is not trained twice, and a worker that
stays down past the timeout or its restarts loses that call: either way the replies it
owed come back as error replies, which the server rejects and logs.

Ray is imported only here, only when a grid is created.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.common.constant import ErrorCode

from peerkd.batched.grid import NODE_ID_BASE, BatchedGrid, _error, no_node
from peerkd.batched.memory import peak_rss_mb
from peerkd.cluster import ray_init_args
from peerkd.round.hook import SummaryFields
from peerkd.student.placement import placement
from peerkd.wire import protocol as P

log = logging.getLogger("peerkd")

# Ray's own restart of a dead worker; each restart serves the shard from its last saved state.
MAX_RESTARTS = 4
# A call the dead worker left unanswered, or made while it restarts, runs again on the restarted one.
TASK_RETRIES = 2
TRAINING_PREFIX = "train"  # the message types that change a student (P.MSG_TRAIN, MSG_DISTILL, ...)


def shard_clients(num_clients: int, workers: int) -> list[list[int]]:
    """Contiguous, near-equal shards of partition ids: ``shard_clients(5, 2) == [[0, 1], [2, 3, 4]]``."""
    bounds = [num_clients * k // workers for k in range(workers + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(workers)]


class ShardWorker:
    """One shard's students in a Ray actor: a ``BatchedGrid`` answering only its nodes.

    Parameters
    ----------
    clients : list[int]
        The partition ids this worker serves.
    num_nodes : int
        All nodes of the run (ids ``NODE_ID_BASE + i``).
    device, chunk : str, int
        As for ``BatchedGrid``, on this worker's machine.
    state_file : str
        Where this shard's students are saved after each training answer, and restored from
        when Ray restarts the actor.
    threads : int
        Torch CPU threads (the actor's ``num_cpus``).
    """

    def __init__(self, clients: list[int], num_nodes: int, device: str, chunk: int, state_file: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.grid = BatchedGrid(num_nodes, device=device, chunk=chunk)
        self.grid._nodes = {NODE_ID_BASE + c: c for c in clients}
        self.state_file = Path(state_file)
        self.saved_round: int | None = None
        self.restarted = _was_restarted()
        self.restored = False
        if self.restarted and self.state_file.is_file():
            saved = torch.load(self.state_file, weights_only=True)
            self.grid.store.restore(saved["students"])
            self.saved_round, self.restored = saved["round"], True
        self.restored_round = self.saved_round or 0  # training it already saved must not run twice
        self.last_s = {"answer_s": 0.0, "save_s": 0.0}  # the last call's time in this worker (saving included)

    def info(self) -> dict[str, Any]:
        """This worker: process id, placement, device, and whether it restarted and restored."""
        return {
            "pid": os.getpid(),
            **placement(),
            "device": str(self.grid.device),
            "restarted": self.restarted,
            "restored": self.restored,
            "restored_round": self.restored_round,
            "saved_round": self.saved_round,
            **self.last_s,
        }

    def answer(self, messages: list[Message]) -> tuple[list[Message], dict[str, Any]]:
        """Replies to ``messages`` (all for this shard's nodes) and this worker's ``info``.

        Ray retries a call that a dead worker left unanswered on the restarted worker; a
        training round that worker had already saved is not run twice: its replies are lost.
        """
        training = [m for m in messages if m.metadata.message_type.startswith(TRAINING_PREFIX)]
        done = [m for m in training if _round(m) <= self.restored_round]
        if done:
            reason = f"worker restarted after saving round {self.restored_round}: this round's replies are lost"
            return [_error(m, ErrorCode.NODE_UNAVAILABLE, reason) for m in messages], self.info()
        t0 = time.perf_counter()
        replies = self.grid._answer(messages)
        t1 = time.perf_counter()
        if training:
            self._save(max(_round(m) for m in training))
        self.last_s = {"answer_s": time.perf_counter() - t0, "save_s": time.perf_counter() - t1}
        return replies, self.info()

    def _save(self, rnd: int) -> None:
        import torch

        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"round": rnd, "students": self.grid.store.snapshot()}, tmp)
        os.replace(tmp, self.state_file)  # atomic: a kill mid-save leaves the last complete file
        self.saved_round = rnd


def _was_restarted() -> bool:
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray's own property calls a deprecated one inside
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _check_fits(workers: int, num_cpus: float, num_gpus: float) -> None:
    """Refuse workers the cluster cannot hold at all (Ray would wait for them forever)."""
    import ray

    from peerkd.errors import ConfigError

    have = ray.cluster_resources()
    for key, per, name in (("CPU", num_cpus, "engine.worker_cpus"), ("GPU", num_gpus, "engine.worker_gpus")):
        if workers * per > have.get(key, 0.0) + 1e-9:
            raise ConfigError(
                name,
                f"{workers} workers x {per:g} {key}s, but the Ray cluster has {have.get(key, 0.0):g}",
                f"at most {have.get(key, 0.0) / workers:g} per worker, or fewer engine.workers",
            )


def _round(msg: Message) -> int:
    config = msg.content.get(P.KEY_CONFIG)
    return int(config.get(P.CFG_ROUND, 0)) if config is not None else 0


class ShardedGrid(BatchedGrid):
    """A Grid whose nodes are served by ``workers`` Ray actors, each a batched shard.

    Parameters
    ----------
    num_nodes : int
        Number of nodes (partition ids ``0..num_nodes-1``).
    workers : int
        Ray actors; shard ``k`` holds ``shard_clients(num_nodes, workers)[k]``.
    state_dir : str | os.PathLike
        Where workers save their shards (the run's out dir; a directory every node can see
        on a multi-machine cluster, else a restarted worker on another machine loses its students).
    device, chunk : str, int
        Each worker's ``BatchedGrid`` settings.
    num_cpus, num_gpus : float
        Ray resources per worker.
    timeout : float
        Seconds to wait for a worker's replies; then they count as lost.
    """

    stacked = False  # the workers answer Messages: no stacked rounds (``BatchedGrid.stacks``)

    def __init__(
        self,
        num_nodes: int,
        workers: int,
        state_dir: str | os.PathLike,
        *,
        device: str = "auto",
        chunk: int = 0,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        timeout: float = 600.0,
    ):
        import ray

        from peerkd.errors import ConfigError

        if not 1 <= workers <= num_nodes:
            raise ConfigError("engine.workers", f"{workers} workers for {num_nodes} clients", f"1..{num_nodes}")
        self._nodes = {NODE_ID_BASE + i: i for i in range(num_nodes)}
        self._replies: dict[str, Message] = {}
        self.device, self.chunk, self.timeout = device, chunk, timeout
        from flwr.supercore.run import Run

        self.set_run(Run.create_empty(1))
        self.shards = shard_clients(num_nodes, workers)
        self._owner = {NODE_ID_BASE + c: k for k, clients in enumerate(self.shards) for c in clients}
        actor = ray.remote(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=MAX_RESTARTS, max_task_retries=TASK_RETRIES
        )(ShardWorker)
        _check_fits(workers, num_cpus, num_gpus)
        state = Path(state_dir).resolve()  # a worker's working directory is not the driver's
        for k in range(workers):
            (state / f"shard-{k}.pt").unlink(missing_ok=True)  # a fresh run never restores an old one
        self.workers = [
            actor.options(scheduling_strategy="SPREAD").remote(
                clients, num_nodes, device, chunk, str(state / f"shard-{k}.pt"), max(1, int(num_cpus))
            )
            for k, clients in enumerate(self.shards)
        ]
        self.events: list[dict[str, Any]] = []
        # Totals over calls: the driver's wall time calling the workers, the slowest worker's own
        # time (saving included) and its saving; gather - slowest worker = the split's transport cost.
        self.timing = {"gather_s": 0.0, "slowest_worker_s": 0.0, "its_save_s": 0.0}
        self.info = ray.get([w.info.remote() for w in self.workers])

    def _answer(self, messages: list[Message]) -> list[Message]:
        """Replies to ``messages``: each shard's from its worker, in parallel; a failed
        worker's messages get error replies (the server rejects and logs them)."""
        import ray

        by_shard: dict[int, list[Message]] = {}
        replies = []
        for msg in messages:
            k = self._owner.get(msg.metadata.dst_node_id)
            if k is None:
                replies.append(_error(msg, ErrorCode.NODE_UNAVAILABLE, no_node(msg.metadata.dst_node_id)))
            else:
                by_shard.setdefault(k, []).append(msg)
        t0 = time.perf_counter()
        calls = {k: self.workers[k].answer.remote(msgs) for k, msgs in by_shard.items()}
        deadline, slowest = time.monotonic() + self.timeout, {"answer_s": 0.0, "save_s": 0.0}
        for k, ref in calls.items():
            try:
                got, info = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (ray.exceptions.RayError, TimeoutError) as exc:
                replies += self._lost(k, by_shard[k], exc)
                continue
            self._note(k, info)
            slowest = max(slowest, {key: info[key] for key in slowest}, key=lambda t: t["answer_s"])
            replies += got
        self.timing["gather_s"] += time.perf_counter() - t0
        self.timing["slowest_worker_s"] += slowest["answer_s"]
        self.timing["its_save_s"] += slowest["save_s"]
        return replies

    def _lost(self, k: int, messages: list[Message], exc: Exception) -> list[Message]:
        """Error replies for shard ``k``'s ``messages``: its worker died or timed out."""
        reason = f"worker {k} failed ({type(exc).__name__}); its shard's replies this round are lost"
        log.warning("%s: %d messages", reason, len(messages))
        self.events.append({"shard": k, "event": "lost", "messages": len(messages), "error": type(exc).__name__})
        return [_error(m, ErrorCode.NODE_UNAVAILABLE, reason) for m in messages]

    def _note(self, k: int, info: dict[str, Any]) -> None:
        """Record a worker that Ray restarted (its pid changed): restored, or its students lost."""
        if info["pid"] != self.info[k]["pid"] and info["restarted"]:
            event = "restored" if info["restored"] else "students lost"
            if info["restored"]:
                log.warning(
                    "worker %d restarted; its %d students restored from round %s",
                    k,
                    len(self.shards[k]),
                    info["restored_round"],
                )
            else:
                log.error(
                    "worker %d restarted without its saved state (not visible on its node): its %d students "
                    "were lost and start afresh",
                    k,
                    len(self.shards[k]),
                )
            self.events.append(
                {"shard": k, "event": event, "restored_round": info["restored_round"], "pid": info["pid"]}
            )
        self.info[k] = info

    def describe(self) -> list[dict[str, Any]]:
        """Each worker: its clients, pid, node, host, ip and device (last seen)."""
        return [
            {"shard": k, "clients": [c[0], c[-1]], **{key: v for key, v in info.items() if key != "restarted"}}
            for k, (c, info) in enumerate(zip(self.shards, self.info))
        ]

    def close(self) -> None:
        """Stop the workers."""
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)


class ShardedEngine:
    """The batched engine sharded over ``workers`` Ray actors (``peerkd.round.run.Engine``).

    Parameters
    ----------
    num_clients : int
        The fleet's size.
    address : str | None
        The Ray cluster (``auto``, ``HOST:PORT``); None starts a private local Ray (never
        one that ``ray start`` left running on this machine).
    workers : int
        Ray actors, each holding a fixed shard of students across rounds.
    num_cpus, num_gpus : float
        Resources per worker.
    device, chunk : str, int
        Each worker's batched settings.
    state_dir : Path
        Where workers keep their shards' students (for a restarted actor).
    timeout : float
        Seconds to wait for a worker's answer.
    """

    def __init__(self, num_clients: int, address: str | None, workers: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, device: str = "auto", chunk: int = 0, state_dir: Path = Path("workers"),
                 timeout: float = 600.0):  # fmt: skip
        self.num_clients, self.address, self.workers = num_clients, address, workers
        self.resources, self.device, self.chunk = (num_cpus, num_gpus), device, chunk
        self.state_dir, self.timeout = state_dir, timeout

    def serve(self, main, stop) -> None:
        """Start Ray (unless this process already did), shard the students, run ``main``, clean up."""
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(**ray_init_args(self.address))
        grid = None
        try:
            num_cpus, num_gpus = self.resources
            grid = ShardedGrid(self.num_clients, self.workers, self.state_dir, device=self.device, chunk=self.chunk,
                               num_cpus=num_cpus, num_gpus=num_gpus, timeout=self.timeout)  # fmt: skip
            main(grid)
        finally:
            if grid is not None:
                grid.close()
            if started:
                ray.shutdown()

    def checkpoint(self, out_dir, grid):
        """None: workers keep their shards' students for a restarted actor, but the run keeps no checkpoint."""
        return None

    def hooks(self, grid: ShardedGrid) -> list:
        """The summary's engine fields: devices, workers (shard, pid, placement), their events and timing."""

        def fields() -> dict[str, Any]:
            return {
                "engine": "batched",
                "device": ",".join(sorted({w["device"] for w in grid.info})),
                "chunk": self.chunk,
                "peak_rss_mb": peak_rss_mb(),
                "ray_address": self.address,
                "workers": grid.describe(),
                "worker_events": grid.events,
                "worker_timing": grid.timing,
            }

        return [SummaryFields(fields)]
