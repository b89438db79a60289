"""The rules' stacked maths (one computation over ``(n, ...)`` arrays: the sum, less each
recipient's own row) equal the per-client maths they replaced: for each recipient, the
others gathered and combined one by one (written out below as the reference)."""

import numpy as np
import pytest

from strategies.aggregation import (
    class_consensus,
    leave_one_out_mean,
    peer_targets,
    weighted_leave_one_out,
    weighted_peer_targets,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_peer(logits, recipients):
    """Each recipient: the plain mean of the other senders' logits (all senders for a newcomer)."""
    out = {}
    for r in recipients:
        others = [k for k in sorted(logits) if k != r]
        out[r] = np.mean([logits[k] for k in others], axis=0, dtype=np.float64) if others else None
    return out


def reference_wml(logits, weights, recipients, t):
    """Each recipient: T·log of the others' softmax(z/T), weighted by their renormalised weights."""
    out = {}
    for r in recipients:
        others = [k for k in sorted(logits) if k != r]
        if not others:
            out[r] = None
            continue
        w = np.array([weights.get(k, 0.0) for k in others], dtype=np.float64)
        w = w / w.sum() if w.sum() > 0 else np.full(len(others), 1.0 / len(others))
        mix = np.tensordot(w, np.stack([_softmax(np.asarray(logits[k], np.float64) / t) for k in others]), axes=1)
        out[r] = t * np.log(np.clip(mix, 1e-12, None))
    return out


def reference_fd(means, counts, recipients):
    """Each recipient, per class: the mean of the others' rows for that class, over the others holding it."""
    out = {}
    for r in recipients:
        others = [k for k in sorted(means) if k != r]
        if not others:
            out[r] = None
            continue
        has = np.stack([counts[k] > 0 for k in others]).astype(np.float64)
        total = np.einsum("nc,ncd->cd", has, np.stack([means[k] for k in others]).astype(np.float64))
        n = has.sum(axis=0)[:, None]
        out[r] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def peers(n: int, seed: int, shape=(6, 4)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {10 * k + 3: (rng.standard_normal(shape) * 4).astype(np.float32) for k in range(n)}


def assert_same_targets(got, want, probabilities_at=None):
    assert set(got) == set(want)
    for r in want:
        if want[r] is None:
            assert got[r] is None, r
            continue
        g, w = np.asarray(got[r], np.float64), want[r]
        if probabilities_at:  # WML's targets are read as softmax(target / T): compare those
            g, w = _softmax(g / probabilities_at), _softmax(w / probabilities_at)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"recipient {r}")


@pytest.mark.parametrize("n", [2, 3, 9])
def test_leave_one_out_mean_equals_each_peers_mean_of_the_others(n):
    logits = peers(n, seed=n)
    stack = np.stack([logits[k] for k in sorted(logits)])
    want = reference_peer(logits, sorted(logits))
    got = dict(zip(sorted(logits), leave_one_out_mean(stack)))
    assert_same_targets(got, want)
    assert_same_targets(peer_targets(logits, sorted(logits) + [999]), reference_peer(logits, sorted(logits) + [999]))


def test_weighted_leave_one_out_by_hand():
    # Row 0: (1·2 + 2·4) / 3 = 10/3; row 1: (1·0 + 2·4) / 3 = 8/3; row 2: (0 + 2) / 2 = 1.
    out = weighted_leave_one_out([[0.0], [2.0], [4.0]], [1.0, 1.0, 2.0])
    np.testing.assert_allclose(out, [[10 / 3], [8 / 3], [1.0]], rtol=1e-6)
    # Row 0: the others' weights sum to 0, so their plain mean (2 + 4) / 2; rows 1 and 2: peer 0 alone.
    np.testing.assert_allclose(weighted_leave_one_out([[0.0], [2.0], [4.0]], [5.0, 0.0, 0.0]), [[3.0], [0.0], [0.0]])


@pytest.mark.parametrize(
    "weights",
    [
        "random",
        "zeros",  # no peer known yet: uniform over the others
        "dominant",  # one peer holds nearly all the weight: its row must not lose its digits
        "one_holds_all",  # the others' weights are exactly 0 for the one peer that holds it all
    ],
)
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_wml_targets_equal_the_per_recipient_mixtures(weights, t):
    logits = peers(7, seed=1)
    nodes = sorted(logits)
    rng = np.random.default_rng(2)
    w = {
        "random": dict(zip(nodes, rng.dirichlet(np.ones(7)))),
        "zeros": {},
        "dominant": {**dict.fromkeys(nodes, 1e-13), nodes[2]: 1.0},
        "one_holds_all": {**dict.fromkeys(nodes, 0.0), nodes[4]: 1.0},
    }[weights]
    recipients = nodes + [12345]  # and a newcomer, who mixes every sender
    assert_same_targets(
        weighted_peer_targets(logits, w, recipients, t), reference_wml(logits, w, recipients, t), probabilities_at=t
    )


def test_wml_target_of_the_dominant_peer_keeps_the_others_tiny_weights():
    # Peer 0 holds all but 1e-13 of the weight; its target mixes peers 1 and 2 in the ratio 3:1.
    logits = {0: np.array([[0.0, 0.0]]), 1: np.array([[np.log(9), 0.0]]), 2: np.array([[0.0, np.log(9)]])}
    got = weighted_peer_targets(logits, {0: 1.0, 1: 3e-13, 2: 1e-13}, [0], 1.0)[0]
    np.testing.assert_allclose(_softmax(got), [[0.75 * 0.9 + 0.25 * 0.1, 0.75 * 0.1 + 0.25 * 0.9]], rtol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_fd_targets_equal_the_per_recipient_class_means(n):
    rng = np.random.default_rng(n)
    means = {k: rng.standard_normal((5, 5)).astype(np.float32) for k in range(n)}
    counts = {k: rng.integers(0, 3, size=5) * (rng.random(5) < 0.6) for k in range(n)}
    counts[0][3] = 4  # class 3: only peer 0 holds it, so peer 0's own row 3 is NaN
    for k in range(1, n):
        counts[k][3] = 0
    recipients = list(range(n)) + [77]
    got, want = class_consensus(means, counts, recipients), reference_fd(means, counts, recipients)
    for r in recipients:
        np.testing.assert_allclose(got[r], want[r], rtol=1e-6, atol=1e-6, err_msg=f"recipient {r}")
    assert np.isnan(got[0][3]).all() and not np.isnan(got[77][3]).any()
    alone = class_consensus({0: means[0]}, {0: counts[0]}, [0, 5])
    assert alone[0] is None  # no other peer
    held = counts[0] > 0  # a newcomer gets the one sender's rows of the classes it holds, NaN for the rest
    np.testing.assert_allclose(alone[5][held], means[0][held])
    assert np.isnan(alone[5][~held]).all()
