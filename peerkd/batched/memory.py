"""How many students fit in one vmapped call, and how much memory a run took."""

from __future__ import annotations

import math
import os
import resource

import torch
from torch import nn

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


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (the GPU's, or the machine's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30  # no sysconf: assume 8 GiB


def auto_chunk(
    model: nn.Module, input_shape: tuple[int, ...], train_rows: int, eval_rows: int, students: int, device: torch.device
) -> int:
    """Students per vmapped call so that a call's estimate fits in ``MEMORY_SHARE`` of free memory."""
    need = student_bytes(model, input_shape, train_rows, eval_rows)
    fits = int(MEMORY_SHARE * free_bytes(device) // max(need, 1))
    return max(1, min(students, fits))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb(device: torch.device) -> float | None:
    """Peak memory PyTorch allocated on ``device`` since the last reset, in MiB (None off GPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
