"""Pure aggregation maths for logit exchange: arrays in, arrays out."""

from __future__ import annotations

import numpy as np
import torch

from peerkd.wire.rows import read_tensor, stack_rows
from strategies.robust import Aggregator

BLOCK = 1 << 20  # values per block of float64 work on a stack


def leave_one_out_mean(stack: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row i of the result is the mean of all rows but i: the sum of all rows, less row i, over n − 1.

    ``leave_one_out_mean([[1, 3], [3, 1], [2, 2]])[0] == [2.5, 1.5]``.

    The sum is taken once in float64; each row is then ``sum/(n−1) − row_i/(n−1)`` in one float32
    pass (torch's, on every core): within a float32 step of the logits' scale, with no per-row copies.

    Parameters
    ----------
    stack : np.ndarray
        ``(n, ...)`` with n ≥ 2: one entry per peer (e.g. ``(n, P, C)`` logits).
    out : np.ndarray | None
        A C-contiguous float32 array of ``stack``'s shape to write the result into (e.g. last round's:
        memory written before is cheaper to write again than fresh memory, which the kernel faults
        in and zeroes page by page: 400 MB at 10,000 clients); None: a new array.

    Returns
    -------
    np.ndarray
        Same shape as ``stack``, float32 (``out`` when given).
    """
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 peers, got {n}")
    share = (stack.sum(axis=0, dtype=np.float64) / (n - 1)).astype(np.float32)
    result = torch.empty(stack.shape, dtype=torch.float32) if out is None else torch.from_numpy(out)
    if result.shape != stack.shape or result.dtype != torch.float32 or not result.is_contiguous():
        raise ValueError(f"out: a C-contiguous float32 array of shape {stack.shape}, got {tuple(result.shape)}")
    torch.sub(torch.from_numpy(share), read_tensor(stack), alpha=1.0 / (n - 1), out=result)
    return result.numpy()


def peer_targets(
    logits: dict[int, np.ndarray],
    recipients: list[int],
    aggregator: Aggregator | None = None,
    trust: dict[int, float] | None = None,
    means: np.ndarray | None = None,
) -> dict[int, np.ndarray | None]:
    """Target for each recipient: the mean (or ``aggregator``'s robust aggregate) of the *other* peers' logits.

    A recipient that sent logits gets the leave-one-out mean; one that did not (new or
    failed last round) gets the mean of all senders; with no other sender it gets None.

    Parameters
    ----------
    logits : dict[int, np.ndarray]
        Latest ``(P, C)`` logits by peer id.
    recipients : list[int]
        Peer ids to build targets for.
    aggregator : Aggregator | None
        A robust aggregate instead of the mean (its leave-one-out variant for senders).
    trust : dict[int, float] | None
        Weights by peer id for the aggregator (``reputation``: ``strategies.robust.closeness_weights``).
    means : np.ndarray | None
        Where the leave-one-out means go (``leave_one_out_mean``'s ``out``; the plain mean only).
    """
    senders = sorted(logits)
    out: dict[int, np.ndarray | None] = {}
    if not senders:
        return {r: None for r in recipients}
    stack = stack_rows([logits[s] for s in senders])  # received rows of one array: no copy
    robust = aggregator is not None and not aggregator.plain
    w = None if trust is None else np.array([trust[s] for s in senders])
    loo = None
    if len(senders) >= 2:
        loo = aggregator.leave_one_out(stack, w) if robust else leave_one_out_mean(stack, means)
    everyone = None
    if any(r not in logits for r in recipients):  # newcomers: the mean of every sender
        everyone = aggregator(stack, w) if robust else stack.mean(axis=0).astype(np.float32)
    position = {s: k for k, s in enumerate(senders)}
    for r in recipients:
        if r in logits:
            out[r] = None if loo is None else loo[position[r]]
        else:
            out[r] = everyone
    return out


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def entropy_reduction_average(
    probs: np.ndarray, temperature: float, aggregator: Aggregator | None = None
) -> np.ndarray:
    """DS-FL's ERA: the mean of peers' probabilities, sharpened by softmax(p̄ / T).

    ``entropy_reduction_average([[[0.6, 0.4]], [[0.8, 0.2]]], 0.1)[0]`` is
    ``softmax([7, 3]) = [0.98201, 0.01799]``.

    Parameters
    ----------
    probs : np.ndarray
        ``(n, P, C)`` softmax outputs of n peers.
    temperature : float
        Sharpening temperature; below 1 lowers the entropy of the average.
    aggregator : Aggregator | None
        A robust aggregate of the probabilities instead of their mean.
    """
    probs = np.asarray(probs, dtype=np.float64)
    mean = probs.mean(axis=0) if aggregator is None or aggregator.plain else aggregator(probs).astype(np.float64)
    return _softmax(mean / temperature).astype(np.float32)


def ensemble_nll_grad(weights: np.ndarray, true_class_probs: np.ndarray) -> tuple[float, np.ndarray]:
    """Loss and gradient of the weighted ensemble's NLL, L(ω) = −mean_n log Σ_j ω_j p_j(y_n).

    ∂L/∂ω_j = −mean_n p_j(y_n) / Σ_k ω_k p_k(y_n).

    Parameters
    ----------
    weights : np.ndarray
        ``(n,)`` peer weights on the simplex.
    true_class_probs : np.ndarray
        ``(n, N)``: each peer's probability of the true label of each validation sample.
    """
    p = np.asarray(true_class_probs, dtype=np.float64)
    mix = np.clip(np.asarray(weights, dtype=np.float64) @ p, 1e-12, None)
    return float(-np.log(mix).mean()), -(p / mix).mean(axis=1)


def mirror_descent_step(weights: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
    """Exponentiated-gradient step on the simplex: ω ← ω·exp(−η g), then normalise."""
    w = np.asarray(weights, dtype=np.float64) * np.exp(-lr * (np.asarray(grad) - np.min(grad)))
    return w / w.sum()


def weighted_leave_one_out(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row i: the others' weighted mean, ``Σ_{j≠i} w_j x_j / Σ_{j≠i} w_j``; their plain mean where
    their weights sum to 0. ``weighted_leave_one_out([[0], [2], [4]], [1, 1, 2])`` is
    ``[[10/3], [8/3], [1]]``.

    O(n): the weighted sum S is taken once and each row is ``(S − w_i x_i)/(W − w_i)``, in float64
    a block of rows at a time. That subtraction loses digits only when ``w_i`` is most of ``W``; at
    most one peer can hold more than half of it, and its row is summed without it instead.

    Parameters
    ----------
    stack : np.ndarray
        ``(n, ...)``, n ≥ 2.
    weights : np.ndarray
        ``(n,)``, ≥ 0 (peer weights on the simplex, or any scale).
    """
    stack = np.asarray(stack, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float64)
    n, total = len(stack), float(w.sum())
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 peers, got {n}")
    if total <= 0:
        return leave_one_out_mean(stack)
    flat = stack.reshape(n, -1)
    s, safe = _weighted_sum(flat, w), w <= total / 2
    rest = np.where(safe, total - w, 1.0)
    out = np.empty(flat.shape, dtype=np.float32)
    block = max(1, BLOCK // max(flat.shape[1], 1))
    for i in range(0, n, block):  # float64 temporaries of a few MB, not of the whole stack
        out[i : i + block] = (s - w[i : i + block, None] * flat[i : i + block]) / rest[i : i + block, None]
    for i in np.flatnonzero(~safe):  # the one peer with most of the weight: the others summed without it
        others = w.copy()
        others[i] = 0.0
        if others.sum() > 0:
            out[i] = _weighted_sum(flat, others) / others.sum()
        else:
            out[i] = (flat.sum(axis=0, dtype=np.float64) - flat[i]) / (n - 1)
    return out.reshape(stack.shape)


def _weighted_sum(flat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_j w_j flat_j`` in float64, a block of rows at a time."""
    out = np.zeros(flat.shape[1], dtype=np.float64)
    block = max(1, BLOCK // max(flat.shape[1], 1))
    for i in range(0, len(flat), block):
        out += w[i : i + block] @ flat[i : i + block].astype(np.float64)
    return out


def softened(stack: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(stack / T)`` over the last axis, float32 (``(n, P, C)`` logits to probabilities)."""
    z = read_tensor(np.asarray(stack, dtype=np.float32)) / temperature
    return torch.softmax(z, dim=-1).numpy()


def weighted_peer_targets(
    logits: dict[int, np.ndarray],
    weights: dict[int, float],
    recipients: list[int],
    temperature: float,
    aggregator: Aggregator | None = None,
) -> dict[int, np.ndarray | None]:
    """WML targets: for each recipient, T·log of the ω-weighted mix of the *other* peers'
    softmax(z/T), weights renormalised over those peers (uniform if theirs sum to 0).

    Sent as logits, ``softmax(target / T)`` is exactly the mixture p̄_i, and KL(p̄_i ‖ p_i) has
    the same gradient in the student as Σ_j ω̃_j KL(p_j ‖ p_i): one matrix per recipient
    carries the whole weighted loss. The mixes are one stacked computation
    (``weighted_leave_one_out``: O(n), not n mixes of n − 1 peers); a recipient that sent nothing
    mixes every sender. With a robust ``aggregator`` the mix is its aggregate of the others'
    probabilities (ω scaling the mean-like methods), renormalised per row, one recipient at a time.
    """
    senders = sorted(logits)
    if not senders:
        return {r: None for r in recipients}
    probs = softened(stack_rows([logits[k] for k in senders]), temperature)
    if aggregator is not None and not aggregator.plain:
        return _robust_weighted_targets(dict(zip(senders, probs)), weights, recipients, temperature, aggregator)
    w = np.array([weights.get(k, 0.0) for k in senders], dtype=np.float64)
    loo = mix_logits(weighted_leave_one_out(probs, w), temperature) if len(senders) >= 2 else None
    everyone = None
    if any(r not in logits for r in recipients):  # newcomers: every sender's mix
        flat = probs.reshape(len(w), -1)
        mean = _weighted_sum(flat, w) / w.sum() if w.sum() > 0 else flat.mean(axis=0, dtype=np.float64)
        everyone = mix_logits(mean.reshape(probs.shape[1:]), temperature)
    position = {k: i for i, k in enumerate(senders)}
    return {r: everyone if r not in position else None if loo is None else loo[position[r]] for r in recipients}


def mix_logits(mix: np.ndarray, temperature: float) -> np.ndarray:
    """Logits whose softmax at ``temperature`` is the mixture ``mix``: ``T·log(mix)``, float32 (mix ≥ 1e-12)."""
    return (temperature * np.log(np.clip(mix, 1e-12, None))).astype(np.float32)


def _robust_weighted_targets(
    probs: dict[int, np.ndarray],
    weights: dict[int, float],
    recipients: list[int],
    temperature: float,
    aggregator: Aggregator,
) -> dict[int, np.ndarray | None]:
    """``weighted_peer_targets`` with a robust aggregate: per recipient, over the others."""
    out: dict[int, np.ndarray | None] = {}
    for r in recipients:
        others = [k for k in sorted(probs) if k != r]
        if not others:
            out[r] = None
            continue
        w = np.array([weights.get(k, 0.0) for k in others])
        w = w / w.sum() if w.sum() > 0 else np.full(len(others), 1.0 / len(others))
        mix = np.clip(aggregator(np.stack([probs[k] for k in others]), w).astype(np.float64), 1e-12, None)
        out[r] = mix_logits(mix / mix.sum(axis=-1, keepdims=True), temperature)
    return out


def class_consensus(
    means: dict[int, np.ndarray],
    counts: dict[int, np.ndarray],
    recipients: list[int],
    aggregator: Aggregator | None = None,
) -> dict[int, np.ndarray | None]:
    """FD targets: for each recipient, per class, the mean of the *other* peers' per-class mean
    logits over the peers that hold that class; rows no other peer holds are NaN.

    One stacked computation: the holders' sum and count per class, less the recipient's own
    (O(n), not n sums over n − 1 peers); a recipient that sent nothing gets every sender's.

    Parameters
    ----------
    means : dict[int, np.ndarray]
        ``(C, C)`` per-class mean logits by peer.
    counts : dict[int, np.ndarray]
        ``(C,)`` label counts by peer (0: the peer lacks the class).
    aggregator : Aggregator | None
        Per class, a robust aggregate of the holders' rows instead of their mean (per recipient).
    """
    if aggregator is not None and not aggregator.plain:
        return _robust_class_consensus(means, counts, recipients, aggregator)
    senders = sorted(means)
    if not senders:
        return {r: None for r in recipients}
    stack = stack_rows([means[k] for k in senders]).astype(np.float64)  # (n, C, C)
    has = np.stack([counts[k] > 0 for k in senders]).astype(np.float64)  # (n, C)
    rows = has[:, :, None] * stack
    total, held = rows.sum(axis=0), has.sum(axis=0)
    position = {k: i for i, k in enumerate(senders)}
    out: dict[int, np.ndarray | None] = {}
    for r in recipients:
        if r in position and len(senders) == 1:
            out[r] = None
            continue
        i = position.get(r)
        t, n = (total, held) if i is None else (total - rows[i], held - has[i])
        out[r] = np.where(n[:, None] > 0, t / np.maximum(n, 1)[:, None], np.nan).astype(np.float32)
    return out


def _robust_class_consensus(
    means: dict[int, np.ndarray], counts: dict[int, np.ndarray], recipients: list[int], aggregator: Aggregator
) -> dict[int, np.ndarray | None]:
    """``class_consensus`` with a robust aggregate: per recipient, over the others."""
    out: dict[int, np.ndarray | None] = {}
    for r in recipients:
        others = [k for k in sorted(means) if k != r]
        out[r] = (
            _robust_class_rows(
                np.stack([means[k] for k in others]), np.stack([counts[k] > 0 for k in others]), aggregator
            )
            if others
            else None
        )
    return out


def _robust_class_rows(means: np.ndarray, has: np.ndarray, aggregator: Aggregator) -> np.ndarray:
    """Per class c, ``aggregator`` over the ``(C,)`` rows c of the peers holding c (NaN where none does)."""
    out = np.full(means.shape[1:], np.nan, dtype=np.float32)
    for c in range(means.shape[1]):
        if has[:, c].any():
            out[c] = aggregator(means[has[:, c], c])
    return out
