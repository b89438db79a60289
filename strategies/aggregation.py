"""Pure aggregation maths for logit exchange: arrays in, arrays out."""

from __future__ import annotations

import numpy as np


def leave_one_out_mean(stack: np.ndarray) -> np.ndarray:
    """Row i of the result is the mean of all rows but i.

    ``leave_one_out_mean([[1, 3], [3, 1], [2, 2]])[0] == [2.5, 1.5]``.

    Parameters
    ----------
    stack : np.ndarray
        ``(n, ...)`` with n ≥ 2: one entry per peer (e.g. ``(n, P, C)`` logits).

    Returns
    -------
    np.ndarray
        Same shape as ``stack``.
    """
    stack = np.asarray(stack, dtype=np.float64)
    n = stack.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 peers, got {n}")
    return ((stack.sum(axis=0, keepdims=True) - stack) / (n - 1)).astype(np.float32)


def peer_targets(logits: dict[int, np.ndarray], recipients: list[int]) -> dict[int, np.ndarray | None]:
    """Target for each recipient: the mean of the *other* peers' logits.

    A recipient that sent logits gets the leave-one-out mean; one that did not (new or
    failed last round) gets the mean of all senders; with no other sender it gets None.

    Parameters
    ----------
    logits : dict[int, np.ndarray]
        Latest ``(P, C)`` logits by peer id.
    recipients : list[int]
        Peer ids to build targets for.
    """
    senders = sorted(logits)
    out: dict[int, np.ndarray | None] = {}
    if not senders:
        return {r: None for r in recipients}
    stack = np.stack([logits[s] for s in senders])
    loo = leave_one_out_mean(stack) if len(senders) >= 2 else None
    everyone = stack.mean(axis=0).astype(np.float32)
    for r in recipients:
        if r in logits:
            out[r] = None if loo is None else loo[senders.index(r)]
        else:
            out[r] = everyone
    return out
