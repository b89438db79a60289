import numpy as np
import pytest
import torch

from peerkd.wire import rows
from peerkd.wire.codec import decode_logits, encode_logits
from peerkd.wire.rows import read_tensor, stack_rows


def test_consecutive_rows_of_one_array_are_viewed_not_copied():
    a = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    stack = stack_rows([a[1], a[2], a[3]])
    np.testing.assert_array_equal(stack, a[1:4])
    assert np.shares_memory(stack, a)
    assert not stack.flags.writeable  # a view of received rows is read-only, as they are


@pytest.mark.parametrize(
    "pick",
    [
        lambda a, b: [a[2], a[1]],  # out of order
        lambda a, b: [a[0], a[2]],  # a gap
        lambda a, b: [a[0], b[1]],  # two arrays
        lambda a, b: [a[0], a[1].copy()],  # a copy of a row
        lambda a, b: [a[0, :2], a[1, :2]],  # parts of rows: not contiguous one after the other
        lambda a, b: [a[0].astype(np.float64), a[1].astype(np.float64)],
    ],
)
def test_anything_else_is_stacked_as_numpy_stacks_it(pick):
    a = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    b = a.copy()
    arrays = pick(a, b)
    stack = stack_rows(arrays)
    np.testing.assert_array_equal(stack, np.stack(arrays))
    assert not np.shares_memory(stack, a)


def test_no_arrays_raises_as_numpy():
    with pytest.raises(ValueError):
        stack_rows([])


def test_received_rows_of_a_torch_output_stack_without_a_copy():
    # As the batched engine replies: rows of one output, each in its own message, decoded by the server.
    out = torch.randn(5, 7, 3).numpy()
    received = [decode_logits(encode_logits(out[i]), (7, 3)) for i in range(5)]
    stack = stack_rows(received)
    assert np.shares_memory(stack, out)
    np.testing.assert_array_equal(stack, out)
    # From bytes (Flower's engine, a deployment) the same values arrive as separate arrays: copied.
    copied = stack_rows([np.frombuffer(r.tobytes(), np.float32).reshape(7, 3) for r in received])
    np.testing.assert_array_equal(copied, out)
    assert not np.shares_memory(copied, out)


def test_read_tensor_wraps_read_only_values_without_a_copy_or_a_warning(recwarn):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    view = a.view()
    view.flags.writeable = False
    t = read_tensor(view)
    assert t.data_ptr() == a.__array_interface__["data"][0]
    assert torch.equal(t, torch.arange(6.0).reshape(2, 3))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(rows, "POOLED_BYTES", 64)  # pool small arrays too
    return rows.ArrayPool()


def address(a) -> int:
    return a.__array_interface__["data"][0]


def test_a_pooled_array_reuses_the_memory_of_one_nothing_refers_to(pool):
    a = pool.empty((4, 8, 2))
    a[:] = 1.0
    where = address(a)
    del a  # every view of it gone: its memory is free
    b = pool.empty((4, 8, 2))
    assert address(b) == where and b.shape == (4, 8, 2) and b.dtype == np.float32 and b.flags.writeable
    assert pool.held_bytes() == 4 * 8 * 2 * 4


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a[2],  # a row, as a reply holds it
        lambda a: read_tensor(a),  # a tensor over it
        lambda a: stack_rows([a[1], a[2]]),  # a stack of its rows
        lambda a: decode_logits(encode_logits(a[0]), a.shape[1:]),  # a reply's decoded logits
    ],
)
def test_memory_is_not_reused_while_anything_made_from_it_lives(pool, keep):
    a = pool.empty((4, 8, 2))
    a[:] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    kept = keep(a)
    before = np.array(kept)
    del a
    b = pool.empty((4, 8, 2))
    b[:] = -1.0  # written while `kept` is still in use
    np.testing.assert_array_equal(np.asarray(kept), before)
    assert pool.held_bytes() == 2 * 4 * 8 * 2 * 4


def test_free_memory_of_another_size_is_released_and_small_arrays_are_not_pooled(pool, monkeypatch):
    a = pool.empty((4, 8, 2))
    del a
    pool.empty((5, 8, 2))  # a new size: the free block of the old one goes back
    assert pool.held_bytes() == 5 * 8 * 2 * 4
    monkeypatch.setattr(rows, "POOLED_BYTES", 1 << 20)
    small = pool.empty((3, 2), np.int64)
    assert small.shape == (3, 2) and small.dtype == np.int64 and pool.held_bytes() == 5 * 8 * 2 * 4
