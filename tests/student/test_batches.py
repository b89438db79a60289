"""Batch orders for a cohort at once equal each student's alone; every pass is a permutation."""

from __future__ import annotations

import math

import pytest
import torch

from peerkd.student.batches import (
    PRIVATE,
    _by_step,
    _dense_passes,
    _flat_passes,
    as_int32,
    cycled_orders,
    mix32,
    mix32_int32,
    mul32,
    plan_cohort,
)
from peerkd.student.training import plan_batches


def lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers (the reference for ``mix32``)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mul32_and_mix32_equal_plain_integer_arithmetic():
    # Prepare: values up to 2**32 - 1, where an int64 product would overflow
    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF]
    t = torch.tensor(xs)
    # Execute / Assert
    assert mul32(t, 0x846CA68B).tolist() == [(x * 0x846CA68B) % 2**32 for x in xs]
    assert mix32(t).tolist() == [lowbias32(x) for x in xs]


def test_the_int32_hash_has_the_int64_hashs_bits():
    # Prepare: the edge values and a million random 32-bit values
    xs = torch.cat([torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]), torch.randint(0, 2**32, (1 << 20,))])
    # Execute
    got = mix32_int32(as_int32(xs)).long() & 0xFFFFFFFF
    # Assert
    assert as_int32(xs).dtype == torch.int32 and (as_int32(xs).long() & 0xFFFFFFFF).equal(xs)
    assert got.equal(mix32(xs))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1000, 4097])
def test_every_pass_is_a_permutation_of_0_to_n(n):
    # Execute: three seeds, two epochs of three passes each
    out = cycled_orders(torch.tensor([n] * 3), torch.tensor([3 * n] * 3), 2, torch.tensor([0, 1, 2**33]), PRIVATE)
    # Assert
    for row in out.reshape(-1, n).tolist():
        assert sorted(row) == list(range(n))


def test_the_padded_and_the_flat_sort_give_the_same_orders():
    # Prepare: shards of very different sizes (the flat sort's case) and one empty
    sizes, lengths = torch.tensor([1, 3, 50, 7, 0]), torch.tensor([64, 64, 64, 20, 8])
    n = sizes.clamp(min=1)
    reps = torch.div(lengths + n - 1, n, rounding_mode="floor").clamp(min=1)
    p = torch.arange(64)[None, None, :]
    seeds = torch.tensor([4, 5, 6, 7, 8])
    # Execute
    dense = _dense_passes(n, reps, 2, seeds, PRIVATE, p)
    flat = _flat_passes(n, reps, 2, seeds, PRIVATE, p)
    # Assert: equal at every position a row uses (cycled_orders masks the rest)
    used = (p < lengths[:, None, None]).expand_as(dense)
    assert torch.equal(dense[used], flat[used])


def test_orders_depend_on_the_seed():
    a, b = (cycled_orders(torch.tensor([100]), torch.tensor([100]), 1, torch.tensor([s]), PRIVATE) for s in (1, 2))
    assert not torch.equal(a, b)


def test_cycled_orders_pass_over_every_item_once_per_pass():
    # Prepare: 3 items cycled to 10 positions (passes of 3, 3, 3 and a cut one), and an empty set
    sizes, lengths = torch.tensor([3, 7, 0]), torch.tensor([10, 7, 4])
    # Execute
    out = cycled_orders(sizes, lengths, 2, torch.tensor([5, 6, 7]), PRIVATE)
    # Assert
    assert out.shape == (3, 2, 10)
    for e in range(2):
        row = out[0, e].tolist()
        assert [sorted(row[i : i + 3]) for i in (0, 3, 6)] == [[0, 1, 2]] * 3 and row[9] in (0, 1, 2)
        assert sorted(out[1, e, :7].tolist()) == list(range(7)) and out[1, e, 7:].tolist() == [0, 0, 0]
    assert out[2].abs().sum() == 0
    assert not torch.equal(out[0, 0], out[0, 1])  # each epoch reshuffles


def test_a_cohort_plan_is_each_students_plan_alone():
    # Prepare: shards smaller and larger than the transfer set, one student not distilling
    sizes = torch.tensor([3, 40, 70, 12])
    seeds = torch.tensor([11, 12, 13, 2**40 + 5])
    distill = torch.tensor([True, True, True, False])
    # Execute
    plan = plan_cohort(sizes, 50, 8, 2, seeds, 99, distill)
    # Assert: student s alone (plan_batches) gets the same private batches and transfer batches
    for s in range(4):
        alone = plan_batches(int(sizes[s]), 50 if distill[s] else 0, 8, 2, int(seeds[s]), 99)
        k = len(alone.private)
        assert int(plan.steps[s]) == k == 2 * math.ceil(max(int(sizes[s]), 50 if distill[s] else 0) / 8)
        assert torch.equal(plan.private[:k, s], alone.private)
        assert plan.private[k:, s].abs().sum() == 0
        if distill[s]:
            transfer = plan.transfer[:k] if plan.shared else plan.transfer[:k, s]
            assert torch.equal(transfer, alone.transfer)


def test_students_with_equal_steps_share_one_transfer_order():
    # Prepare: every shard at most the transfer set's size: 7 steps per epoch for all
    sizes = torch.tensor([3, 5, 50])
    # Execute
    plan = plan_cohort(sizes, 50, 8, 2, torch.tensor([1, 2, 3]), 7)
    other_round = plan_cohort(sizes, 50, 8, 2, torch.tensor([1, 2, 3]), 8)
    # Assert
    assert plan.shared and plan.transfer.shape == (14, 8)
    first_pass = plan.transfer[:6].reshape(-1).tolist()  # 48 of the 50 inputs, none twice
    assert len(set(first_pass)) == 48 and set(first_pass) <= set(range(50))
    assert not torch.equal(plan.transfer, other_round.transfer)
    assert not torch.equal(plan.private[:, 0], plan.private[:, 1])  # private orders are each student's own


def test_plan_batches_keeps_empty_private_sets_empty():
    plan = plan_batches(0, 20, 8, 1, seed=3)
    assert plan.private.shape == (3, 0) and plan.transfer.shape == (3, 8) and plan.steps_per_epoch == 3


@pytest.mark.parametrize("spe", [[3, 3], [3, 2]])  # every student all W batches (a view), or not (gathered)
def test_by_step_puts_epoch_e_batch_j_at_step_e_times_spe_plus_j(spe):
    # Prepare: 2 students, 2 epochs of at most 3 batches of 2 indices, each index distinct.
    batches = torch.arange(2 * 2 * 3 * 2).reshape(2, 2, 3, 2)
    spe = torch.tensor(spe)
    # Execute
    out = _by_step(batches, spe, 6)
    # Assert: student s's step k is epoch k // spe[s], batch k % spe[s]; zeros past its 2·spe[s] steps.
    for s in range(2):
        for k in range(6):
            e, j = divmod(k, int(spe[s]))
            want = batches[s, e, j].tolist() if k < 2 * spe[s] else [0, 0]
            assert out[k, s].tolist() == want, (s, k)
