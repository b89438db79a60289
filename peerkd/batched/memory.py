"""How many students fit in one vmapped call, how much memory a run will need, and how much it took."""

from __future__ import annotations

import math
import os
import resource
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from peerkd.errors import ConfigError
from peerkd.student.models import num_parameters

MEMORY_SHARE = 0.5  # of the free memory a chunk may plan to use: estimates are rough, allocators fragment


def student_bytes(model: nn.Module, input_shape: tuple[int, ...], train_rows: int, eval_rows: int) -> int:
    """Rough bytes one student needs in a vmapped call: training on ``train_rows`` inputs of
    its own, or predicting on ``eval_rows`` inputs shared by all students.

    Weights ~10 copies (weights, live copy, gradients, Adam's two moments and their
    updates); per training row its input and every module's output, kept for the backward
    pass and its gradient (3×); per prediction row the outputs alone.
    """
    n_params = sum(p.numel() for p in model.parameters())
    acts = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: acts.append(out.numel())) for m in model.modules() if m is not model
    ]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    train_row = math.prod(input_shape) + 3 * sum(acts)
    return 4 * (10 * n_params + train_rows * train_row + eval_rows * sum(acts))


# Measured, 1,000 mlp64 students training on 2 cores: 8.3 ms each in chunks of 16, 4.4-6.8 at 32, 5.3-6.0 at 64,
# 7.3-9.7 all at once (each step's traffic out of cache); below 16 the per-call overheads win.
CPU_WORKING_SET = 32 << 20  # bytes
CPU_MIN_CHUNK = 16


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (the GPU's, or the machine's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30  # no sysconf: assume 8 GiB


def plan_bytes(rows: int, batch_size: int, epochs: int) -> int:
    """Rough bytes of one student's batch plan (``training.plan_batches``): int64 indices for
    ``epochs`` passes over ``rows`` inputs, every batch full (so at least one batch per pass), for
    the private and the transfer set, each built (shuffled copies) and then stacked: 4 copies."""
    steps = math.ceil(max(rows, 1) / batch_size)
    return 4 * 8 * epochs * steps * batch_size


def fleet_bytes(n_params: int, students: int, logit_floats: int) -> int:
    """Rough bytes a run holds for all ``students`` between calls: each student's fp32 weights
    twice (the store, and a checkpoint's snapshot) and what it sends, ``logit_floats`` fp32
    values, three times (its reply, the server's aggregate inputs, the targets sent back)."""
    return 4 * students * (2 * n_params + 3 * logit_floats)


def available_ram() -> int:
    """Bytes this process may still allocate: ``MemAvailable`` (free memory and reclaimable
    cache), capped by the cgroup's limit where one is set (a container); 8 GiB if unreadable."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        avail = 8 << 30
    for limit, used in CGROUP_FILES:
        try:
            cap = Path(limit).read_text().strip()
            if cap.isdigit():
                avail = min(avail, max(0, int(cap) - int(Path(used).read_text())))
        except (OSError, ValueError):
            continue
    return avail


CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1 (a limit of "max", or v1's huge number, leaves MemAvailable)
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


class MemoryPart(NamedTuple):
    """One term of a memory estimate: what it holds, the setting that drives it, its bytes, and
    how to shrink it (default: a smaller value of that setting)."""

    what: str
    field: str
    bytes: int
    fix: str = ""


def check_fits(parts: list[MemoryPart], available: int | None = None) -> None:
    """ConfigError naming the largest part's setting if ``parts`` sum to more than ``available``
    bytes (default ``available_ram()``), with the estimate, the limit and the parts in one line."""
    available = available_ram() if available is None else available
    total = sum(p.bytes for p in parts)
    if total <= available:
        return
    big = max(parts, key=lambda p: p.bytes)
    listed = "; ".join(f"{p.what} {human_bytes(p.bytes)}" for p in sorted(parts, key=lambda p: -p.bytes) if p.bytes)
    raise ConfigError(
        big.field,
        f"the run would need ~{human_bytes(total)} of memory, but {human_bytes(available)} is available ({listed})",
        f"{big.fix or 'a smaller ' + big.field}, or a machine with more memory",
    )


def human_bytes(n: float) -> str:
    """``human_bytes(3 * 2**30) == "3.0 GiB"``: binary units, one decimal."""
    units, k = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"), 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def auto_chunk(
    model: nn.Module, input_shape: tuple[int, ...], train_rows: int, eval_rows: int, students: int, device: torch.device
) -> int:
    """Students per vmapped call so that a call's estimate fits in ``MEMORY_SHARE`` of free memory;
    on a CPU also so that their weights, gradients and Adam moments (16 bytes a parameter) stay
    within ``CPU_WORKING_SET`` (a cache-sized working set: every step reads and writes all four)."""
    need = student_bytes(model, input_shape, train_rows, eval_rows)
    fits = int(MEMORY_SHARE * free_bytes(device) // max(need, 1))
    if device.type == "cpu":
        fits = min(fits, max(CPU_MIN_CHUNK, CPU_WORKING_SET // (16 * max(num_parameters(model), 1))))
    return max(1, min(students, fits))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb(device: torch.device) -> float | None:
    """Peak memory PyTorch allocated on ``device`` since the last reset, in MiB (None off GPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


class ArrayPool:
    """Large arrays made once and handed out again once nobody else holds them.

    A fresh array's pages are faulted in by the pass that first writes it, and memory freed back
    to the system is, on a VM, often handed back to the host within seconds: a round's transfer-set
    logits at 10,000 students (400 MB) took 1.2–1.8 s a round to write into a new array on the
    2-core box, against 0.05 s for memory written before. An array is free when the pool holds the
    only reference to it: a reply, a rule or a checkpoint still reading it (or any view of it, which
    refers to it) keeps it out of reuse, so a reused array is never one something still reads.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep  # arrays kept for reuse: a round's, and the one before while a rule still reads it
        self._arrays: list[np.ndarray] = []
        self._free_refs = _refs([np.empty(0)], 0)  # the count of an array only a list holds, measured

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``: a kept one nobody holds, else a new one
        (kept, in place of the oldest beyond ``keep``)."""
        dtype, shape = np.dtype(dtype), tuple(shape)
        for i in range(len(self._arrays)):  # no name bound to an array before its count is taken
            if _refs(self._arrays, i) <= self._free_refs and self._arrays[i].shape == shape:
                if self._arrays[i].dtype == dtype:
                    return self._arrays[i]
        new = np.empty(shape, dtype)
        self._arrays = [new, *self._arrays][: self.keep]
        return new


def _refs(items: list, i: int) -> int:
    """References to ``items[i]``, counted the same way for the pool's arrays and its probe."""
    return sys.getrefcount(items[i])
