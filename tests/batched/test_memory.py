"""The memory estimate's helpers: numbers worked out by hand, and one line naming the largest part."""

import numpy as np
import pytest
import torch

from peerkd.batched.memory import ArrayPool, MemoryPart, available_ram, check_fits, fleet_bytes, human_bytes, plan_bytes
from peerkd.errors import ConfigError


def test_plan_bytes_by_hand():
    # 100 rows in batches of 32: 4 full batches a pass (128 indices), 2 epochs, int64, 4 copies.
    assert plan_bytes(100, 32, 2) == 4 * 8 * 2 * 128 == 8192
    # A batch larger than the data is still full: one batch of 1,000 indices a pass.
    assert plan_bytes(10, 1000, 1) == 4 * 8 * 1000


def test_fleet_bytes_by_hand():
    # 3 students of 10 parameters sending 5 floats: 4 bytes × 3 × (2 × 10 + 3 × 5) = 420.
    assert fleet_bytes(10, 3, 5) == 420


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_bytes(1.5 * 2**50) == "1.5 PiB"


def test_check_fits_names_the_largest_part_with_the_estimate_and_the_limit():
    parts = [MemoryPart("dataset", "data.size", 600), MemoryPart("students", "num_clients", 500)]
    # Fits: 1,100 bytes of 1,100.
    check_fits(parts, available=1100)
    # Does not fit: one line with ~1.1 KiB, the 1,000 B limit, the parts largest first.
    with pytest.raises(ConfigError) as err:
        check_fits(parts, available=1000)
    assert err.value.field == "data.size"
    assert str(err.value) == (
        "data.size: the run would need ~1.1 KiB of memory, but 1000 B is available (dataset 600 B; students 500 B) "
        "(allowed: a smaller data.size, or a machine with more memory)"
    )


def test_check_fits_says_how_to_shrink_a_part_that_grows_the_other_way():
    parts = [MemoryPart("actors", "resources.num_cpus", 2000, "a larger resources.num_cpus (fewer actors)")]
    with pytest.raises(ConfigError, match=r"allowed: a larger resources.num_cpus \(fewer actors\)"):
        check_fits(parts, available=1000)


def test_available_ram_is_this_machines():
    assert 0 < available_ram() < 2**50


def test_array_pool_reuses_an_array_only_once_nothing_else_holds_it():
    # Prepare: a pool keeping two arrays; the first one handed out is held only through a view of it.
    pool = ArrayPool(keep=2)
    a = pool.empty((3, 4))
    held = a[1:]
    del a
    # Execute / Assert: the view keeps it out of reuse; a second array, once dropped, comes back.
    b = pool.empty((3, 4))
    assert b is not held.base and b.shape == (3, 4) and b.dtype == np.float32
    b_id = id(b)
    del b
    assert id(pool.empty((3, 4))) == b_id
    # Assert: a tensor over the first array holds it as the view did; with every holder gone it comes back.
    tensor = torch.from_numpy(held.base)
    a_id = id(held.base)
    del held
    assert id(pool.empty((3, 4))) == b_id
    del tensor
    assert id(pool.empty((3, 4))) in (a_id, b_id)
    # Assert: another shape or dtype gets its own array, and the pool keeps at most ``keep``.
    assert pool.empty((3, 5)).shape == (3, 5) and pool.empty((3, 4), np.float64).dtype == np.float64
    assert len(pool._arrays) == 2
