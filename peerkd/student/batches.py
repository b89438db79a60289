"""Batch orders for one student or a whole cohort at once: pure tensor code, no Python per student.

Every training call pairs private batches with transfer-set batches; an epoch is one pass over
the larger set and the smaller is cycled, reshuffled each time it runs out. A shuffle is the
stable argsort of 32-bit hashes of (seed, epoch, pass, item), so a student's order is a pure
function of its own seed and sizes: planning S students in one call gives each exactly the plan
it gets alone. The per-client path plans one student; the batched engine a cohort with a
constant number of tensor calls.

The transfer order comes from a seed of its own (``transfer_seed``), the same for every
client of a round: all students distill on the same transfer batch at the same step, so the
batched engine runs that half of a step on one shared batch of inputs (no per-student copy of
it). Both engines draw these orders, so they see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
GOLDEN, ITEM_MULT = 0x9E3779B9, 0x85EBCA6B  # odd multipliers: distinct passes and items, distinct keys
PRIVATE, TRANSFER = 0x51ED270B, 0x2545F491  # key streams: private and transfer orders never share keys


def mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for ``0 <= x, c < 2**32`` in int64, without overflowing."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32), elementwise on int64 tensors of values < 2**32."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def signed32(c: int) -> int:
    """The 32-bit constant ``c`` as the int32 with its bits (two's complement)."""
    return c - (1 << 32) if c >= 1 << 31 else c


def mix32_int32(x: torch.Tensor) -> torch.Tensor:
    """``mix32`` on int32 tensors holding the hash's 32 bits (two's complement), bit for bit: an
    int32 product wraps modulo 2**32, as the hash's does, and a right shift is made logical by a
    mask. A third of ``mix32``'s passes, over half the bytes."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * signed32(0x7FEB352D)
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * signed32(0x846CA68B)
    return x ^ ((x >> 16) & 0xFFFF)


def as_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values ``< 2**32`` as int32 with the same 32 bits."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def seed_key(seeds: torch.Tensor, stream: int) -> torch.Tensor:
    """A 32-bit key per (non-negative int64) seed, distinct per ``stream``."""
    return mix32(mix32(seeds & MASK32) ^ mix32(((seeds >> 32) & MASK32) ^ stream))


def pass_keys(seeds: torch.Tensor, stream: int, epoch: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """The 32-bit key of one pass (``rep``) of one epoch of a seed's order (broadcast together)."""
    return mix32(mix32(seed_key(seeds, stream) ^ epoch) ^ mul32(rep, GOLDEN))


def item_keys(pass_key: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Sort keys of ``items`` in a pass: its permutation is ``argsort`` of them (stable: ties by item)."""
    return mix32(pass_key ^ mul32(items, ITEM_MULT))


def cycled_orders(sizes: torch.Tensor, lengths: torch.Tensor, epochs: int, seeds: torch.Tensor, stream: int):
    """Each row's first ``lengths[s]`` indices into ``0..sizes[s]-1`` per epoch: passes over a
    fresh permutation each, cut at the length. Returns ``(S, epochs, max length)`` int64, 0 past a
    row's length (and everywhere for an empty set).

    A pass's permutation is the stable argsort of ``item_keys``; it is sorted in one padded
    ``(S, epochs, passes, max size)`` block when shards are alike, else in one flat segmented
    sort. Both give the same orders (tests/student/test_batches.py)."""
    device = sizes.device
    width = int(lengths.max()) if len(lengths) else 0
    n = sizes.clamp(min=1)
    reps = torch.div(lengths + n - 1, n, rounding_mode="floor").clamp(min=1)
    if not len(sizes):
        return torch.zeros((0, epochs, width), dtype=torch.int64, device=device)
    dense, flat = len(sizes) * int(reps.max()) * int(n.max()), int((reps * n).sum())
    perm = _dense_passes if dense <= 2 * flat + 1024 else _flat_passes
    p = torch.arange(width, device=device)[None, None, :]
    out = perm(n, reps, epochs, seeds, stream, p)  # (S, epochs, width): item at position p
    if bool((lengths == width).all()) and bool((sizes > 0).all()):  # every position used: nothing to mask
        return out
    keep = (p < lengths[:, None, None]) & (sizes[:, None, None] > 0)
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=device))


def _dense_passes(n, reps, epochs, seeds, stream, p):
    """Every pass sorted in one padded block: ``(S, E, R, max n)`` keys, padding last."""
    device = n.device
    items = torch.arange(int(n.max()), device=device)
    epoch = torch.arange(epochs, device=device)[None, :, None]
    rep = torch.arange(int(reps.max()), device=device)[None, None, :]
    passes = as_int32(pass_keys(seeds[:, None, None], stream, epoch, rep)[..., None])
    # item_keys in int32 (mix32_int32), its sign bit flipped so that int32 order is the keys' unsigned
    # order; padding takes the largest int32, and a stable sort keeps any real item tied with it first
    keys = mix32_int32(passes ^ as_int32(mul32(items, ITEM_MULT))) ^ signed32(1 << 31)
    keys = torch.where(items < n[:, None, None, None], keys, torch.iinfo(torch.int32).max)
    order = keys.argsort(dim=-1, stable=True)  # (S, E, R, n_max)
    nn = n[:, None, None]
    at = (p // nn).clamp(max=order.shape[2] - 1) * order.shape[3] + p % nn  # (S, 1, width): pass, then item
    flat = order.reshape(len(n), epochs, -1)
    return flat.gather(2, at.expand(-1, epochs, -1))


def _flat_passes(n, reps, epochs, seeds, stream, p):
    """Every pass sorted in one flat segmented sort: (segment, key) pairs, segments in order."""
    device = n.device
    per_pass = n.repeat_interleave(reps * epochs)  # each (student, epoch, rep) pass's size, in order
    student = torch.arange(len(n), device=device).repeat_interleave(reps * epochs)
    local = torch.arange(len(per_pass), device=device) - torch.repeat_interleave(
        torch.cumsum(reps * epochs, 0) - reps * epochs, reps * epochs
    )  # pass index within its student: epoch * reps + rep
    r = reps[student]
    key = pass_keys(seeds[student], stream, local // r, local % r)
    seg = torch.arange(len(per_pass), device=device).repeat_interleave(per_pass)
    starts = torch.cumsum(per_pass, 0) - per_pass
    items = torch.arange(len(seg), device=device) - starts[seg]
    order = ((seg << 33) | item_keys(key[seg], items)).argsort(stable=True)
    sorted_items = items[order]  # segments stay in order, each permuted
    first = starts[(torch.cumsum(reps * epochs, 0) - reps * epochs)]  # each student's first pass
    nn, rr = n[:, None, None], reps[:, None, None]
    e = torch.arange(epochs, device=device)[None, :, None]
    at = first[:, None, None] + (e * rr + (p // nn).clamp(max=rr - 1)) * nn + p % nn
    return sorted_items[at.clamp(max=len(sorted_items) - 1)]


@dataclass(frozen=True)
class CohortPlan:
    """Every step's batches of one training call for S students.

    ``private[k, s]`` indexes student s's own set at step k; ``transfer`` is ``(K, B)`` when
    every distilling student takes the same transfer batch at each step (``shared``), else
    ``(K, S, B)``; None without transfer-set batches. Steps past a student's last hold index 0.
    """

    private: torch.Tensor  # (K, S, B) int64
    transfer: torch.Tensor | None
    steps: torch.Tensor  # (S,) int64: epochs * steps_per_epoch
    steps_per_epoch: torch.Tensor  # (S,) int64

    @property
    def shared(self) -> bool:
        return self.transfer is not None and self.transfer.dim() == 2


def plan_cohort(
    sizes: torch.Tensor,
    n_transfer: int,
    batch_size: int,
    epochs: int,
    seeds: torch.Tensor,
    transfer_seed: int,
    distill: torch.Tensor | None = None,
) -> CohortPlan:
    """Batches of ``epochs`` epochs for students with ``sizes`` private samples, paired with batches
    over ``n_transfer`` transfer inputs (0: none) in an order every student shares.

    Parameters
    ----------
    sizes, seeds : torch.Tensor
        ``(S,)`` int64: each student's private samples and batch-order seed (>= 0).
    n_transfer : int
        Transfer inputs to pair with (0: private batches only).
    batch_size, epochs : int
        Rows per batch; passes over the larger of the two sets.
    transfer_seed : int
        The seed of the transfer order (>= 0), the same for every student of a round.
    distill : torch.Tensor | None
        ``(S,)`` bool: the students whose steps pair with transfer batches (default all); the
        others plan private batches alone, as ``plan_batches`` with ``n_transfer=0``.
    """
    device = sizes.device
    distill = torch.ones_like(sizes, dtype=torch.bool) if distill is None else distill
    paired = torch.where(distill, sizes.clamp(min=n_transfer), sizes)
    spe = torch.div(paired + batch_size - 1, batch_size, rounding_mode="floor")
    k_max = epochs * int(spe.max()) if len(spe) else 0
    width = int(spe.max()) if len(spe) else 0
    grid = cycled_orders(sizes, spe * batch_size, epochs, seeds, PRIVATE)  # (S, E, W * B)
    private = _by_step(grid.reshape(len(sizes), epochs, width, batch_size), spe, k_max)
    transfer = None
    if n_transfer and bool(distill.any()):
        shared = cycled_orders(
            torch.tensor([n_transfer], device=device),
            torch.tensor([width * batch_size], device=device),
            epochs,
            torch.tensor([transfer_seed], device=device),
            TRANSFER,
        ).reshape(1, epochs, width, batch_size)
        steps = spe[distill]
        if bool((steps == steps[0]).all()):  # rows past the distilling students' last step: 0
            transfer = torch.zeros((k_max, batch_size), dtype=torch.int64, device=device)
            transfer[: epochs * int(steps[0])] = shared[0, :, : int(steps[0])].reshape(-1, batch_size)
        else:  # steps per epoch differ: student s's step k is (epoch k // spe[s], batch k % spe[s])
            transfer = _by_step(shared.expand(len(sizes), -1, -1, -1), spe, k_max)
    return CohortPlan(private, transfer, epochs * spe, spe)


def _by_step(batches: torch.Tensor, spe: torch.Tensor, k_max: int) -> torch.Tensor:
    """``(S, E, W, B)`` batches per (epoch, batch) as ``(K, S, B)`` in each student's step order
    (step k is epoch ``k // spe[s]``, batch ``k % spe[s]``); 0 past a student's last step. When every
    student takes all W batches an epoch, that order is the batches' own: a view, no copy."""
    if k_max == batches.shape[1] * batches.shape[2] and bool((spe == batches.shape[2]).all()):
        return batches.reshape(batches.shape[0], k_max, batches.shape[3]).transpose(0, 1)
    k = torch.arange(k_max, device=spe.device)[:, None]  # (K, 1)
    per = spe.clamp(min=1)[None, :]
    e, j = (k // per).clamp(max=batches.shape[1] - 1), k % per
    rows = torch.arange(batches.shape[0], device=spe.device)[None, :]
    out = batches[rows, e, j]  # (K, S, B)
    return torch.where((k < batches.shape[1] * spe[None, :])[..., None], out, torch.zeros_like(out))
