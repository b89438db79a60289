"""The world: one dataset, its seeded splits and the partition of its private pool.

Server and clients each build the world from the same ``WorldSpec`` (it travels in every
message's ConfigRecord), so nothing but logits or weights ever crosses the wire, and every
rule run with the same spec and seed sees the same data.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from peerkd.data import Dataset, Splits, load_dataset, split_indices
from peerkd.partition import partition_labels
from peerkd.transfer import make_transfer_set

_PREFIX = "world."


@dataclass(frozen=True)
class WorldSpec:
    """Everything that fixes the data each client and the server see."""

    dataset: str = "mnist5k"
    data_path: str = ""
    data_label: str = "label"
    test_frac: float = 0.2
    public_frac: float = 0.1
    server_frac: float = 0.1
    transfer: str = "public"  # public | imbalanced | noise | another built-in dataset
    transfer_size: int = 0  # 0: the public split's size
    partition: str = "dirichlet"
    alpha: float = 0.3
    classes_per_client: int = 2
    min_size: int = 10
    samples_per_client: int = 0  # cap each private shard at this many samples (0: no cap)
    num_clients: int = 10
    seed: int = 0

    def to_config(self) -> dict[str, int | float | str]:
        """Flat ``world.*`` entries for a Flower ConfigRecord."""
        return {_PREFIX + k: v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> "WorldSpec":
        """Inverse of ``to_config``; other keys are ignored."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {k[len(_PREFIX):]: v for k, v in config.items() if k.startswith(_PREFIX) and k[len(_PREFIX):] in fields}
        return cls(**kwargs)


@dataclass(frozen=True)
class World:
    """A built world: the data, its splits and one private index array per client."""

    spec: WorldSpec
    data: Dataset
    splits: Splits
    partitions: tuple[np.ndarray, ...]
    transfer_x: np.ndarray  # inputs of the transfer set; its labels are never used

    def private(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of client ``client``'s private shard."""
        idx = self.splits.pool[self.partitions[client]]
        return self.data.x[idx], self.data.y[idx]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of split ``test``, ``public`` or ``server``."""
        idx = getattr(self.splits, name)
        return self.data.x[idx], self.data.y[idx]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


@functools.lru_cache(maxsize=8)
def build_world(spec: WorldSpec) -> World:
    """Load, split and partition as ``spec`` says (cached per process: clients build it once)."""
    data = load_dataset(spec.dataset, spec.data_path or None, spec.data_label or None)
    rng = np.random.default_rng(spec.seed)
    splits = split_indices(data.y, spec.test_frac, spec.public_frac, spec.server_frac, rng)
    parts = partition_labels(
        data.y[splits.pool], spec.num_clients, spec.partition, alpha=spec.alpha,
        classes_per_client=spec.classes_per_client, min_size=spec.min_size, seed=spec.seed,
    )
    if spec.samples_per_client > 0:
        parts = cap_shards(parts, spec.samples_per_client, rng)
    transfer = make_transfer_set(spec.transfer, data, splits, spec.transfer_size, np.random.default_rng([spec.seed, 1]))
    return World(spec, data, splits, tuple(parts), transfer)


def cap_shards(parts: list[np.ndarray], cap: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep a seeded random ``cap`` samples of each shard that has more (data-scarcity studies)."""
    return [np.sort(rng.choice(p, cap, replace=False)) if len(p) > cap else p for p in parts]
