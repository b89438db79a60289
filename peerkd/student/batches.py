"""Batch orders for one student or a whole cohort at once: pure tensor code, no Python per student.

Every training call pairs private batches with transfer-set batches; an epoch is one pass over
the larger set and the smaller is cycled, reshuffled each time it runs out. A shuffle here is a
keyed pseudo-random permutation evaluated per position (a 4-round Feistel network on the next
power of 4, cycle-walked into ``0..n-1``), so position ``p`` of a student's order is a pure
function of (its seed, epoch, pass, ``p``): planning S students in one call gives each exactly
the plan it gets alone. The per-client path plans one student; the batched engine a cohort
with a constant number of tensor calls.

The transfer order comes from a seed of its own (``transfer_seed``), the same for every
client of a round: all students distill on the same transfer batch at the same step, so the
batched engine runs that half of a step on one shared input (one GEMM for all students, no
per-student copy of the batch). Both engines draw these orders, so they see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
ROUNDS = 4  # Feistel rounds
ROUND_KEYS = (0x9E3779B9, 0x3C6EF372, 0xDAA66D2B, 0x78DDE6E4)  # k * golden ratio mod 2**32: each round its own
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


def seed_key(seeds: torch.Tensor, stream: int) -> torch.Tensor:
    """A 32-bit key per (non-negative int64) seed, distinct per ``stream``."""
    return mix32(mix32(seeds & MASK32) ^ mix32(((seeds >> 32) & MASK32) ^ stream))


def permute(items: torch.Tensor, n: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``perm_key(items)``: for each element, its image under the permutation of ``0..n-1``
    keyed by ``key`` (all three broadcast together; ``0 <= items < n``)."""
    items, n, key = (t.reshape(-1) for t in torch.broadcast_tensors(items, n, key))
    bits = torch.ceil(torch.log2(n.clamp(min=2).double())).long()
    half = ((bits + 1) // 2).clamp(min=1)
    out = _feistel(items, key, half)
    todo = (out >= n).nonzero().squeeze(1)  # cycle-walking: re-encrypt until inside 0..n-1
    while len(todo):
        y = _feistel(out[todo], key[todo], half[todo])
        out[todo] = y
        todo = todo[y >= n[todo]]
    return out


def _feistel(x: torch.Tensor, key: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """A balanced Feistel network on ``2 * half`` bits: a bijection of ``0..4**half - 1``."""
    mask = (torch.ones_like(half) << half) - 1
    left, right = x >> half, x & mask
    for r in range(ROUNDS):
        left, right = right, left ^ (mix32(right ^ key ^ ROUND_KEYS[r]) & mask)
    return (left << half) | right


def cycled_orders(sizes: torch.Tensor, lengths: torch.Tensor, epochs: int, seeds: torch.Tensor, stream: int):
    """Each row's first ``lengths[s]`` indices into ``0..sizes[s]-1`` per epoch: passes over a
    fresh permutation each, cut at the length. Returns ``(S, epochs, max length)`` int64, 0 past a
    row's length (and everywhere for an empty set)."""
    device = sizes.device
    width = int(lengths.max()) if len(lengths) else 0
    pos = torch.arange(width, device=device)
    n = sizes.clamp(min=1)[:, None, None]
    p = pos[None, None, :]
    epoch = torch.arange(epochs, device=device)[None, :, None]
    key = mix32(seed_key(seeds, stream)[:, None, None] ^ epoch) ^ mul32(p // n, ROUND_KEYS[0])  # per pass
    out = permute(p % n, n, key).reshape(len(sizes), epochs, width)
    keep = (p < lengths[:, None, None]) & (sizes[:, None, None] > 0)
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=device))


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
    (step k is epoch ``k // spe[s]``, batch ``k % spe[s]``); 0 past a student's last step."""
    k = torch.arange(k_max, device=spe.device)[:, None]  # (K, 1)
    per = spe.clamp(min=1)[None, :]
    e, j = (k // per).clamp(max=batches.shape[1] - 1), k % per
    rows = torch.arange(batches.shape[0], device=spe.device)[None, :]
    out = batches[rows, e, j]  # (K, S, B)
    return torch.where((k < batches.shape[1] * spe[None, :])[..., None], out, torch.zeros_like(out))
