"""Pure aggregation maths for logit exchange: arrays in, arrays out."""

from __future__ import annotations

import numpy as np
import torch

from peerkd.wire.rows import read_tensor, stack_rows
from strategies.robust import Aggregator


def leave_one_out_mean(stack: np.ndarray) -> np.ndarray:
    """Row i of the result is the mean of all rows but i: the sum of all rows, less row i, over n − 1.

    ``leave_one_out_mean([[1, 3], [3, 1], [2, 2]])[0] == [2.5, 1.5]``.

    The sum is taken once in float64; each row is then ``sum/(n−1) − row_i/(n−1)`` in one float32
    pass (torch's, on every core): within a float32 step of the logits' scale, with no per-row copies.

    Parameters
    ----------
    stack : np.ndarray
        ``(n, ...)`` with n ≥ 2: one entry per peer (e.g. ``(n, P, C)`` logits).

    Returns
    -------
    np.ndarray
        Same shape as ``stack``, float32.
    """
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 peers, got {n}")
    share = (stack.sum(axis=0, dtype=np.float64) / (n - 1)).astype(np.float32)
    out = torch.empty(stack.shape, dtype=torch.float32)
    torch.sub(torch.from_numpy(share), read_tensor(stack), alpha=1.0 / (n - 1), out=out)
    return out.numpy()


def peer_targets(
    logits: dict[int, np.ndarray],
    recipients: list[int],
    aggregator: Aggregator | None = None,
    trust: dict[int, float] | None = None,
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
    """
    senders = sorted(logits)
    out: dict[int, np.ndarray | None] = {}
    if not senders:
        return {r: None for r in recipients}
    stack = stack_rows([logits[s] for s in senders])  # received rows of one array: no copy
    robust = aggregator is not None and not aggregator.plain
    w = None if trust is None else np.array([trust[s] for s in senders])
    loo = None if len(senders) < 2 else aggregator.leave_one_out(stack, w) if robust else leave_one_out_mean(stack)
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


def weighted_peer_targets(
    logits: dict[int, np.ndarray],
    weights: dict[int, float],
    recipients: list[int],
    temperature: float,
    aggregator: Aggregator | None = None,
) -> dict[int, np.ndarray | None]:
    """WML targets: for each recipient, T·log of the ω-weighted mix of the *other* peers'
    softmax(z/T), weights renormalised over those peers.

    Sent as logits, ``softmax(target / T)`` is exactly the mixture p̄_i, and KL(p̄_i ‖ p_i) has
    the same gradient in the student as Σ_j ω̃_j KL(p_j ‖ p_i): one matrix per recipient
    carries the whole weighted loss. With a robust ``aggregator`` the mix is its aggregate of the
    others' probabilities (ω scaling the mean-like methods), renormalised per row.
    """
    out: dict[int, np.ndarray | None] = {}
    probs = {k: _softmax(np.asarray(v, dtype=np.float64) / temperature) for k, v in logits.items()}
    for r in recipients:
        others = [k for k in sorted(probs) if k != r]
        if not others:
            out[r] = None
            continue
        w = np.array([weights.get(k, 0.0) for k in others])
        w = w / w.sum() if w.sum() > 0 else np.full(len(others), 1.0 / len(others))
        others_p = np.stack([probs[k] for k in others])
        if aggregator is None or aggregator.plain:
            mix = np.tensordot(w, others_p, axes=1)
        else:
            mix = np.clip(aggregator(others_p, w).astype(np.float64), 1e-12, None)
            mix = mix / mix.sum(axis=-1, keepdims=True)
        out[r] = (temperature * np.log(np.clip(mix, 1e-12, None))).astype(np.float32)
    return out


def class_consensus(
    means: dict[int, np.ndarray],
    counts: dict[int, np.ndarray],
    recipients: list[int],
    aggregator: Aggregator | None = None,
) -> dict[int, np.ndarray | None]:
    """FD targets: for each recipient, per class, the mean of the *other* peers' per-class mean
    logits over the peers that hold that class; rows no other peer holds are NaN.

    Parameters
    ----------
    means : dict[int, np.ndarray]
        ``(C, C)`` per-class mean logits by peer.
    counts : dict[int, np.ndarray]
        ``(C,)`` label counts by peer (0: the peer lacks the class).
    aggregator : Aggregator | None
        Per class, a robust aggregate of the holders' rows instead of their mean.
    """
    out: dict[int, np.ndarray | None] = {}
    for r in recipients:
        others = [k for k in sorted(means) if k != r]
        if not others:
            out[r] = None
            continue
        if aggregator is not None and not aggregator.plain:
            out[r] = _robust_class_rows(
                np.stack([means[k] for k in others]), np.stack([counts[k] > 0 for k in others]), aggregator
            )
            continue
        has = np.stack([counts[k] > 0 for k in others]).astype(np.float64)  # (n, C)
        total = np.einsum("nc,ncd->cd", has, np.stack([means[k] for k in others]).astype(np.float64))
        n = has.sum(axis=0)[:, None]
        out[r] = np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)
    return out


def _robust_class_rows(means: np.ndarray, has: np.ndarray, aggregator: Aggregator) -> np.ndarray:
    """Per class c, ``aggregator`` over the ``(C,)`` rows c of the peers holding c (NaN where none does)."""
    out = np.full(means.shape[1:], np.nan, dtype=np.float32)
    for c in range(means.shape[1]):
        if has[:, c].any():
            out[c] = aggregator(means[has[:, c], c])
    return out
