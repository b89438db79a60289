"""Robust aggregation (strategies/robust.py) and its use by the rules, with values worked out by hand."""

import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.hooks.forgery import rank_shift
from strategies import build_strategy, rule_settings
from strategies.aggregation import class_consensus, entropy_reduction_average, peer_targets, weighted_peer_targets
from strategies.robust import (
    MAX_RATIO,
    Aggregator,
    class_ratios,
    clip_norms,
    closeness_weights,
    consensus_weights,
    coordinate_median,
    distance_ratios,
    remember,
    similarity_weights,
    trim_count,
    trimmed_mean,
)


def test_coordinate_median_by_hand():
    # Column 0: 1, 2, 7 -> 2; column 1: 9, 0, 4 -> 4.
    np.testing.assert_allclose(coordinate_median([[1, 9], [2, 0], [7, 4]]), [2, 4])
    # An even count averages the two middle values: 1, 2, 3, 10 -> 2.5.
    np.testing.assert_allclose(coordinate_median([[1], [2], [3], [10]]), [2.5])


def test_trimmed_mean_drops_both_ends():
    # trim 0.2 of 5 peers drops ceil(1.0) = 1 at each end: mean of 2, 3, 4.
    np.testing.assert_allclose(trimmed_mean([[1], [2], [3], [4], [100]], 0.2), [3.0])
    # Per coordinate: column 1 is 50, 0, 10, 20, 30 -> drops 0 and 50 -> mean of 10, 20, 30 = 20.
    np.testing.assert_allclose(trimmed_mean([[1, 50], [2, 0], [3, 10], [4, 20], [100, 30]], 0.2), [3.0, 20.0])


def test_trim_count_rounds_up_and_leaves_one():
    assert trim_count(9, 0.2) == 2  # ceil(1.8)
    assert trim_count(10, 0.2) == 2  # exactly 2.0
    assert trim_count(5, 0.0) == 0
    assert trim_count(2, 0.4) == 0  # dropping 1 of 2 at each end would leave none


def test_clip_norms_at_the_median_norm_or_a_given_bound():
    stack = [[3, 4], [0, 1], [30, 40]]  # norms 5, 1, 50; median 5
    np.testing.assert_allclose(clip_norms(stack), [[3, 4], [0, 1], [3, 4]])
    np.testing.assert_allclose(clip_norms(stack, 2.5), [[1.5, 2], [0, 1], [1.5, 2]])
    # The clip aggregator averages the clipped rows: ([3,4] + [0,1] + [3,4]) / 3 = [2, 3].
    np.testing.assert_allclose(Aggregator("clip")(np.array(stack, dtype=float)), [2, 3])


def test_consensus_weights_by_hand():
    # Median of [0,0],[1,0],[0,1],[10,10] per coordinate: (0+1)/2 = 0.5 -> [0.5, 0.5].
    # Distances: the three honest rows sqrt(0.5) = 0.7071, the outlier 9.5*sqrt(2) = 13.435;
    # median distance 0.7071 (d/m = 1 and 19), so honest weights exp(0) = 1 each and the outlier
    # exp(-4 * 18^2) ~ 0.
    w = consensus_weights([[0, 0], [1, 0], [0, 1], [10, 10]])
    np.testing.assert_allclose(w[:3], [1 / 3] * 3, rtol=1e-12)
    assert w[3] < 1e-100


def test_consensus_ignores_a_dissenter_when_most_agree_exactly():
    # Three identical peers and one sign-flipped: median distance 0, the dissenter gets no weight.
    stack = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_allclose(Aggregator("consensus")(stack), [1.0, 1.0])
    np.testing.assert_allclose(Aggregator("mean")(stack), [0.5, 0.5])


def test_weights_scale_the_mean_but_not_the_median():
    stack = np.array([[0.0], [3.0], [9.0]])
    np.testing.assert_allclose(Aggregator("mean")(stack, np.array([2.0, 1.0, 0.0])), [1.0])  # (0*2 + 3*1) / 3
    np.testing.assert_allclose(Aggregator("median")(stack, np.array([2.0, 1.0, 0.0])), [3.0])


def test_leave_one_out_median_by_hand():
    loo = Aggregator("median").leave_one_out(np.array([[1.0], [2.0], [3.0], [10.0]]))
    # Row 0: median(2, 3, 10) = 3; row 1: median(1, 3, 10) = 3; row 2: median(1, 2, 10) = 2; row 3: 2.
    np.testing.assert_allclose(loo[:, 0], [3, 3, 2, 2])


def test_peer_targets_with_a_robust_aggregator():
    logits = {10: np.array([[1.0]]), 20: np.array([[2.0]]), 30: np.array([[3.0]]), 40: np.array([[10.0]])}
    targets = peer_targets(logits, [10, 40, 99], Aggregator("median"))
    np.testing.assert_allclose(targets[10], [[3.0]])  # median of 2, 3, 10
    np.testing.assert_allclose(targets[40], [[2.0]])  # median of 1, 2, 3
    np.testing.assert_allclose(targets[99], [[2.5]])  # a non-sender: median of all four
    # The plain mean keeps the exact leave-one-out mean: (2 + 3 + 10) / 3 = 5.
    np.testing.assert_allclose(peer_targets(logits, [10], Aggregator("mean"))[10], [[5.0]])


def test_era_of_the_median_probabilities():
    # Median of 0.6, 0.8, 0.1 is 0.6 (and of 0.4, 0.2, 0.9 is 0.4): softmax([6, 4]) at T = 0.1.
    probs = [[[0.6, 0.4]], [[0.8, 0.2]], [[0.1, 0.9]]]
    out = entropy_reduction_average(probs, 0.1, Aggregator("median"))
    e = np.exp([6.0, 4.0])
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-6)


def test_fd_class_consensus_median_per_class():
    # Recipient 0 learns from peers 1, 2, 3. Class 0 is held by all three: median of rows
    # [1,0], [2,0], [9,0] -> [2, 0]. Class 1 is held by peers 1 and 2 only: median of [0,4], [0,6] -> [0, 5].
    means = {
        0: np.zeros((2, 2)),
        1: np.array([[1.0, 0.0], [0.0, 4.0]]),
        2: np.array([[2.0, 0.0], [0.0, 6.0]]),
        3: np.array([[9.0, 0.0], [0.0, 99.0]]),
    }
    counts = {0: np.array([1, 1]), 1: np.array([5, 5]), 2: np.array([5, 5]), 3: np.array([5, 0])}
    out = class_consensus(means, counts, [0], Aggregator("median"))[0]
    np.testing.assert_allclose(out, [[2.0, 0.0], [0.0, 5.0]])


def test_wml_mix_with_a_robust_aggregator_is_a_distribution():
    rng = np.random.default_rng(0)
    logits = {k: rng.normal(size=(4, 3)) for k in range(5)}
    targets = weighted_peer_targets(logits, {k: 1.0 for k in range(5)}, [0], 2.0, Aggregator("trimmed_mean"))
    mix = np.exp(targets[0] / 2.0)
    np.testing.assert_allclose(mix.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"method": "max"}, "strategy.aggregator"),
        ({"trim": 0.5}, "strategy.trim"),
        ({"clip_norm": -1}, "strategy.clip_norm"),
    ],
)
def test_bad_aggregator_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError, match=field):
        Aggregator(**settings)


@pytest.mark.parametrize("rule", ["peer", "wml", "fedmd", "dsfl", "fd", "feddf"])
def test_every_rule_that_averages_client_outputs_takes_an_aggregator(rule):
    assert {"aggregator", "trim", "clip_norm"} <= set(rule_settings(rule))
    assert build_strategy(rule, aggregator="median").aggregator.method == "median"
    with pytest.raises(ConfigError, match="strategy.aggregator"):
        build_strategy(rule, aggregator="mode")


def test_rules_that_average_no_client_outputs_refuse_an_aggregator():
    with pytest.raises(ConfigError, match="strategy.aggregator"):
        build_strategy("teacher", aggregator="median")


def test_consensus_keeps_the_closer_half_whole_and_fades_the_far():
    # Distances to the median [0] of [-1], [0], [1], [2], [0]: 1, 0, 1, 2, 0; median distance 1.
    # d/m - 1 <= 0 for the first four but [2]: weights 1, 1, 1, exp(-4 * 1^2), 1.
    w = consensus_weights([[-1.0], [0.0], [1.0], [2.0], [0.0]])
    e = np.exp(-4.0)
    np.testing.assert_allclose(w, np.array([1, 1, 1, e, 1]) / (4 + e))


def test_distance_ratios_and_their_memory_by_hand():
    # The median is 1: distances 1, 0, 2; the median distance 1.
    assert distance_ratios(np.array([[0.0], [1.0], [3.0]])).tolist() == [1.0, 0.0, 2.0]
    assert distance_ratios(np.array([[1.0], [1.0], [3.0]])).tolist() == [0.0, 0.0, MAX_RATIO]  # most on the median
    assert remember({1: 1.0, 2: 0.5}, {1: 0.0, 3: 0.8}) == {1: 0.5, 2: 0.5, 3: 0.8}


def test_reputation_trusts_peers_as_far_as_the_median_peer_and_fewer_beyond():
    np.testing.assert_allclose(closeness_weights(np.array([0.5, 1.0, 2.0, 3.0])), [1.0, 1.0, np.exp(-4), np.exp(-16)])


def test_reputation_aggregate_is_consensus_times_trust_after_clipping_huge_peers():
    # Prepare: 5 honest peers near one answer on 60 rows of 10 classes; a rank_shift attacker; a huge peer.
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, (60, 10))
    honest = base + rng.normal(0, 0.1, (5, 60, 10))
    stack = np.concatenate([honest, rank_shift(base)[None]])
    agg = Aggregator("reputation")
    # Execute
    out = agg(stack)
    distrusted = agg(stack, np.array([1, 1, 1, 1, 1, 0.0]))
    loud = agg(np.concatenate([honest, 1e6 * honest[:1]]))
    # Assert: without memory it is consensus (the attacker, far from the median, barely counts);
    # a remembered distrust removes it; a huge peer is clipped at 3x the median norm
    np.testing.assert_allclose(out, Aggregator("consensus")(stack), atol=1e-5)
    np.testing.assert_allclose(distrusted, honest.mean(axis=0), atol=1e-3)
    assert np.abs(loud).max() < 3 * np.abs(honest).max()
    loo = agg.leave_one_out(stack, np.array([1, 1, 1, 1, 1, 0.0]))
    np.testing.assert_allclose(loo[0], honest[1:].mean(axis=0), atol=1e-3)


def test_peer_remembers_reputation_by_node_and_it_survives_a_checkpoint():
    rule = build_strategy("peer", aggregator="reputation")
    rule.aggregator, rule.distance = Aggregator("reputation"), {7: 0.25, 8: 1.0}
    state = rule.state_dict()
    fresh = build_strategy("peer", aggregator="reputation")
    fresh.load_state_dict(state)
    assert fresh.distance == {7: 0.25, 8: 1.0}


def test_class_ratios_by_hand():
    # Rows [3, 0] (the median's top class 0) and [0, 3] (class 1); peer 3 is off on the class-0 row,
    # peer 2 on the class-1 row. Per group the median distance is 0: the one peer off gets MAX_RATIO,
    # the others 0; a peer's ratio is the median of its two group ratios.
    stack = np.array([[[3, 0], [0, 3]], [[3, 0], [0, 3]], [[3, 0], [0, 4]], [[5, 0], [0, 3]]], dtype=float)
    np.testing.assert_allclose(class_ratios(stack), [0, 0, MAX_RATIO / 2, MAX_RATIO / 2])
    # One group (every row the same top class): the ratios are distance_ratios of the whole arrays.
    one = np.array([[[3.0, 0.0]], [[4.0, 0.0]], [[6.0, 0.0]]])
    np.testing.assert_allclose(class_ratios(one), distance_ratios(one))


def test_class_aware_keeps_a_one_class_expert_and_drops_a_peer_off_everywhere():
    # Prepare: 6 peers near one answer on 100 rows, 10 per median class (the class-k rows score high
    # on column k); an expert far off only on class 3's rows; a forger off by as much on every row.
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (100, 10))
    base[np.arange(100), np.arange(100) % 10] += 6.0
    stack = base + rng.normal(0, 0.3, (8, 100, 10))
    rows3 = np.arange(100) % 10 == 3
    stack[6, rows3, 7] += 8.0  # the expert: class 3's rows look like class 7 to it
    stack[7] += rng.normal(0, 2.5, (100, 10))  # the forger
    # Execute
    ratios, whole = class_ratios(stack), distance_ratios(stack)
    w = closeness_weights(ratios)
    # Assert: class-aware, the expert is as close as the honest peers (ratio ~1, weight ~1) and the forger
    # gets none; whole-row distances put the expert ~3x beyond the median peer (consensus drops it)
    assert abs(ratios[6] - 1) < 0.05 and w[6] > 0.99 and ratios[7] > 5 and w[7] < 1e-6
    assert whole[6] > 2.5 and closeness_weights(whole)[6] < 1e-3
    out = Aggregator("class_aware")(stack)
    np.testing.assert_allclose(out, np.tensordot(w / w.sum(), stack, axes=1), rtol=1e-5)
    loo = Aggregator("class_aware").leave_one_out(stack)
    np.testing.assert_allclose(loo[7], Aggregator("class_aware")(stack[:7]), rtol=1e-6)


def test_similarity_weights_drop_peers_that_deviate_alike_however_little():
    # By hand: the median is 0 and the deviations are orthogonal or opposite: no pair alike, every
    # weight 1 (w = 1 - 0, normalised to 0.99, ln(99) + 0.5 > 1, clipped). Two peers deviating the
    # same way (cos 1) get 0.
    apart = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    np.testing.assert_allclose(similarity_weights(apart), np.ones(5))
    alike = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 3.0], [0.0, 2.0]])
    w = similarity_weights(alike)
    assert w[5] == 0.0 and w[6] == 0.0 and w[1] == 0.0  # the median is [0, 0]: peers 1, 5, 6 point the same way
    assert (w[[0, 2, 3]] == 1.0).all()
    # Two `inside` attackers among 8 honest peers: inside the consensus radius, yet alike.
    from peerkd.hooks.forgery import inside

    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, (60, 10))
    honest = base + rng.normal(0, 1, (8, 60, 10))
    forged = np.stack([inside(base + rng.normal(0, 1, (60, 10)), honest.mean(axis=0)) for _ in range(2)])
    stack = np.concatenate([honest, forged])
    assert (closeness_weights(distance_ratios(stack))[8:] == 1.0).all()  # consensus keeps them whole
    np.testing.assert_allclose(similarity_weights(stack), [1] * 8 + [0, 0])
    c = consensus_weights(stack)[:8]  # the attackers' weight is 0: the honest peers' consensus-weighted mean
    np.testing.assert_allclose(Aggregator("foolsgold")(stack), np.tensordot(c / c.sum(), honest, axes=1), rtol=1e-5)
