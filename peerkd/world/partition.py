"""Partitions of the private pool over clients, on Flower Datasets' partitioners.

``iid`` (IidPartitioner on a shuffled pool), ``dirichlet`` (DirichletPartitioner, α per
class), ``shard`` (PathologicalPartitioner, k classes per client; the first class of client
i is i mod C, so every class is used when N ≥ C). The impossible cases are refused up
front with a ConfigError naming the field.
"""

from __future__ import annotations

import warnings

import numpy as np

from peerkd.errors import ConfigError, check_choice, check_range

PARTITIONS = ("iid", "dirichlet", "shard")


def partition_labels(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.3,
    classes_per_client: int = 2,
    min_size: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``num_clients`` disjoint index arrays.

    Parameters
    ----------
    labels : np.ndarray
        Integer labels of the pool, shape ``(n,)``.
    num_clients, scheme : int, str
        Number of partitions; ``iid``, ``dirichlet`` or ``shard``.
    alpha, classes_per_client : float, int
        Dirichlet concentration (small is skewed, large near-IID); classes each client holds (``shard``).
    min_size, seed : int
        Fewest samples any client may get (else the request is refused); seed of every random choice.

    Returns
    -------
    list[np.ndarray]
        One sorted int64 index array per client.
    """
    check_choice("partition", scheme, PARTITIONS)
    _check_pool(len(labels), num_clients, min_size)
    parts = [
        np.sort(p).astype(np.int64)
        for p in _split(labels, num_clients, scheme, alpha, classes_per_client, min_size, seed)
    ]
    smallest = min(len(p) for p in parts)
    if smallest < min_size:
        raise ConfigError(
            "partition.min_size",
            f"{scheme} partition gives a client only {smallest} samples (< {min_size})",
            "fewer clients, a larger pool, or a smaller min_size",
        )
    return parts


def _check_pool(n: int, num_clients: int, min_size: int) -> None:
    """ConfigError unless a pool of ``n`` can give ``num_clients`` clients ``min_size`` samples each."""
    check_range("num_clients", num_clients, 1)
    check_range("partition.min_size", min_size, 1)
    if num_clients * min_size > n:
        raise ConfigError(
            "num_clients",
            f"{num_clients} clients × partition.min_size {min_size} = {num_clients * min_size} "
            f"samples, but the private pool has only {n}",
            f"num_clients ≤ {n // min_size}",
        )


def _split(labels: np.ndarray, num_clients: int, scheme: str, alpha: float, classes_per_client: int, min_size: int,
           seed: int) -> list[np.ndarray]:  # fmt: skip
    """``partition_labels``'s index arrays, unsorted and unchecked."""
    if scheme == "iid":
        # Flower Datasets' IidPartitioner cuts the shuffled pool into contiguous, near-equal
        # shards (datasets' shard(contiguous=True)): np.array_split is the same cut
        # (tests/world/test_partition.py checks it) without one Dataset.select per client.
        n = len(labels)
        order = np.random.default_rng(seed).permutation(n)
        return [order[p] for p in np.array_split(np.arange(n), num_clients)]
    if scheme == "dirichlet":
        check_range("partition.alpha", alpha, 0.0, low_open=True)
        return _dirichlet(labels, num_clients, alpha, min_size, seed)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    check_range("partition.classes_per_client", classes_per_client, 1, num_classes)
    return _shard(labels, num_clients, classes_per_client, seed)


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, min_size: int, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    try:
        return _run_partitioner(partitioner, labels)
    except ValueError as exc:  # raised after 10 draws that all miss min_partition_size
        raise ConfigError(
            "partition.alpha",
            f"Dirichlet(α={alpha:g}) could not give all {num_clients} clients ≥ {min_size} samples in 10 draws",
            "a larger alpha, fewer clients or a smaller partition.min_size",
        ) from exc


def _shard(labels: np.ndarray, num_clients: int, k: int, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )
    return _run_partitioner(partitioner, labels)


def _run_partitioner(partitioner, labels: np.ndarray) -> list[np.ndarray]:
    """Run a Flower Datasets partitioner over labels; return positions per partition."""
    from datasets import Dataset as HFDataset

    partitioner.dataset = HFDataset.from_dict({"label": labels.tolist(), "pos": np.arange(len(labels)).tolist()})
    with warnings.catch_warnings():  # its retry warnings are summarised by our own error
        warnings.simplefilter("ignore")
        first = np.asarray(partitioner.load_partition(0)["pos"], dtype=np.int64)  # draws every partition
    # The partitioners keep each partition's row indices (rows are positions here); reading them
    # beats one Dataset.select per client (~3 ms each: 30 s for 10,000 clients).
    by_id = getattr(partitioner, "_partition_id_to_indices", None)
    if not by_id or not np.array_equal(np.asarray(by_id[0], dtype=np.int64), first):
        return [
            first,
            *(
                np.asarray(partitioner.load_partition(i)["pos"], dtype=np.int64)
                for i in range(1, partitioner.num_partitions)
            ),
        ]
    return [np.asarray(by_id[i], dtype=np.int64) for i in range(partitioner.num_partitions)]
