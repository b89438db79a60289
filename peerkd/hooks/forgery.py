"""Forgeries that read the attacker's own outputs: arrays in, arrays out.

Each takes the ``(rows, C)`` logits an attacker would honestly send and returns logits it sends
instead, built only from values of its own row: the same range (``rank_shift``: the same values,
so the same norm), so a value-range check or a norm bound sees an ordinary-looking row.

- ``lma``, Loss Maximization Attack (Roux, Zimmer & Pokutta, "On the Byzantine-Resilience of
  Distillation-Based Federated Learning", ICLR 2024, arXiv 2402.12265): all the mass on the class
  the honest mean finds least likely.
- ``cpa``, Class Prior Attack (same paper): all the mass on the class least similar to the row's
  most likely class, by a class-similarity matrix.
- ``rank_shift``, in the spirit of FDLA (Tang et al. 2024, arXiv 2401.03685) and of the top-k
  attack of FedTGD (ICDCS 2024): a row's values re-ordered so that each class takes the value of
  the class ranked just above it and the top class the smallest: the second guess becomes the
  answer with the true answer's confidence, the row's values unchanged as a set.

One attacker knows the defence (``inside``, aggregator-aware, after the "stay within the
defence's radius" attacks on robust aggregation: Baruch et al. "A Little Is Enough", NeurIPS 2019;
Fang et al., USENIX Security 2020): distance-based defences (``consensus``, ``reputation``) keep full
weight for a peer no farther from the median than the median peer, and trimming keeps values inside
the honest spread. So it sends the consensus it was last sent (the rule's target for it: the other
peers' aggregate) moved toward LMA's forgery of that consensus by ``INSIDE_SHARE`` of its own honest
distance from it, a distance typical of an honest peer. Until it has been sent a target it answers
honestly.

Roux et al. give their attackers the honest clients' mean; here each attacker uses its own honest
outputs as that estimate (it knows its own model, not the others'), and estimates the class
similarity from them too (``class_similarity``). "All the mass" is sent as logits within the row's
own range: the target at the row's maximum, every other class at its minimum.
"""

from __future__ import annotations

import numpy as np

FORGERIES = ("lma", "cpa", "rank_shift")
INSIDE_SHARE = 0.9  # inside: the share of its own honest distance from the consensus an attacker moves off it


def peaked(z: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each row's maximum at its ``target`` column and its minimum elsewhere.

    ``peaked([[1, 3, 2]], [0]) == [[3, 1, 1]]``.
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.repeat(z.min(axis=1, keepdims=True), z.shape[1], axis=1)
    out[np.arange(len(z)), target] = z.max(axis=1)
    return out


def class_similarity(z: np.ndarray) -> np.ndarray:
    """``S[i, j]``: the mean probability given to class j by the rows whose top class is i, made
    symmetric (``(S + Sᵀ) / 2``); a class no row picks has similarity 0 to every class.

    Rows ``[[2, 1, 0], [2, 0, 1]]`` (top class 0 both) give ``S[0] ≈ [0.665, 0.168, 0.168]`` before
    symmetrising: classes 1 and 2 are equally close to 0.
    """
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    c = z.shape[1]
    top = z.argmax(axis=1)
    sums = np.zeros((c, c))
    np.add.at(sums, top, p)
    counts = np.bincount(top, minlength=c)[:, None]
    s = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return (s + s.T) / 2


def least_likely(z: np.ndarray) -> np.ndarray:
    """LMA's target: each row's least likely class (the first of ties)."""
    return np.asarray(z).argmin(axis=1)


def least_similar(z: np.ndarray) -> np.ndarray:
    """CPA's target: for each row, the class other than its top class that is least similar to the
    top class by ``class_similarity`` of all rows (the first of ties)."""
    s = class_similarity(z)
    np.fill_diagonal(s, np.inf)
    return s[np.asarray(z).argmax(axis=1)].argmin(axis=1)


def rank_shift(z: np.ndarray) -> np.ndarray:
    """Each class takes the value of the class ranked one above it; the top class takes the smallest.

    ``rank_shift([[3, 1, 2]]) == [[1, 2, 3]]``: class 2 (second) gets 3, class 1 (third) gets 2,
    class 0 (top) gets 1.
    """
    z = np.asarray(z, dtype=np.float64)
    order = np.argsort(-z, axis=1, kind="stable")  # classes from most to least likely
    values = np.take_along_axis(z, order, axis=1)
    out = np.empty_like(z)
    np.put_along_axis(out, order, np.roll(values, 1, axis=1), axis=1)
    return out


def inside(z: np.ndarray, center: np.ndarray | None, share: float = INSIDE_SHARE) -> np.ndarray:
    """The aggregator-aware forgery: ``center + share * ||z - center|| * u``, ``u`` the unit direction
    from ``center`` to its LMA forgery (Frobenius norms over the whole array); ``z`` itself when
    there is no ``center`` yet or either distance is 0.

    ``inside([[1, 1]], [[2, 0]], 0.5)``: honest distance √2, LMA of the center points to
    ``[[0, 2]]`` (direction ``[[-1, 1]] / √2``), so ``[[1.5, 0.5]]``.
    """
    z = np.asarray(z, dtype=np.float64)
    if center is None:
        return z
    c = np.asarray(center, dtype=np.float64)
    push = forge(c, "lma") - c
    radius, length = float(np.linalg.norm(z - c)), float(np.linalg.norm(push))
    if radius == 0 or length == 0:
        return z
    return c + share * radius * push / length


def forge(z: np.ndarray, kind: str) -> np.ndarray:
    """The ``kind`` (one of ``FORGERIES``) forgery of logits ``z``."""
    if kind == "lma":
        return peaked(z, least_likely(z))
    if kind == "cpa":
        return peaked(z, least_similar(z))
    if kind == "rank_shift":
        return rank_shift(z)
    raise ValueError(f"unknown forgery {kind!r}; one of {FORGERIES}")
