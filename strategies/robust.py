"""Robust aggregation of peers' outputs: arrays in, arrays out.

A rule that averages what clients send (logits, probabilities, per-class means) can take
``aggregator=`` one of ``AGGREGATORS`` instead of the plain mean:

- ``median``: coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML);
- ``trimmed_mean``: per coordinate, drop the ``trim`` share of largest and of smallest
  values, average the rest (Yin et al. 2018);
- ``clip``: scale each peer's array down to at most ``clip_norm`` (Frobenius norm; 0: the
  median of the peers' norms), then average (norm bounding, Sun et al. 2019, "Can You
  Really Backdoor Federated Learning?");
- ``consensus``: weight each peer by how close it is to the robust consensus (the
  coordinate-wise median), ``w_i = exp(-SHARPNESS * max(0, d_i / m - 1)^2)`` with ``d_i`` its
  distance to the median and ``m`` the median distance: the closer half keeps full weight, a
  peer twice as far as the median peer keeps e^-4, one three times as far e^-16 (clipped first
  only if ``clip_norm`` is set; a huge-scale peer is far from the median anyway). In the spirit of
  AGRE-KD (Kenfack, Aïvodji & Kahou, TMLR 2025, arXiv:2411.14984), which weights each
  teacher of an ensemble by its direction relative to a reference, and of FedTKD (Chen et
  al., Entropy 26(1):96, 2024), which down-weights clients whose knowledge disagrees with
  the trusted consensus; here the reference is the median itself, so no extra model and no
  labelled data are needed. Median / trimmed-mean aggregation of uploaded logits is also what
  FedEMA-Distill (arXiv:2603.04422) uses against Byzantine clients.
- ``reputation``: ``consensus`` times a trust remembered over rounds: each round every peer's
  distance to the coordinate-wise median over the median peer's (``distance_ratios``) is
  remembered (``remember``: each round halves the past's share), and the trust is the consensus
  formula on the remembered ratio (``closeness_weights``): a peer that has stayed as close as the
  median peer keeps full trust, one remembered twice as far e^-4. Arrays are clipped at
  ``NORM_BOUND`` times the median norm first (``clip_norm`` overrides). After ExpGuard (Roux,
  Zimmer & Pokutta, ICLR 2024), which weights clients by their behaviour over past rounds. Rules
  that keep each peer's outputs between rounds (``peer``) pass the remembered trust; elsewhere it
  is ``consensus`` with the norm bound.
- ``class_aware``: ``consensus`` whose distance is judged per predicted class: the rows are grouped
  by the coordinate-wise median's top class, each peer's distance to the median is measured in each
  group and divided by the median peer's there, and a peer's ratio is the median over the groups
  (``class_ratios``). A minority-class expert is far from the consensus only on the rows of its
  class (a group or two) and keeps full weight; a forgery that is off on every row (``lma``,
  ``cpa``, ``rank_shift``) is far in every group. Whole-row ``consensus`` adds the expert's few
  far rows to its one distance. In the spirit of FedTGD's class-wise defence (ICDCS 2024).
- ``foolsgold``: ``consensus`` times FoolsGold's weights (Fung, Yoon & Beschastnikh, RAID 2020)
  on each peer's deviation from the coordinate-wise median (``similarity_weights``): attackers
  that follow one recipe deviate in one direction however small their deviation, honest peers
  each in their own. A peer as similar to another as the most similar pair loses its weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from peerkd.errors import check_choice, check_range

AGGREGATORS = ("mean", "median", "trimmed_mean", "clip", "consensus", "reputation", "class_aware", "foolsgold")
SHARPNESS = 4.0  # consensus: how fast a peer's weight falls beyond the median distance
MAX_RATIO = 1e3  # a peer off the median when most peers sit on it
REPUTATION_MEMORY = 0.5  # reputation: the past's share of a peer's remembered distance ratio each round
NORM_BOUND = 3.0  # reputation: arrays clipped at this many times the median norm
EXACT_LOO_MAX = 256  # above this many peers, a robust leave-one-out target is the all-peer aggregate


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Coordinate-wise median over peers: ``coordinate_median([[1, 9], [2, 0], [7, 4]]) == [2, 4]``."""
    return np.median(np.asarray(stack, dtype=np.float64), axis=0)


def trim_count(n: int, trim: float) -> int:
    """Values dropped at each end of ``n``: ``ceil(trim * n)``, leaving at least one."""
    return min(math.ceil(trim * n - 1e-9), (n - 1) // 2)


def trimmed_mean(stack: np.ndarray, trim: float) -> np.ndarray:
    """Per coordinate, the mean of the values left after dropping ``trim_count`` largest and smallest.

    ``trimmed_mean([[1], [2], [3], [4], [100]], 0.2) == [3]`` (1 and 100 dropped).
    """
    stack = np.sort(np.asarray(stack, dtype=np.float64), axis=0)
    k = trim_count(len(stack), trim)
    return stack[k : len(stack) - k].mean(axis=0)


def peer_norms(stack: np.ndarray) -> np.ndarray:
    """Frobenius norm of each peer's array: ``(n, ...) -> (n,)``."""
    stack = np.asarray(stack, dtype=np.float64)
    return np.sqrt((stack.reshape(len(stack), -1) ** 2).sum(axis=1))


def clip_norms(stack: np.ndarray, clip_norm: float = 0.0) -> np.ndarray:
    """Each peer's array scaled down to norm at most ``clip_norm`` (0: the median of the peers' norms).

    ``clip_norms([[3, 4], [0, 1], [30, 40]])`` clips at the median norm 5: ``[[3, 4], [0, 1], [3, 4]]``.
    """
    stack = np.asarray(stack, dtype=np.float64)
    norms = peer_norms(stack)
    bound = clip_norm or float(np.median(norms))
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    return stack * scale.reshape((-1,) + (1,) * (stack.ndim - 1))


def consensus_weights(stack: np.ndarray) -> np.ndarray:
    """Weights (summing to 1) that fall with a peer's distance to the coordinate-wise median.

    ``w_i ∝ exp(-SHARPNESS * max(0, d_i / m - 1)^2)``, ``d_i = ||x_i - median||``, ``m = median_i d_i``
    (``closeness_weights`` of ``distance_ratios``); when m is 0 (most peers sit exactly on the
    median), those peers share the weight.
    """
    w = closeness_weights(distance_ratios(stack))
    return w / w.sum()


def distance_ratios(stack: np.ndarray) -> np.ndarray:
    """Each peer's distance to the coordinate-wise median over the median peer's distance (``d_i / m``;
    when m is 0, 0 for peers on the median and ``MAX_RATIO`` for the others).

    ``distance_ratios([[0], [1], [3]])``: the median is 1, distances 1, 0, 2, m = 1: ``[1, 0, 2]``.
    """
    stack = np.asarray(stack, dtype=np.float64)
    dist = peer_norms(stack - coordinate_median(stack))
    m = float(np.median(dist))
    return dist / m if m > 0 else np.where(dist > 0, MAX_RATIO, 0.0)


def class_ratios(stack: np.ndarray) -> np.ndarray:
    """``distance_ratios`` judged per predicted class: ``(n, ..., C) -> (n,)``.

    The rows (every axis but the first and the last) are grouped by the coordinate-wise median's top
    class; in each group every peer's distance to the median over the median peer's there; a peer's
    ratio is the median of its group ratios. ``class_ratios([[[3, 0], [0, 3]], [[3, 0], [0, 3]],
    [[3, 0], [0, 4]], [[5, 0], [0, 3]]])``: the median rows are ``[3, 0]`` (group 0) and ``[0, 3]``
    (group 1); in group 0 only peer 3 is off (ratio ``MAX_RATIO``), in group 1 only peer 2: the median
    of ``[0, MAX_RATIO]`` is ``MAX_RATIO / 2`` for those two, 0 for the others.
    """
    stack = np.asarray(stack, dtype=np.float64)
    n, c = len(stack), stack.shape[-1]
    rows = stack.reshape(n, -1, c)
    med = coordinate_median(rows)
    group = med.argmax(axis=-1)
    per_group = [distance_ratios(rows[:, group == k]) for k in np.unique(group)]
    return np.median(np.stack(per_group, axis=1), axis=1)


def similarity_weights(stack: np.ndarray) -> np.ndarray:
    """FoolsGold's weights (Fung et al. 2020, Algorithm 1, κ = 1) of the peers' deviations from the
    coordinate-wise median: ``(n, ...) -> (n,)`` in [0, 1].

    ``cs[i, j]``, the cosine similarity of deviations i and j; "pardoning": where peer i's largest
    similarity ``v_i`` is below ``v_j``, ``cs[i, j] *= v_i / v_j``; ``w = 1 - max_j cs[i, j]`` clipped to
    [0, 1], divided by its largest (a largest weight of 1 becomes 0.99), then ``ln(w / (1 - w)) + 0.5``
    clipped to [0, 1]. Two peers deviating the same way (``cs`` = 1) get 0; peers whose deviations are
    orthogonal to every other's keep 1.
    """
    stack = np.asarray(stack, dtype=np.float64)
    n = len(stack)
    dev = (stack - coordinate_median(stack)).reshape(n, -1)
    unit = dev / np.maximum(np.linalg.norm(dev, axis=1, keepdims=True), 1e-12)
    cs = unit @ unit.T - np.eye(n)
    top = cs.max(axis=1)
    pardon = np.where(top[:, None] < top[None, :], top[:, None] / np.where(top[None, :] > 0, top[None, :], 1.0), 1.0)
    w = np.clip(1.0 - (cs * pardon).max(axis=1), 0.0, 1.0)
    w = w / w.max() if w.max() > 0 else np.ones(n)
    w[w == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        w = np.log(w / (1.0 - w)) + 0.5
    return np.clip(np.nan_to_num(w, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def remember(past: dict[int, float], current: dict[int, float]) -> dict[int, float]:
    """A value remembered by peer over rounds: ``REPUTATION_MEMORY`` of the past plus the rest of this
    round's; a peer seen first takes this round's, one absent this round keeps its past.

    ``remember({1: 1.0, 2: 0.5}, {1: 0.0, 3: 0.8}) == {1: 0.5, 2: 0.5, 3: 0.8}``.
    """
    out = dict(past)
    for peer, a in current.items():
        out[peer] = REPUTATION_MEMORY * past[peer] + (1 - REPUTATION_MEMORY) * a if peer in past else a
    return out


def closeness_weights(ratios: np.ndarray) -> np.ndarray:
    """Weights (not normalised) from distance ratios: ``exp(-SHARPNESS * max(0, r - 1)^2)``, full
    weight up to the median peer's distance. ``closeness_weights([0.5, 1, 2])`` is ``[1, 1, e^-4]``;
    a ``MAX_RATIO`` peer gets 0."""
    r = np.asarray(ratios, dtype=np.float64)
    return np.exp(-SHARPNESS * np.maximum(0.0, r - 1.0) ** 2)


def _times(w: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """A defence's per-peer weights ``w`` times the rule's own ``weights`` (e.g. WML's ω), if any."""
    return w if weights is None else w * np.asarray(weights, dtype=np.float64)


def _weighted_mean(stack: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return stack.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(stack), 1.0 / len(stack))
    return np.tensordot(w, stack, axes=1)


@dataclass(frozen=True)
class Aggregator:
    """How a rule combines its peers' arrays; validated settings of a rule (``strategy.aggregator`` ...).

    Parameters
    ----------
    method : str
        One of ``AGGREGATORS``.
    trim : float
        ``trimmed_mean``: share of peers dropped at each end, in [0, 0.5).
    clip_norm : float
        ``clip``: largest norm a peer's array keeps (0: the median of the peers' norms);
        ``consensus``: clip at this norm first (0: no clipping).
    """

    method: str = "mean"
    trim: float = 0.2
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        check_choice("strategy.aggregator", self.method, AGGREGATORS)
        check_range("strategy.trim", self.trim, 0.0, 0.5, high_open=True)
        check_range("strategy.clip_norm", self.clip_norm, 0.0)

    @property
    def plain(self) -> bool:
        """True for the plain mean (the rules keep their exact, fast path)."""
        return self.method == "mean"

    def __call__(self, stack: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Combine ``(n, ...)`` peer arrays into one ``(...)`` array (float32).

        ``weights`` (e.g. WML's ω) scale the mean-like methods (mean, clip, consensus, class_aware, foolsgold); the
        median and the trimmed mean ignore them; for ``reputation`` they are the peers' remembered
        trust (``closeness_weights`` of remembered ratios), multiplying the consensus weights (default: none).
        """
        stack = np.asarray(stack, dtype=np.float64)
        if self.method == "median":
            out = coordinate_median(stack)
        elif self.method == "trimmed_mean":
            out = trimmed_mean(stack, self.trim)
        elif self.method == "mean":
            out = _weighted_mean(stack, weights)
        elif self.method == "foolsgold":
            out = _weighted_mean(stack, _times(consensus_weights(stack) * similarity_weights(stack), weights))
        elif self.method == "class_aware":
            out = _weighted_mean(stack, _times(closeness_weights(class_ratios(stack)), weights))
        elif self.method == "reputation":
            stack = clip_norms(stack, self.clip_norm or NORM_BOUND * float(np.median(peer_norms(stack))))
            out = _weighted_mean(stack, _times(consensus_weights(stack), weights))
        else:
            clip = self.method == "clip" or self.clip_norm > 0
            stack = clip_norms(stack, self.clip_norm) if clip else stack
            out = _weighted_mean(
                stack, _times(consensus_weights(stack), weights) if self.method == "consensus" else weights
            )
        return out.astype(np.float32)

    def leave_one_out(self, stack: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Row i: the aggregate of every peer but i (``(n, ...)``, n ≥ 2), with ``weights`` but i's.

        Exact up to ``EXACT_LOO_MAX`` peers; beyond, every row is the all-peer aggregate (one
        peer barely moves a robust aggregate of hundreds, and n aggregates of n peers would cost n²).
        """
        stack = np.asarray(stack, dtype=np.float64)
        n = len(stack)
        if n < 2:
            raise ValueError(f"leave-one-out needs at least 2 peers, got {n}")
        if n > EXACT_LOO_MAX:
            return np.broadcast_to(self(stack, weights), stack.shape).astype(np.float32)
        without = (lambda i: None) if weights is None else (lambda i: np.delete(weights, i))
        return np.stack([self(np.delete(stack, i, axis=0), without(i)) for i in range(n)])
