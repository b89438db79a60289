import numpy as np
import pytest

from peerkd.errors import ConfigError
from peerkd.world.partition import partition_labels

LABELS = np.repeat(np.arange(10), 300)  # 3,000 samples, 300 per class


def _check_disjoint_cover(parts, n):
    together = np.concatenate(parts)
    assert len(together) == n and len(np.unique(together)) == n


def test_iid_gives_equal_shards_with_all_classes():
    parts = partition_labels(LABELS, 10, "iid", seed=0)
    assert [len(p) for p in parts] == [300] * 10  # 3,000 / 10 by hand
    _check_disjoint_cover(parts, len(LABELS))
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


def test_dirichlet_is_seeded_and_respects_min_size():
    a = partition_labels(LABELS, 10, "dirichlet", alpha=0.3, min_size=20, seed=1)
    b = partition_labels(LABELS, 10, "dirichlet", alpha=0.3, min_size=20, seed=1)
    c = partition_labels(LABELS, 10, "dirichlet", alpha=0.3, min_size=20, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert min(len(p) for p in a) >= 20
    _check_disjoint_cover(a, len(LABELS))


def _dominant_share(parts):
    """Mean over clients of the share of the client's most common class."""
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


def test_small_alpha_skews_classes_more_than_large_alpha():
    skewed = _dominant_share(partition_labels(LABELS, 10, "dirichlet", alpha=0.05, min_size=5, seed=0))
    near_iid = _dominant_share(partition_labels(LABELS, 10, "dirichlet", alpha=100.0, min_size=5, seed=0))
    assert skewed > 0.6  # most of a client's data is one class
    assert near_iid < 0.2  # ~0.1 under IID, plus noise


def test_shard_gives_each_client_exactly_k_classes():
    parts = partition_labels(LABELS, 10, "shard", classes_per_client=2, seed=0)
    assert [len(np.unique(LABELS[p])) for p in parts] == [2] * 10
    # First class of client i is i mod 10 ("first-deterministic"): every class is used.
    assert set(np.concatenate([np.unique(LABELS[p]) for p in parts])) == set(range(10))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_clients=400, scheme="iid", min_size=10), "num_clients"),
        (dict(num_clients=10, scheme="dirichlet", alpha=0.3, min_size=290), "partition.alpha"),
        (dict(num_clients=10, scheme="shard", classes_per_client=11), "partition.classes_per_client"),
        (dict(num_clients=10, scheme="dirichlet", alpha=0.0), "partition.alpha"),
        (dict(num_clients=10, scheme="pathological"), "partition"),
    ],
)
def test_impossible_partitions_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        partition_labels(LABELS, **kwargs)
    assert err.value.field == field
    assert "allowed" in str(err.value)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shard"])
def test_fast_paths_equal_flower_datasets_load_partition(scheme):
    # Prepare: Flower Datasets' own answer, one load_partition per client.
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    labels = np.random.default_rng(3).integers(0, 10, 1003)
    order = np.random.default_rng(0).permutation(len(labels)) if scheme == "iid" else np.arange(len(labels))
    partitioner = {
        "iid": IidPartitioner(num_partitions=7),
        "dirichlet": DirichletPartitioner(
            num_partitions=7,
            partition_by="label",
            alpha=0.3,
            min_partition_size=5,
            self_balancing=False,
            shuffle=True,
            seed=0,
        ),
        "shard": PathologicalPartitioner(
            num_partitions=7,
            partition_by="label",
            num_classes_per_partition=2,
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=0,
        ),
    }[scheme]
    partitioner.dataset = HFDataset.from_dict({"label": labels[order].tolist(), "pos": order.tolist()})
    expected = [np.sort(np.asarray(partitioner.load_partition(i)["pos"])) for i in range(7)]
    # Execute
    got = partition_labels(labels, 7, scheme, alpha=0.3, classes_per_client=2, min_size=5, seed=0)
    # Assert
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_ten_thousand_clients_partition_in_seconds():
    import time

    labels = np.random.default_rng(0).integers(0, 10, 200_000)
    t0 = time.perf_counter()
    parts = partition_labels(labels, 10_000, "iid", min_size=20, seed=0)
    assert len(parts) == 10_000 and time.perf_counter() - t0 < 5
