import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.world.build import WorldSpec, build_world
from peerkd.world.data import load_dataset
from peerkd.world.transfer import long_tail, resize_inputs


@pytest.mark.parametrize("kind", ["public", "imbalanced", "noise", "digits", "mnist1d"])
def test_every_transfer_kind_matches_the_input_shape(kind):
    w = build_world(WorldSpec(dataset="mnist5k", transfer=kind, num_clients=3))
    assert w.transfer_x.shape[1:] == (1, 28, 28) and w.transfer_x.dtype == np.float32
    assert np.isfinite(w.transfer_x).all()
    if kind != "imbalanced":
        assert len(w.transfer_x) == len(w.splits.public)  # default size: the public split's


def test_public_transfer_is_the_public_split_and_size_is_configurable():
    w = build_world(WorldSpec(dataset="digits", num_clients=3))
    np.testing.assert_array_equal(w.transfer_x, w.data.x[w.splits.public])
    small = build_world(WorldSpec(dataset="digits", num_clients=3, transfer_size=50))
    assert len(small.transfer_x) == 50
    with pytest.raises(ConfigError, match="data.transfer_size"):
        build_world(WorldSpec(dataset="digits", num_clients=3, transfer_size=10_000))


def test_long_tail_keeps_a_decreasing_share_per_class():
    labels = np.repeat(np.arange(10), 100)
    kept = long_tail(labels, np.arange(1000), np.random.default_rng(0))
    sizes = sorted(np.bincount(labels[kept], minlength=10).tolist())
    assert sizes[0] == 10 and sizes[-1] == 100  # rarest keeps 10%, commonest all


def test_resize_images_and_sequences():
    digits = load_dataset("digits").x[:4]
    assert resize_inputs(digits, (1, 28, 28)).shape == (4, 1, 28, 28)
    assert resize_inputs(digits, (1, 40)).shape == (4, 1, 40)
    constant = np.ones((2, 1, 8, 8), np.float32)
    np.testing.assert_allclose(resize_inputs(constant, (1, 16, 16)), 1.0)  # interpolation keeps constants


def test_noise_transfer_with_no_public_split_needs_a_size():
    with pytest.raises(ConfigError, match="needs a size"):
        build_world(WorldSpec(dataset="digits", num_clients=3, public_frac=0.0, transfer="noise"))
    w = build_world(WorldSpec(dataset="digits", num_clients=3, public_frac=0.0, transfer="noise", transfer_size=64))
    assert w.transfer_x.shape == (64, 1, 8, 8)
