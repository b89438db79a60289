"""Golden values for the maths of wml, fd, dsfl and the agreement metrics, worked by hand."""

import math

import numpy as np
import pytest

from peerkd.hooks.agreement import kl_to_consensus, pairwise_agreement
from peerkd.student.training import class_mean_logits
from strategies.aggregation import (
    class_consensus,
    ensemble_nll_grad,
    entropy_reduction_average,
    mirror_descent_step,
    weighted_peer_targets,
)


def test_era_sharpens_the_mean_probability():
    # p̄ = [0.7, 0.3]; softmax([0.7, 0.3] / 0.1) = softmax([7, 3]) = [1, e^-4] / (1 + e^-4)
    out = entropy_reduction_average(np.array([[[0.6, 0.4]], [[0.8, 0.2]]]), 0.1)
    expected = np.array([1.0, math.exp(-4)]) / (1 + math.exp(-4))  # [0.982014, 0.017986]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    # T = 1 barely changes a flat average: softmax([0.5, 0.5]) = [0.5, 0.5]
    np.testing.assert_allclose(entropy_reduction_average(np.array([[[0.5, 0.5]]]), 1.0)[0], [0.5, 0.5])


def test_ensemble_nll_and_gradient_by_hand():
    # Peer 0 gives the true class 0.8 and 0.4 on two samples; peer 1 gives 0.2 and 0.6.
    # With ω = (½, ½) the mixture is 0.5 on both: loss = ln 2;
    # ∂L/∂ω_0 = −(0.8/0.5 + 0.4/0.5)/2 = −1.2; ∂L/∂ω_1 = −(0.2/0.5 + 0.6/0.5)/2 = −0.8.
    loss, grad = ensemble_nll_grad(np.array([0.5, 0.5]), np.array([[0.8, 0.4], [0.2, 0.6]]))
    assert loss == pytest.approx(math.log(2))
    np.testing.assert_allclose(grad, [-1.2, -0.8])


def test_mirror_descent_step_by_hand():
    # ω ∝ (½·e^{1}, ½·e^{0}) → (e/(1+e), 1/(1+e)) = (0.731059, 0.268941)
    w = mirror_descent_step(np.array([0.5, 0.5]), np.array([-1.0, 0.0]), lr=1.0)
    np.testing.assert_allclose(w, [math.e / (1 + math.e), 1 / (1 + math.e)])
    assert w.sum() == pytest.approx(1.0)
    # The better peer (more negative gradient) gains weight; lr 0 changes nothing.
    np.testing.assert_allclose(mirror_descent_step(np.array([0.3, 0.7]), np.array([5.0, -2.0]), 0.0), [0.3, 0.7])


def test_weighted_peer_targets_are_the_weighted_mixture_of_the_others():
    # Three peers, one input, two classes, T = 1. Peer 0's softmax is (3/4, 1/4), peer 1's
    # (1/4, 3/4), peer 2's (1/2, 1/2). Recipient 2's target mixes peers 0 and 1 with
    # weights 0.6 and 0.2 renormalised to (3/4, 1/4): 3/4·(3/4, 1/4) + 1/4·(1/4, 3/4) = (5/8, 3/8).
    ln3 = math.log(3)
    logits = {0: np.array([[ln3, 0.0]]), 1: np.array([[0.0, ln3]]), 2: np.array([[0.0, 0.0]])}
    targets = weighted_peer_targets(logits, {0: 0.6, 1: 0.2, 2: 0.2}, [2, 7], temperature=1.0)
    probs = np.exp(targets[2]) / np.exp(targets[2]).sum()
    np.testing.assert_allclose(probs, [[5 / 8, 3 / 8]], rtol=1e-6)
    # At temperature T the target is T·log(mixture): softmax(target / T) is the mixture again.
    t2 = weighted_peer_targets(logits, {0: 0.6, 1: 0.2, 2: 0.2}, [2], temperature=2.0)[2]
    p2 = np.exp(t2 / 2) / np.exp(t2 / 2).sum()
    assert p2[0, 0] > 0.5 and p2.sum() == pytest.approx(1.0)
    assert targets[7].shape == (1, 2)  # a newcomer mixes all peers
    assert weighted_peer_targets({0: logits[0]}, {0: 1.0}, [0], 1.0)[0] is None


def test_class_mean_logits_by_hand():
    means, counts = class_mean_logits(np.array([[1, 0], [3, 2], [5, 5]]), np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(means, [[2, 1], [5, 5], [0, 0]])
    np.testing.assert_array_equal(counts, [2, 1, 0])


def test_class_consensus_averages_others_that_hold_the_class():
    # Two classes. Peer A holds both, B only class 0, C only class 1.
    means = {
        "A": np.array([[2.0, 0.0], [0.0, 2.0]]),
        "B": np.array([[4.0, 2.0], [9.0, 9.0]]),
        "C": np.array([[7.0, 7.0], [1.0, 3.0]]),
    }
    counts = {"A": np.array([5, 5]), "B": np.array([3, 0]), "C": np.array([0, 4])}
    out = class_consensus(means, counts, ["A", "B"])
    # For A: class 0 from B alone [4, 2]; class 1 from C alone [1, 3] (B's row 9,9 is ignored).
    np.testing.assert_allclose(out["A"], [[4, 2], [1, 3]])
    # For B: class 0 from A alone [2, 0]; class 1 mean of A and C: [(0+1)/2, (2+3)/2].
    np.testing.assert_allclose(out["B"], [[2, 0], [0.5, 2.5]])
    lonely = class_consensus({"A": means["A"], "B": means["B"]}, {"A": np.array([5, 0]), "B": np.array([3, 0])}, ["A"])
    assert np.isnan(lonely["A"][1]).all()  # no other peer holds class 1


def test_pairwise_agreement_by_hand():
    # Predictions: s0 = (0, 1), s1 = (0, 0), s2 = (1, 0).
    # Pairs agree on 1/2 (s0,s1), 0 (s0,s2), 1/2 (s1,s2): mean 1/3.
    logits = np.array([[[1, 0], [0, 1]], [[1, 0], [1, 0]], [[0, 1], [1, 0]]], dtype=float)
    assert pairwise_agreement(logits) == pytest.approx(1 / 3)
    assert pairwise_agreement(np.stack([logits[0], logits[0]])) == 1.0


def test_kl_to_consensus_by_hand():
    # Students with probabilities p = (1/2, 1/2) and q = (3/4, 1/4): p̄ = (5/8, 3/8).
    # KL(p̄‖p) = 5/8 ln(5/4) + 3/8 ln(3/4) = 0.031585; KL(p̄‖q) = 5/8 ln(5/6) + 3/8 ln(3/2) = 0.038098.
    logits = np.array([[[0.0, 0.0]], [[math.log(3), 0.0]]])
    expected = (
        (5 / 8 * math.log(5 / 4) + 3 / 8 * math.log(3 / 4)) + (5 / 8 * math.log(5 / 6) + 3 / 8 * math.log(3 / 2))
    ) / 2
    assert kl_to_consensus(logits) == pytest.approx(expected)  # 0.034842
    assert kl_to_consensus(np.stack([logits[1], logits[1]])) == pytest.approx(0.0, abs=1e-12)
