"""Stacks of received arrays: ``(n, ...)`` from n arrays of one shape, the form every rule's
maths and every cohort's training take.

On Flower's engine and in deployments each reply's array was decoded from its own bytes, so
they are stacked as ``np.stack`` stacks them, into a new array. In-process (the batched engine)
a cohort's replies hold rows of the cohort's own output (``peerkd.wire.codec.HeldArray``), and a
rule's targets are rows of its own stacked result: when the arrays are consecutive rows of one
array, ``stack_rows`` returns a read-only view of those rows and copies nothing. Both engines
call the same function on the same arrays, so the maths and the values are the same.
"""

from __future__ import annotations

import warnings
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
