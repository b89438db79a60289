"""The batched engine: every student of one architecture trained as one vmapped computation.

``BatchedGrid`` serves Flower's ``Grid`` in-process, so the round loop runs on it unchanged;
``BatchedEngine`` (and, over Ray workers, ``sharded.ShardedEngine``) plug it into the one
entry point ``peerkd.round.run.run_on``; ``run_batched`` is the batched twin of the
Flower-engine runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peerkd.batched.grid import BatchedGrid
from peerkd.batched.memory import peak_gpu_mb, peak_rss_mb
from peerkd.batched.sharded import ShardedEngine
from peerkd.round.checkpoint import Checkpoint
from peerkd.round.hook import RoundHook, SummaryFields
from peerkd.round.run import run_on

__all__ = ["BatchedEngine", "BatchedGrid", "run_batched"]

log = logging.getLogger("peerkd")


class BatchedEngine:
    """All students in this process, on ``device`` in chunks of ``chunk``, their weights kept per
    ``store`` (``BatchedGrid``) between calls (``peerkd.round.run.Engine``)."""

    def __init__(
        self, num_clients: int, device: str = "auto", chunk: int = 0, store: str = "auto", stacked: bool = True
    ):
        self.num_clients, self.device, self.chunk, self.store = num_clients, device, chunk, store
        self.stacked = stacked

    def serve(self, main, stop) -> None:
        """Build the grid and run ``main`` on it (no stop handling: Ctrl-C stops the process's loop)."""
        import torch

        grid = BatchedGrid(
            self.num_clients, device=self.device, chunk=self.chunk, store=self.store, stacked=self.stacked
        )
        if grid.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(grid.device)
        main(grid)

    def checkpoint(self, out_dir: Path, grid: BatchedGrid) -> Checkpoint:
        """The rule's state and every student (``StudentStore.snapshot``), saved after every round."""
        return Checkpoint(out_dir, "batched", lambda: grid.store.snapshot(copy=False), grid.store.restore)

    def hooks(self, grid: BatchedGrid) -> list[RoundHook]:
        """The summary's engine fields: engine, device, chunk, where weights stay between calls
        (``store``), peak host and GPU memory."""
        return [
            SummaryFields(
                lambda: {
                    "engine": "batched",
                    "device": str(grid.device),
                    "chunk": self.chunk,
                    "store": grid.store_place,
                    "peak_rss_mb": peak_rss_mb(),
                    "peak_gpu_mb": peak_gpu_mb(grid.device),
                }
            )
        ]


def run_batched(
    spec,
    strategy,
    out_dir: str | os.PathLike,
    config: dict[str, Any],
    *,
    device: str = "auto",
    chunk: int = 0,
    store: str = "auto",
    stacked: bool = True,
    resume: bool = False,
    cluster: dict[str, Any] | None = None,
    hooks: Sequence[RoundHook] = (),
) -> dict[str, Any]:
    """Run one rule on one world in the batched engine; write the results directory and return the summary.

    Parameters
    ----------
    spec, strategy, out_dir, config
        As for ``peerkd.round.run.run_on`` (checking the rule against the world is the caller's preflight).
    device, chunk, store, stacked : str, int, str, bool
        As for ``BatchedGrid``: ``auto|cpu|cuda``; most students per vmapped call (0: sized from free
        memory); where students' weights stay between calls (``auto|device|host``); stacked rounds.
    resume : bool
        Go on from the checkpoint in ``out_dir`` (rule state and ``StudentStore.snapshot``,
        saved after every round) if there is one; else it is removed.
    cluster : dict | None
        Shard the students over Ray workers (``ShardedEngine``'s ``address``, ``workers``,
        ``num_cpus``, ``num_gpus``); None: all in this process.
    hooks : Sequence[RoundHook]
        Extra round hooks (e.g. a progress bar), after the standard ones.

    Returns
    -------
    dict
        The summary, with ``engine``, ``device``, ``chunk``, ``store``, ``peak_rss_mb``, ``peak_gpu_mb``
        (and, sharded, ``workers``: each worker's shard and placement, and ``worker_events``).
    """
    n = spec.world.num_clients
    if cluster is None:
        engine = BatchedEngine(n, device, chunk, store, stacked)
    else:
        if resume:  # workers keep their shards' students for a restarted actor, but the run keeps no checkpoint
            log.warning("resume: the sharded batched engine (engine.workers > 0) keeps no checkpoint; starting over")
        state_dir = Path(out_dir) / "workers"
        engine = ShardedEngine(
            n, device=device, chunk=chunk, state_dir=state_dir, timeout=spec.round_timeout, **cluster
        )
    return run_on(engine, spec, strategy, out_dir, config, resume=resume, hooks=hooks)
