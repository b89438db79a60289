"""Peer-agreement metrics over students' logits on the same inputs: arrays in, floats out.

Both are computed in O(n·P·C) time and in chunks of students, so that they stay cheap for
fleets of thousands of students (a pairwise (n, n, P) comparison would need n² memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peerkd.round.hook import RoundHook, RoundResult

CHUNK = 256  # students per chunk


def pairwise_agreement(logits: np.ndarray) -> float:
    """Mean over student pairs of the share of inputs where their argmax predictions agree.

    With k_c(p) students predicting class c on input p, the agreeing ordered pairs on p are
    Σ_c k_c(k_c − 1), so the mean over the n(n − 1) ordered pairs and P inputs follows from
    the class counts alone.

    Parameters
    ----------
    logits : np.ndarray
        ``(n, P, C)`` logits of n ≥ 2 students on the same P inputs.
    """
    logits = np.asarray(logits)
    n, p, c = logits.shape
    if n < 2:
        raise ValueError(f"agreement needs at least 2 students, got {n}")
    counts = np.zeros((p, c), dtype=np.int64)
    for i in range(0, n, CHUNK):
        preds = logits[i : i + CHUNK].argmax(axis=-1)  # (chunk, P)
        for row in preds:
            counts[np.arange(p), row] += 1
    return float((counts * (counts - 1)).sum() / (p * n * (n - 1)))


def kl_to_consensus(logits: np.ndarray) -> float:
    """Mean over students and inputs of KL(p̄ ‖ p_i), p̄ the mean of the students' softmax.

    Zero when every student predicts the same distribution; it falls as mutual learning
    pulls students together.
    """
    logits = np.asarray(logits)
    n = logits.shape[0]
    p_bar = sum(np.exp(_log_softmax(logits[i : i + CHUNK])).sum(axis=0) for i in range(0, n, CHUNK)) / n  # (P, C)
    log_p_bar = np.log(np.clip(p_bar, 1e-12, None))
    total = sum(
        (p_bar[None] * (log_p_bar[None] - _log_softmax(logits[i : i + CHUNK]))).sum() for i in range(0, n, CHUNK)
    )
    return float(total / (n * logits.shape[1]))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class AgreementHook(RoundHook):
    """Each round's ``agreement`` and ``kl_to_consensus`` of the students' transfer-set logits
    (as the rule reads them from the accepted replies; nothing when it has none)."""

    def setup(self, rule: Any, fresh: bool) -> dict[str, Any]:
        self.rule = rule
        return {}

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        if result.stacked is not None:  # a stacked round's outputs on the transfer set, as the rule reads them
            logits = self.rule.agreement_of(result.stacked.logits)
        else:
            logits = self.rule.agreement_logits(result.replies)
        if logits is None:
            return {}
        return {"agreement": pairwise_agreement(logits), "kl_to_consensus": kl_to_consensus(logits)}
