"""Forgeries built from the attacker's own outputs (peerkd/hooks/forgery.py), by hand."""

import numpy as np
import pytest

from peerkd.hooks.faults import attack_array
from peerkd.hooks.forgery import INSIDE_SHARE, class_similarity, forge, inside, least_similar, peaked, rank_shift
from strategies.robust import closeness_weights, distance_ratios

Z = np.array([[3.0, 1.0, 2.0], [0.0, 4.0, -2.0]])


def test_lma_puts_the_rows_maximum_on_its_least_likely_class():
    # Row 0's least likely class is 1, row 1's is 2; maxima 3 and 4, minima 1 and -2.
    np.testing.assert_allclose(forge(Z, "lma"), [[1.0, 3.0, 1.0], [-2.0, -2.0, 4.0]])
    np.testing.assert_allclose(peaked([[1.0, 3.0, 2.0]], np.array([0])), [[3.0, 1.0, 1.0]])


def test_cpa_targets_the_class_least_similar_to_the_top_class():
    # Prepare: class 0 rows give class 1 much more mass than class 2; class 1 rows likewise favour 0.
    z = np.array([[4.0, 3.0, 0.0], [4.0, 2.5, 0.0], [3.0, 4.0, 0.0]])
    s = class_similarity(z)
    # Assert: symmetric; class 2 is never a top class but is least similar to both 0 and 1
    np.testing.assert_allclose(s, s.T)
    assert s[0, 1] > s[0, 2] and s[1, 0] > s[1, 2]
    assert least_similar(z).tolist() == [2, 2, 2]
    np.testing.assert_allclose(forge(z, "cpa")[0], [0.0, 0.0, 4.0])


def test_rank_shift_hands_each_class_the_value_ranked_above_it():
    # Row 0: ranks 0 (3), 2 (2), 1 (1) -> class 2 gets 3, class 1 gets 2, class 0 gets 1.
    np.testing.assert_allclose(rank_shift(Z), [[1.0, 2.0, 3.0], [4.0, -2.0, 0.0]])
    out = rank_shift(Z)
    np.testing.assert_allclose(np.sort(out, axis=1), np.sort(Z, axis=1))  # the same values: the same norm
    assert (out.argmax(axis=1) != Z.argmax(axis=1)).all()


@pytest.mark.parametrize("kind", ["lma", "cpa", "rank_shift"])
def test_forgeries_stay_in_the_rows_range_and_travel_as_probabilities_too(kind):
    z = np.random.default_rng(0).normal(0, 3, (40, 10))
    out = attack_array(z, kind, np.random.default_rng(0))
    assert (out.max(axis=1) <= z.max(axis=1) + 1e-5).all() and (out.min(axis=1) >= z.min(axis=1) - 1e-5).all()
    assert (out.argmax(axis=1) != z.argmax(axis=1)).all()  # never the row's own answer
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    probs = attack_array(p, kind, np.random.default_rng(0), probabilities=True)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_inside_moves_off_the_consensus_by_most_of_its_own_distance_toward_lma():
    # Center [2, 0]: LMA of it is [0, 2] (direction [-1, 1] / sqrt 2); own honest [1, 1] is sqrt 2 away.
    np.testing.assert_allclose(inside([[1.0, 1.0]], [[2.0, 0.0]], 0.5), [[1.5, 0.5]])
    np.testing.assert_allclose(inside(Z, None), Z)  # no target yet: honest
    np.testing.assert_allclose(inside(Z, Z), Z)  # on the consensus already: nothing to hide in
    center = np.random.default_rng(1).normal(0, 3, (40, 10))
    own = center + np.random.default_rng(2).normal(0, 1, (40, 10))
    out = attack_array(own, "inside", np.random.default_rng(0), center=center)
    assert np.linalg.norm(out - center) == pytest.approx(INSIDE_SHARE * np.linalg.norm(own - center), rel=1e-5)
    assert attack_array(own, "inside", np.random.default_rng(0)).tolist() == own.astype(np.float32).tolist()
    # As probabilities (DS-FL): made on the logs of both, sent as a distribution again
    p, q = (np.exp(a) / np.exp(a).sum(axis=1, keepdims=True) for a in (own, center))
    probs = attack_array(p, "inside", np.random.default_rng(0), probabilities=True, center=q)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_an_inside_forgery_keeps_full_consensus_weight_where_lma_loses_it():
    # Prepare: 8 honest peers scattered around one answer; the attacker knows their mean (its target).
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, (60, 10))
    honest = base + rng.normal(0, 1, (8, 60, 10))
    center, own = honest.mean(axis=0), base + rng.normal(0, 1, (60, 10))
    # Execute
    hidden = closeness_weights(distance_ratios(np.concatenate([honest, inside(own, center)[None]])))
    loud = closeness_weights(distance_ratios(np.concatenate([honest, forge(own, "lma")[None]])))
    # Assert: inside the median peer's distance (full weight); LMA far outside (no weight)
    assert hidden[-1] == 1.0 and loud[-1] < 1e-6
