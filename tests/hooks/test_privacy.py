"""Differential privacy of what clients send: row clipping and noise by hand, the accountant
against published formulas, the budget inverted and refused, and a run's ε spent."""

import math

import numpy as np
import pytest

from peerkd.batched import run_batched
from peerkd.errors import ConfigError
from peerkd.hooks.privacy import (
    PrivacySpec,
    clip_rows,
    epsilon_of_events,
    epsilon_spent,
    noise_multiplier,
    privatize,
    privatize_votes,
    sensitivity,
    share_of_noise,
    summed_noise,
    vote_sensitivity,
    vote_targets,
)
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec
from simulations.runner import preflight
from strategies import build_strategy


def test_rows_are_centred_then_clipped():
    # [3, -1, 1] centres to [2, -2, 0] (norm √8) -> scaled to norm 1; [0.2, 0, -0.2] is inside the ball.
    out = clip_rows(np.array([[3.0, -1.0, 1.0], [0.2, 0.0, -0.2]]), 1.0)
    np.testing.assert_allclose(out, [[1 / math.sqrt(2), -1 / math.sqrt(2), 0.0], [0.2, 0.0, -0.2]], atol=1e-12)


def test_sensitivity_is_two_clips_per_row_in_l2():
    assert sensitivity(500, 1.0) == pytest.approx(2 * math.sqrt(500))
    assert sensitivity(4, 0.5) == pytest.approx(2.0)


def test_epsilon_matches_the_gaussian_rdp_closed_form():
    # Mironov 2017 (Prop. 7): a Gaussian release of noise multiplier z is (α, α / 2z²)-RDP, so 20
    # releases at z = 1 are (α, 10α)-RDP. Converted to (ε, δ) by Balle et al. 2020 (Thm 21),
    # ε = 10α + log((α-1)/α) - (log δ + log α)/(α - 1), smallest over the accountant's orders at α = 2:
    by_hand = 20 + math.log(1 / 2) - (math.log(1e-5) + math.log(2))
    assert by_hand == pytest.approx(30.1266, abs=1e-4)
    assert epsilon_spent(1.0, 20, 1e-5) == pytest.approx(by_hand, abs=1e-6)


def test_the_classical_gaussian_mechanism_meets_its_published_budget():
    # Dwork & Roth 2014 (Thm A.1): one release with σ = √(2 ln(1.25/δ)) / ε is (ε, δ)-DP for ε < 1;
    # the RDP accountant must certify at most that ε for the same noise.
    eps, delta = 0.9, 1e-5
    assert epsilon_spent(math.sqrt(2 * math.log(1.25 / delta)) / eps, 1, delta) <= eps


def test_the_noise_multiplier_meets_the_target_tightly():
    z = noise_multiplier(8.0, 1e-5, 20)
    assert 0.99 * 8.0 <= epsilon_spent(z, 20, 1e-5) <= 8.0
    assert noise_multiplier(1.0, 1e-5, 20) > noise_multiplier(4.0, 1e-5, 20) > z  # less ε, more noise


def test_an_unreachable_budget_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"privacy.epsilon: 0.0001 cannot be met over 20 releases"):
        noise_multiplier(1e-4, 1e-5, 20)


def test_noise_has_the_calibrated_scale_and_is_seeded():
    # Prepare: 1,000 zero rows, clip 1, z = 0.5 -> std = 0.5 x 2 x √1000 ≈ 31.6 on every entry.
    released = {"logits": np.zeros((1000, 10))}
    # Execute
    a = privatize(released, 1.0, 0.5, (0, 1, 2))
    # Assert
    assert np.std(a["logits"]) == pytest.approx(0.5 * 2 * math.sqrt(1000), rel=0.03)
    np.testing.assert_array_equal(a["logits"], privatize(released, 1.0, 0.5, (0, 1, 2))["logits"])
    assert not np.array_equal(a["logits"], privatize(released, 1.0, 0.5, (0, 1, 3))["logits"])  # another client


def test_privacy_settings_are_validated():
    with pytest.raises(ConfigError, match="privacy.delta"):
        PrivacySpec(epsilon=1.0, delta=1.0)
    with pytest.raises(ConfigError, match="privacy.clip"):
        PrivacySpec(epsilon=1.0, clip=0.0)
    with pytest.raises(ConfigError, match="privacy.epsilon"):
        PrivacySpec(epsilon=-1.0)


def tiny(rounds=2, **privacy):
    world = WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=64, transfer_size=96)
    return RunSpec(world=world, rounds=rounds, epochs=1, students=("mlp32",), privacy=PrivacySpec(**privacy))


def test_a_rule_noise_cannot_cover_is_refused_before_the_run():
    with pytest.raises(ConfigError, match="privacy.epsilon: rule 'fedavg' sends more than outputs"):
        preflight(tiny(epsilon=8.0), build_strategy("fedavg"))
    with pytest.raises(ConfigError, match="cannot be met"):
        preflight(tiny(epsilon=1e-4), build_strategy("peer"))


def test_a_private_run_reports_the_epsilon_it_spent(tmp_path, flower_identity):
    # Execute: peer with (4, 1e-5) over 3 rounds; every round releases logits.
    summary = run_batched(tiny(rounds=3, epsilon=4.0), build_strategy("peer"), tmp_path, {}, device="cpu")
    # Assert
    assert summary["dp_releases"] == 3 and summary["rejected_replies"] == 0
    assert 0.99 * 4.0 <= summary["dp_epsilon_spent"] <= 4.0
    assert summary["dp_epsilon_spent"] == pytest.approx(epsilon_spent(summary["dp_noise"], 3, 1e-5))


def test_distributed_shares_add_up_to_the_whole_noise_for_any_one_sender():
    # Prepare: 5 senders share z = 2: each adds 2 / √4 = 1; the 4 others' shares add up to √4 · 1 = 2.
    assert share_of_noise(5) == 0.5
    assert summed_noise(2.0, 5, 5) == pytest.approx(2.0)
    assert summed_noise(2.0, 5, 3) == pytest.approx(2.0 * 0.5 * math.sqrt(2))  # two clients missing
    assert summed_noise(2.0, 5, 1) == pytest.approx(1.0)  # a lone release reaches non-senders with its share
    released = {"logits": np.zeros((500, 10))}
    # Execute: the sum of four senders' releases, as the fifth sees it once its own is removed
    others = sum(privatize(released, 1.0, 2.0 * share_of_noise(5), (0, 1, c))["logits"] for c in range(4))
    # Assert: the std of the whole noise, 2 x sensitivity
    assert np.std(others) == pytest.approx(2.0 * sensitivity(500, 1.0), rel=0.03)


def test_epsilon_composes_releases_of_different_noise():
    assert epsilon_of_events([2.0] * 5, 1e-5) == pytest.approx(epsilon_spent(2.0, 5, 1e-5))
    mixed = epsilon_of_events([2.0, 2.0, 1.0], 1e-5)
    assert epsilon_spent(2.0, 3, 1e-5) < mixed < epsilon_spent(1.0, 3, 1e-5)
    assert epsilon_of_events([], 1e-5) == 0.0


def test_distributed_noise_needs_a_rule_that_reads_only_sums():
    with pytest.raises(ConfigError, match="privacy.noise: .* rule 'peer' reads each client's.*allowed: client, or"):
        preflight(tiny(epsilon=8.0, noise="distributed"), build_strategy("peer"))
    with pytest.raises(ConfigError, match="privacy.noise"):
        PrivacySpec(epsilon=8.0, noise="shared")


def test_distributed_noise_reports_epsilon_for_the_sum_and_in_the_clear(tmp_path, flower_identity):
    # Execute: peer_sum, 3 clients share the noise for (4, 1e-5) over 3 rounds.
    spec = tiny(rounds=3, epsilon=4.0, noise="distributed")
    summary = run_batched(spec, build_strategy("peer_sum"), tmp_path, {}, device="cpu")
    # Assert: each adds z / √2; with all 3 summed every round, the sum protects at z: the target ε.
    assert summary["dp_noise_share"] == pytest.approx(summary["dp_noise"] / math.sqrt(2))
    assert 0.99 * 4.0 <= summary["dp_epsilon_spent"] <= 4.0
    assert summary["dp_epsilon_spent_clear"] == pytest.approx(epsilon_spent(summary["dp_noise_share"], 3, 1e-5))
    assert summary["dp_epsilon_spent_clear"] > 5.0  # z / √2 costs about 1.5x the ε


def test_example_level_settings_are_validated():
    with pytest.raises(ConfigError, match=r"privacy.unit: 'row' is not one of|privacy.unit"):
        PrivacySpec(epsilon=1.0, unit="row")
    with pytest.raises(ConfigError, match="privacy.noise: example-level DP adds its noise to each client's gradients"):
        PrivacySpec(epsilon=1.0, unit="example", noise="distributed")


@pytest.mark.parametrize("rule", ["fd", "oracle"])
def test_example_level_dp_refuses_rules_that_release_raw_statistics(rule):
    with pytest.raises(ConfigError, match=f"privacy.unit: rule '{rule}' releases statistics of the private data"):
        preflight(tiny(epsilon=8.0, unit="example"), build_strategy(rule))


def test_example_level_dp_covers_weights_and_refuses_a_budget_no_noise_meets():
    preflight(tiny(epsilon=8.0, unit="example"), build_strategy("fedavg"))  # weights: functions of a DP model
    with pytest.raises(ConfigError, match="privacy.epsilon: 1e-06 cannot be met over .* DP-SGD steps"):
        preflight(tiny(epsilon=1e-6, unit="example"), build_strategy("peer"))


def test_an_example_level_run_reports_the_epsilon_its_clients_spent(tmp_path, flower_identity):
    # Execute: peer with (4, 1e-5) over 3 rounds of DP-SGD; round 1 distills nothing (no targets yet),
    # so the clients take fewer steps than their budget was planned for.
    summary = run_batched(
        tiny(rounds=3, epsilon=4.0, unit="example"), build_strategy("peer"), tmp_path, {}, device="cpu"
    )
    # Assert
    assert summary["dp_unit"] == "example" and summary["rejected_replies"] == 0
    assert 0 < summary["dp_epsilon_spent_mean"] <= summary["dp_epsilon_spent"] < 4.0
    assert summary["dp_sgd_noise_max"] >= summary["dp_sgd_noise_min"] > 0
    # a 64-example shard, 1 epoch of 32-batches: round 1 alone 64/32 = 2 steps, then paired with 96 transfer inputs 3
    assert summary["dp_sgd_steps_max"] == 2 + 3 + 3


def test_a_vote_release_is_one_hot_top_classes_plus_noise_of_the_vote_sensitivity():
    # Prepare: 2,000 rows whose top class is row % 3; z = 0.5 -> std = 0.5 x √(2 x 2000) ≈ 31.6.
    logits = np.eye(3)[np.arange(2000) % 3] * 5.0 - 1.0
    # Execute
    votes = privatize_votes({"logits": logits}, 0.5, (0, 1, 2))["logits"]
    exact = privatize_votes({"logits": logits}, 0.0, (0, 1, 2))["logits"]
    # Assert: without noise the one-hot votes; the noise has the calibrated scale and is seeded.
    np.testing.assert_array_equal(exact, np.eye(3)[np.arange(2000) % 3])
    assert vote_sensitivity(2000) == pytest.approx(math.sqrt(4000))
    assert np.std(votes - exact) == pytest.approx(0.5 * math.sqrt(4000), rel=0.03)
    np.testing.assert_array_equal(votes, privatize_votes({"logits": logits}, 0.5, (0, 1, 2))["logits"])


def test_vote_counts_become_smoothed_labels_of_their_noisy_argmax():
    # [0.2, 1.4, -0.3]: class 1 -> [0.05, 0.9, 0.05]; as logits at T = 4: 4 x log of that (softmax at T gives it back).
    out = vote_targets(np.array([[0.2, 1.4, -0.3], [3.0, 0.0, 0.0]]), 4.0)
    np.testing.assert_allclose(out, 4.0 * np.log([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05]]), rtol=1e-6)
    np.testing.assert_allclose(np.exp(out / 4.0).sum(axis=1), [1.0, 1.0], rtol=1e-6)


def test_votes_need_a_rule_that_reads_vote_counts_and_client_level_dp():
    with pytest.raises(ConfigError, match="privacy.release: rule 'wml' reads logits, not votes"):
        preflight(tiny(epsilon=8.0, release="votes"), build_strategy("wml"))
    with pytest.raises(ConfigError, match="privacy.release: example-level DP releases the DP-trained model's outputs"):
        PrivacySpec(epsilon=8.0, unit="example", release="votes")
    preflight(tiny(epsilon=8.0, release="votes", noise="distributed"), build_strategy("peer_sum"))


def test_a_vote_release_run_spends_its_budget_and_sends_votes(tmp_path, flower_identity):
    summary = run_batched(
        tiny(rounds=3, epsilon=8.0, release="votes"), build_strategy("peer"), tmp_path, {}, device="cpu"
    )
    assert summary["dp_releases"] == 3 and summary["rejected_replies"] == 0
    assert 0.99 * 8.0 <= summary["dp_epsilon_spent"] <= 8.0
