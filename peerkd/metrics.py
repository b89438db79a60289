"""Peer-agreement metrics over students' logits on the same inputs: arrays in, floats out."""

from __future__ import annotations

import numpy as np


def pairwise_agreement(logits: np.ndarray) -> float:
    """Mean over student pairs of the share of inputs where their argmax predictions agree.

    Parameters
    ----------
    logits : np.ndarray
        ``(n, P, C)`` logits of n ≥ 2 students on the same P inputs.
    """
    preds = np.asarray(logits).argmax(axis=-1)  # (n, P)
    n = preds.shape[0]
    if n < 2:
        raise ValueError(f"agreement needs at least 2 students, got {n}")
    same = (preds[:, None, :] == preds[None, :, :]).mean(axis=-1)  # (n, n)
    return float((same.sum() - n) / (n * (n - 1)))


def kl_to_consensus(logits: np.ndarray) -> float:
    """Mean over students and inputs of KL(p̄ ‖ p_i), p̄ the mean of the students' softmax.

    Zero when every student predicts the same distribution; it falls as mutual learning
    pulls students together.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (n, P, C)
    p_bar = np.exp(log_p).mean(axis=0)  # (P, C)
    log_p_bar = np.log(np.clip(p_bar, 1e-12, None))
    kl = (p_bar[None] * (log_p_bar[None] - log_p)).sum(axis=-1)  # (n, P)
    return float(kl.mean())
