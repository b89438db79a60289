import numpy as np
import pytest

from strategies.aggregation import leave_one_out_mean, peer_targets


def test_leave_one_out_mean_by_hand():
    # Prepare: three peers, two values each.
    stack = [[1, 3], [3, 1], [2, 2]]
    # Execute
    loo = leave_one_out_mean(stack)
    # Assert: row i is the mean of the other two rows.
    np.testing.assert_allclose(loo[0], [2.5, 1.5])  # mean of [3,1] and [2,2]
    np.testing.assert_allclose(loo[1], [1.5, 2.5])  # mean of [1,3] and [2,2]
    np.testing.assert_allclose(loo[2], [2.0, 2.0])  # mean of [1,3] and [3,1]
    assert loo.dtype == np.float32


def test_leave_one_out_mean_keeps_logit_matrix_shape():
    stack = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    loo = leave_one_out_mean(stack)
    np.testing.assert_array_equal(loo[0], stack[1])  # with two peers each gets the other's
    np.testing.assert_array_equal(loo[1], stack[0])


def test_leave_one_out_mean_writes_into_a_given_array_of_its_shape():
    out = np.full((3, 2), np.nan, dtype=np.float32)
    loo = leave_one_out_mean([[1, 3], [3, 1], [2, 2]], out=out)
    assert loo is out or np.shares_memory(loo, out)
    np.testing.assert_allclose(out, [[2.5, 1.5], [1.5, 2.5], [2.0, 2.0]])
    with pytest.raises(ValueError, match=r"out: a C-contiguous float32 array of shape \(3, 2\), got \(2, 3\)"):
        leave_one_out_mean([[1, 3], [3, 1], [2, 2]], out=np.zeros((2, 3), np.float32))


def test_leave_one_out_mean_needs_two_peers():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_mean([[1.0, 2.0]])


def test_peer_targets_for_senders_newcomers_and_lonely_peers():
    logits = {10: np.array([[1.0, 3.0]]), 20: np.array([[3.0, 1.0]]), 30: np.array([[2.0, 2.0]])}
    targets = peer_targets(logits, [10, 20, 99])
    np.testing.assert_allclose(targets[10], [[2.5, 1.5]])
    np.testing.assert_allclose(targets[20], [[1.5, 2.5]])
    np.testing.assert_allclose(targets[99], [[2.0, 2.0]])  # sent nothing: mean of all senders
    lonely = peer_targets({10: np.array([[1.0, 3.0]])}, [10, 20])
    assert lonely[10] is None  # no other peer to learn from
    np.testing.assert_allclose(lonely[20], [[1.0, 3.0]])
    assert peer_targets({}, [1, 2]) == {1: None, 2: None}
