import numpy as np
import pytest
import torch

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
