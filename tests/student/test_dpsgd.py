"""Example-level DP (DP-SGD): the step against Opacus and against a hand-computed noisy step, clipping
with repeated examples by hand, the accountant against its closed form and Opacus's, the noise's
scale, both engines drawing the same steps, and a run's ε spent."""

import copy
import math

import numpy as np
import pytest
import torch

from peerkd.batched.cohort import Cohort, DeviceData
from peerkd.batched.stacked import stack_students
from peerkd.student.dpsgd import (
    DPSGD,
    client_dpsgd,
    clip_sum,
    dpsgd_epsilon,
    dpsgd_noise,
    gaussian,
    row_bounds,
    sample_rate,
    steps_planned,
)
from peerkd.student.models import build_model
from peerkd.student.training import plan_batches, round_seed, shared_transfer_seed, train_model
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import WorldSpec, build_world


def tiny_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8)) * 3).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")  # Opacus's hooks on inputs without gradients
def test_the_clipped_step_equals_opacus_dpoptimizer():
    # Prepare: two epochs of batches of 8 from 16 examples, clip 0.5 (the gradients are larger: clipping acts).
    opacus = pytest.importorskip("opacus")
    x, y = tiny_data()
    ours = build_model("mlp64", (8,), 3, seed=0)
    ref = opacus.GradSampleModule(copy.deepcopy(ours))
    opt = opacus.optimizers.DPOptimizer(
        torch.optim.Adam(ref.parameters(), lr=0.01), noise_multiplier=0.0, max_grad_norm=0.5, expected_batch_size=8
    )
    # Execute: ours, and Opacus on the same batches.
    train_model(ours, x, y, epochs=2, lr=0.01, batch_size=8, seed=5, dp=DPSGD(0.5, 0.0, 1, 0.5, 4))
    for batch in plan_batches(16, 0, 8, 2, 5).private:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.as_tensor(x)[batch]), torch.as_tensor(y)[batch]).backward()
        opt.step()
    # Assert: the same weights; clipping changed them (unclipped training ends elsewhere).
    plain = build_model("mlp64", (8,), 3, seed=0)
    train_model(plain, x, y, epochs=2, lr=0.01, batch_size=8, seed=5)
    for (name, a), b in zip(ours.state_dict().items(), ref._module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert any((a - c).abs().max() > 1e-3 for a, c in zip(ours.state_dict().values(), plain.state_dict().values()))


def test_one_noisy_step_is_clipped_sum_plus_noise_over_the_batch():
    # Prepare: one step on 4 examples, clip 0.3, noise multiplier 2, key 7.
    x, y = tiny_data(4)
    model, by_hand = build_model("mlp64", (8,), 3, seed=1), build_model("mlp64", (8,), 3, seed=1)
    # Execute
    train_model(model, x, y, epochs=1, lr=0.01, batch_size=4, seed=0, dp=DPSGD(0.3, 2.0, 7, 1.0, 1))
    # Assert: each example's own gradient (autograd, one at a time) scaled to norm <= 0.3, summed,
    # plus 2 x 0.3 x the key's noise, over 4; then one Adam step.
    params = dict(by_hand.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(4):
        loss = torch.nn.functional.cross_entropy(by_hand(torch.as_tensor(x[i : i + 1])), torch.as_tensor(y[i : i + 1]))
        g = torch.autograd.grad(loss, list(params.values()))
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g))
        for n, t in zip(params, g):
            total[n] += t * min(1.0, 0.3 / (norm + 1e-6))
    noise = gaussian(torch.tensor([7]), 0, {n: tuple(p.shape) for n, p in params.items()})
    opt = torch.optim.Adam(params.values(), lr=0.01)
    for n, p in params.items():
        p.grad = (total[n] + 2.0 * 0.3 * noise[n][0]) / 4
    opt.step()
    for a, b in zip(model.state_dict().values(), by_hand.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_an_example_a_batch_holds_twice_is_clipped_once_for_both_copies():
    # [4, 7, 4]: example 4 twice -> each copy bounded by clip / 2.
    torch.testing.assert_close(row_bounds(torch.tensor([[4, 7, 4]]), 1.0), torch.tensor([[0.5, 1.0, 0.5]]))
    # Two copies of gradient [3, 4] (norm 5) at bound 0.5 each: [0.3, 0.4] twice = [0.6, 0.8], norm 1 = clip.
    # A row of norm 0.6 under bound 1 is kept: [0.6, 0].
    grads = {"w": torch.tensor([[[3.0, 4.0], [0.6, 0.0], [3.0, 4.0]]])}
    out = clip_sum(grads, row_bounds(torch.tensor([[4, 7, 4]]), 1.0))["w"]
    torch.testing.assert_close(out, torch.tensor([[1.2, 0.8]]), atol=1e-5, rtol=0)


def test_epsilon_at_full_sampling_matches_the_gaussian_rdp_closed_form():
    # Rate 1: T steps of multiplier z are (α, Tα/2z²)-RDP (Mironov 2017); Balle et al. 2020's conversion,
    # ε = Tα/2z² + log((α-1)/α) - (log δ + log α)/(α - 1), smallest over the orders. 20 steps at z = 1: α = 2.
    by_hand = 20 + math.log(1 / 2) - (math.log(1e-5) + math.log(2))
    assert dpsgd_epsilon(1.0, 1.0, 20, 1e-5) == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize("noise, rate, steps", [(1.1, 256 / 60000, 14062), (1.3, 0.05, 800), (4.0, 0.01, 10_000)])
def test_subsampled_epsilon_agrees_with_opacus_accountant(noise, rate, steps):
    # Opacus's RDP accountant (its own code, more and fractional orders) on the same Poisson-subsampled steps.
    accountants = pytest.importorskip("opacus.accountants")
    ref = accountants.RDPAccountant()
    ref.history = [(noise, rate, steps)]
    theirs = ref.get_epsilon(1e-5)
    assert theirs <= dpsgd_epsilon(noise, rate, steps, 1e-5) <= 1.05 * theirs  # ours: fewer orders, never looser


def test_abadi_et_al_budget_is_met():
    # Abadi et al. 2016: q = 0.01, σ = 4, 10,000 steps, δ = 1e-5 is (1.26, 1e-5)-DP by the moments accountant;
    # RDP with the tighter conversion certifies at most that.
    assert 0.9 < dpsgd_epsilon(4.0, 0.01, 10_000, 1e-5) <= 1.26


def test_the_noise_is_calibrated_tightly_and_unreachable_budgets_are_refused():
    z = dpsgd_noise(8.0, 1e-5, 0.05, 800)
    assert 0.99 * 8.0 <= dpsgd_epsilon(z, 0.05, 800, 1e-5) <= 8.0
    assert dpsgd_noise(1.0, 1e-5, 0.05, 800) > dpsgd_noise(4.0, 1e-5, 0.05, 800) > z
    with pytest.raises(Exception, match=r"privacy.epsilon: 1e-06 cannot be met over 800 DP-SGD steps"):
        dpsgd_noise(1e-6, 1e-5, 1.0, 800)


def test_noise_is_standard_normal_keyed_and_the_same_for_one_student_or_many():
    shapes = {"a": (300, 200), "b": (7,)}
    many = gaussian(torch.tensor([3, 9]), 5, shapes)
    one = gaussian(torch.tensor([9]), 5, shapes)
    a = many["a"][0].double()
    assert abs(float(a.mean())) < 0.01 and float(a.std()) == pytest.approx(1.0, abs=0.01)
    torch.testing.assert_close(many["a"][1], one["a"][0], rtol=0, atol=0)  # a student's noise: its key's alone
    assert not torch.equal(many["a"][0], many["a"][1])
    assert not torch.equal(gaussian(torch.tensor([9]), 6, shapes)["b"], one["b"])  # another step


def test_a_client_plans_its_steps_and_rate_from_its_shard():
    params = RoundParams(epochs=2, batch_size=32, dpsgd_epsilon=8.0, dp_rounds=20, dp_clip=0.7)
    assert steps_planned(100, 500, 32, 2, 20) == 20 * 2 * 16 and steps_planned(100, 0, 32, 2, 20) == 20 * 2 * 4
    assert sample_rate(100, 32) == 0.32 and sample_rate(10, 32) == 1.0
    dp = client_dpsgd(params, 100, 0, key=11)
    assert (dp.clip, dp.key, dp.rate, dp.steps) == (0.7, 11, 0.32, 160)
    assert client_dpsgd(RoundParams(), 100, 0, key=11) is None  # no budget: no DP-SGD


def test_both_engines_take_the_same_private_steps():
    # Prepare: 3 digits students distilling toward random targets with DP-SGD (ε 8 over 5 rounds).
    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
    p = RoundParams(round=2, epochs=1, lr=0.01, batch_size=16, alpha=1.0, temperature=2.0, dpsgd_epsilon=8.0,
                    dp_rounds=5, dp_clip=1.0)  # fmt: skip
    models = [build_model("mlp64", world.data.input_shape, world.num_classes, seed=c) for c in range(3)]
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=(world.transfer_rows, world.num_classes)).astype(np.float32) for _ in range(3)]
    cohort = Cohort(world, DeviceData.of(world, torch.device("cpu")), p, stack_students(models)[0], [0, 1, 2])
    dp = cohort.dpsgd(pairs=True)
    # Execute: the cohort at once, then each student alone on the per-client path.
    stacked, losses = cohort.train(stack_students([copy.deepcopy(m) for m in models])[1], targets=targets, dp=dp)
    for i, model in enumerate(models):
        loss = train_model(
            model, *world.private(i), epochs=1, lr=0.01, batch_size=16, seed=round_seed(0, i, 2),
            transfer_seed=shared_transfer_seed(0, 2), transfer_x=world.transfer_x, targets=targets[i], alpha=1.0,
            temperature=2.0, dp=dp[i],
        )  # fmt: skip
        # Assert: the same weights and loss; the noise was really there (σ > 0.5).
        assert dp[i].noise > 0.5 and loss == pytest.approx(losses[i], rel=1e-5)
        for name, v in model.state_dict().items():
            torch.testing.assert_close(stacked[name][i], v, rtol=0, atol=1e-6)
