"""The batched engine: every student of one architecture trained as one vmapped computation.

``BatchedGrid`` serves Flower's ``Grid`` in-process, so ``peerkd.round.loop.run_federation``
runs on it unchanged; ``run_batched`` is the batched twin of the Flower-engine runner.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from peerkd.batched.grid import BatchedGrid
from peerkd.batched.memory import peak_gpu_mb, peak_rss_mb

__all__ = ["BatchedGrid", "run_batched"]

log = logging.getLogger("peerkd")


def run_batched(
    spec,
    strategy,
    out_dir: str | os.PathLike,
    config: dict[str, Any],
    *,
    device: str = "auto",
    chunk: int = 0,
    resume: bool = False,
    cluster: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one rule on one world in the batched engine; write the results directory and return the summary.

    Parameters
    ----------
    spec : peerkd.round.loop.RunSpec
        World and training settings.
    strategy
        The exchange rule (a ``strategies`` rule; checking it against the world is the caller's preflight).
    out_dir : str | os.PathLike
        Results directory (config.yaml, metrics.jsonl, summary.json).
    config : dict
        The resolved config, written as config.yaml.
    device : str
        ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``.
    chunk : int
        Most students per vmapped call (0: sized from free memory).
    resume : bool
        Go on from the checkpoint in ``out_dir`` (rule state and ``StudentStore.snapshot``,
        saved after every round) if there is one; else it is removed.
    cluster : dict | None
        Shard the students over Ray workers (``peerkd.batched.sharded.run_sharded``'s
        ``address``, ``workers``, ``num_cpus``, ``num_gpus``); None: all in this process.

    Returns
    -------
    dict
        The summary, with ``engine``, ``device``, ``chunk``, ``peak_rss_mb`` and ``peak_gpu_mb``
        (and, sharded, ``workers``: each worker's shard and placement, and ``worker_events``).
    """
    if cluster is not None:
        from peerkd.batched.sharded import run_sharded

        if resume:  # workers keep their shards' students for a restarted actor, but the run keeps no checkpoint
            log.warning("resume: the sharded batched engine (engine.workers > 0) keeps no checkpoint; starting over")
        return run_sharded(spec, strategy, out_dir, config, device=device, chunk=chunk, **cluster)
    import torch

    from peerkd.round.checkpoint import Checkpoint
    from peerkd.round.loop import run_federation
    from peerkd.round.results import RunWriter

    grid = BatchedGrid(spec.world.num_clients, device=device, chunk=chunk)
    if grid.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(grid.device)

    def extra() -> dict[str, Any]:
        return {
            "engine": "batched",
            "device": str(grid.device),
            "chunk": chunk,
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": peak_gpu_mb(grid.device),
        }

    checkpoint = Checkpoint(out_dir, "batched", grid.store.snapshot, grid.store.restore)
    if not resume:
        checkpoint.clear()
    writer = RunWriter(Path(out_dir), config, resume=checkpoint.exists())
    return run_federation(grid, spec, strategy, writer, summary_extra=extra, checkpoint=checkpoint)
