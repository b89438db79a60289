"""Stacks of received arrays: ``(n, ...)`` from n arrays of one shape, the form every rule's
maths and every cohort's training take.

On Flower's engine and in deployments each reply's array was decoded from its own bytes, so
they are stacked as ``np.stack`` stacks them, into a new array. In-process (the batched engine)
a cohort's replies hold rows of the cohort's own output (``peerkd.wire.codec.HeldArray``), and a
rule's targets are rows of its own stacked result: when the arrays are consecutive rows of one
array, ``stack_rows`` returns a read-only view of those rows and copies nothing. Both engines
call the same function on the same arrays, so the maths and the values are the same.

Such stacks are large (400 MB of logits for 10,000 peers), made every round and dropped a round
later. ``empty`` makes them in memory that earlier rounds used and let go of: on a VM that backs
each page on first touch, writing 400 MB into new memory costs seconds, into reused memory a
fraction of one.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Sequence

import numpy as np
import torch


def stack_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``, or a read-only view when they are consecutive rows of one array.

    ``stack_rows([a[1], a[2]])`` for a C-ordered ``a`` is ``a[1:3]`` itself (no copy);
    ``stack_rows([a[2], a[1]])`` is a new array. Raises ValueError for no arrays, as ``np.stack``.
    """
    view = _row_view(arrays)
    return np.stack(arrays) if view is None else view


def _row_view(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The view ``stack_rows`` returns, or None unless every array is a C-contiguous view of one
    base array, of one shape and dtype, each starting where the one before it ends."""
    if not arrays or not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    first = arrays[0]
    base, step = first.base, first.nbytes
    if base is None or step == 0 or not first.flags.c_contiguous:
        return None
    start = first.__array_interface__["data"][0]
    for k, a in enumerate(arrays):
        if (
            a.base is not base
            or a.shape != first.shape
            or a.dtype != first.dtype
            or not a.flags.c_contiguous
            or a.__array_interface__["data"][0] != start + k * step
        ):
            return None
    return np.lib.stride_tricks.as_strided(
        first, shape=(len(arrays), *first.shape), strides=(step, *first.strides), writeable=False
    )


def read_tensor(values: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``values`` without a copy, also when they are read-only (received rows,
    ``stack_rows``' views), for code that only reads it: torch cannot mark a tensor read-only and
    warns, which is silenced here and nowhere else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(values))


POOLED_BYTES = 16 << 20  # smaller arrays are left to malloc, which reuses its own memory


class ArrayPool:
    """Big arrays in reused memory. Each block of memory is handed out as one array at a time;
    every view of it (rows, a tensor over it, a stack of its rows) refers to that array, so the
    block is free again only once all of them are gone, which a weak reference tells without
    counting references. Blocks of a size no longer asked for are released when a new one is made.
    """

    def __init__(self) -> None:
        self._blocks: list[tuple[bytearray, weakref.ref]] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """A new, writeable, C-ordered array of ``shape`` and ``dtype`` (contents undefined, as
        ``np.empty``'s), in a free block of its size when the pool holds one."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < POOLED_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            free = [k for k, (mem, ref) in enumerate(self._blocks) if ref() is None]
            block = next((self._blocks[k][0] for k in free if len(self._blocks[k][0]) == nbytes), None)
            if block is None:  # the free blocks of other sizes go back to the system
                self._blocks = [b for k, b in enumerate(self._blocks) if k not in free]
                block = bytearray(nbytes)
            else:
                self._blocks = [b for b in self._blocks if b[0] is not block]
            flat = np.frombuffer(block, dtype)
            self._blocks.append((block, weakref.ref(flat)))
        return flat.reshape(shape)

    def held_bytes(self) -> int:
        """Bytes of every block the pool keeps, handed out or free."""
        with self._lock:
            return sum(len(mem) for mem, _ in self._blocks)


POOL = ArrayPool()
