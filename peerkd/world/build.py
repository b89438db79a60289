"""The world: one dataset, its seeded splits and the partition of its private pool.

Server and clients each build the world from the same ``WorldSpec`` (it travels in every
message's ConfigRecord), so nothing but logits or weights ever crosses the wire, and every
rule run with the same spec and seed sees the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerkd.errors import ConfigError
from peerkd.world.data import (
    MIN_ROWS_PER_CLASS,
    MIN_TEST_ROWS,
    Dataset,
    Scaler,
    Splits,
    _read_csv,
    _read_npz,
    fit_scaler,
    load_dataset,
    split_indices,
)
from peerkd.world.partition import partition_labels
from peerkd.world.transfer import make_transfer_set

log = logging.getLogger("peerkd")
_PREFIX = "world."
CACHE_ENV = "PEERKD_WORLD_CACHE"  # a directory: built worlds are kept there as .npz (deployed nodes)


# Seeds run 0..2**32-1 (numpy's legacy range): the largest derived seed, a client's batch order
# (``training.round_seed``: seed * 1,000,003 + ...), then stays within the int64 that Flower's
# ConfigRecord carries and torch's generator takes.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class WorldSpec:
    """Everything that fixes the data each client and the server see."""

    dataset: str = "mnist5k"
    data_path: str = ""
    data_label: str = "label"
    data_size: int = 0  # samples of a generated dataset (synth); 0: its default
    test_frac: float = 0.2
    public_frac: float = 0.1
    server_frac: float = 0.1
    transfer: str = "public"  # public | imbalanced | noise | another built-in dataset
    transfer_size: int = 0  # 0: the public split's size
    partition: str = "dirichlet"
    partition_alpha: float = 0.3  # Dirichlet concentration (not the KD weight, which is a rule setting)
    classes_per_client: int = 2
    min_size: int = 10
    samples_per_client: int = 0  # cap each private shard at this many samples (0: no cap)
    num_clients: int = 10
    seed: int = 0
    standardize: bool = True  # a user file's flat features: z-scored with the public + server rows' statistics

    def to_config(self) -> dict[str, int | float | str]:
        """Flat ``world.*`` entries for a Flower ConfigRecord."""
        return {_PREFIX + k: v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> WorldSpec:
        """Inverse of ``to_config``; other keys are ignored."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {
            k[len(_PREFIX) :]: v for k, v in config.items() if k.startswith(_PREFIX) and k[len(_PREFIX) :] in fields
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class World:
    """A built world: the data, its splits and one private index array per client."""

    spec: WorldSpec
    data: Dataset
    splits: Splits
    partitions: tuple[np.ndarray, ...]
    transfer_x: np.ndarray  # inputs of the transfer set; its labels are never used
    scaler: Scaler | None = None  # what standardised ``data.x`` (None: inputs as loaded)

    def private(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of client ``client``'s private shard."""
        idx = self.private_index(client)
        return self.data.x[idx], self.data.y[idx]

    def private_index(self, client: int) -> np.ndarray:
        """Rows of the dataset in client ``client``'s private shard."""
        return self.splits.pool[self.partitions[client]]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of split ``test``, ``public`` or ``server``."""
        idx = getattr(self.splits, name)
        return self.data.x[idx], self.data.y[idx]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def transfer_rows(self) -> int:
        """Rows of a transfer-set logit matrix: inputs × predictions per input (text: positions)."""
        return len(self.transfer_x) * self.data.positions


@functools.lru_cache(maxsize=8)
def build_world(spec: WorldSpec) -> World:
    """Load, split and partition as ``spec`` says (cached per process: clients build it once).

    With ``$PEERKD_WORLD_CACHE`` set to a directory, the built world is also kept there
    as an .npz and read back by later processes: on a deployed SuperNode every message
    starts a fresh ClientApp process, and rebuilding (dataset load, partitioner imports)
    would otherwise cost seconds per message.
    """
    cache_dir = os.environ.get(CACHE_ENV)
    if not cache_dir:
        return _build_world(spec)
    path = Path(cache_dir) / f"world-{spec_key(spec)}.npz"
    if path.is_file():
        try:
            return load_world(path, spec)
        except (OSError, ValueError, KeyError):
            pass  # a damaged or foreign file: rebuild and overwrite it
    world = _build_world(spec)
    save_world(world, path)
    return world


def _build_world(spec: WorldSpec) -> World:
    data = load_dataset(spec.dataset, spec.data_path or None, spec.data_label or None, spec.data_size)
    rng = np.random.default_rng(spec.seed)
    splits = split_indices(data.strata, spec.test_frac, spec.public_frac, spec.server_frac, rng)
    if len(splits.test) == 0:  # every accuracy would be measured on nothing
        raise ConfigError(
            "data.test_frac",
            f"{spec.test_frac:g} of {len(data.y)} rows ({data.num_classes} classes, split per class) leaves the test "
            "split empty",
            "a fraction that gives each class at least one test row",
        )
    scaler = world_scaler(data, splits) if spec.standardize and spec.dataset == "file" and data.tabular else None
    if scaler is not None:
        data = dataclasses.replace(data, x=scaler.apply(data.x))
    parts = partition_labels(
        data.strata[splits.pool],
        spec.num_clients,
        spec.partition,
        alpha=spec.partition_alpha,
        classes_per_client=spec.classes_per_client,
        min_size=spec.min_size,
        seed=spec.seed,
    )
    if spec.samples_per_client > 0:
        parts = cap_shards(parts, spec.samples_per_client, rng)
    transfer = make_transfer_set(spec.transfer, data, splits, spec.transfer_size, np.random.default_rng([spec.seed, 1]))
    return World(spec, data, splits, tuple(parts), transfer, scaler)


def world_scaler(data: Dataset, splits: Splits) -> Scaler:
    """Feature statistics from the rows the server may hold: the public split (inputs every
    client receives anyway) and the server split (the server's own). Never the test split
    (that would leak the evaluation data into training) and never the clients' private rows
    (no party holds them together). With neither split (both fractions 0), the private pool
    stands in, with a warning: in a deployment that would be a federated mean and variance."""
    rows = np.concatenate([splits.public, splits.server])
    if len(rows) >= 2:
        return fit_scaler(data.x, rows, "public+server")
    log.warning(
        "data.standardize: no public or server rows; standardising with the private pool's statistics, "
        "which a real federation would have to aggregate from the clients"
    )
    return fit_scaler(data.x, splits.pool, "pool")


def split_report(world: World) -> list[str]:
    """Lines that say what became of a dataset's rows: the size of every split, the private rows
    of each client, and how the inputs were scaled."""
    d, sp, spec = world.data, world.splits, world.spec
    private = [len(p) for p in world.partitions]
    shown = ", ".join(map(str, private[:12])) + (", ..." if len(private) > 12 else "")
    lines = [
        f"{d.name}: {len(d.y)} rows, input shape {d.input_shape}, {d.num_classes} classes; splits of seed {spec.seed}:",
        f"  test      {len(sp.test):6d} rows    held out: accuracy is measured here, never trained on",
        f"  transfer  {len(world.transfer_x):6d} inputs  data.transfer={spec.transfer}: what students distill on; "
        "labels unused",
        f"  server    {len(sp.server):6d} rows    labelled; trains the teacher model (teacher rules) only",
        f"  private   {len(sp.pool):6d} rows    over {len(private)} clients: {shown}",
    ]
    if world.scaler is not None:
        lines.append(
            f"  features standardised with the mean and std of the {world.scaler.rows} {world.scaler.source} "
            "rows (data.standardize=false: raw)"
        )
    elif d.tabular and spec.dataset == "file":
        lines.append("  features used raw (data.standardize=false)")
    return lines


def split_warnings(world: World) -> list[str]:
    """A warning for each split too small to mean much (thresholds in ``peerkd.world.data``)."""
    c, sp = world.num_classes, world.splits
    out = []
    if 0 < len(sp.test) < MIN_TEST_ROWS:
        out.append(
            f"the test split has {len(sp.test)} rows (< {MIN_TEST_ROWS}): one accuracy on it has a 95% interval "
            f"of about ±{1 / np.sqrt(len(sp.test)):.2f}; compare rules over several seeds"
        )
    per_input = world.data.positions  # text: a window predicts one token per position
    if 0 < len(world.transfer_x) * per_input < MIN_ROWS_PER_CLASS * c:
        out.append(
            f"the transfer set has {len(world.transfer_x)} inputs (< {MIN_ROWS_PER_CLASS} per class = "
            f"{MIN_ROWS_PER_CLASS * c}): distillation rules have little to agree on"
        )
    if 0 < len(sp.server) * per_input < MIN_ROWS_PER_CLASS * c:
        out.append(
            f"the server split has {len(sp.server)} rows (< {MIN_ROWS_PER_CLASS} per class = "
            f"{MIN_ROWS_PER_CLASS * c}): the teacher model learns from very few labels"
        )
    small = [i for i, p in enumerate(world.partitions) if len(p) * per_input < MIN_ROWS_PER_CLASS * c]
    if small:
        out.append(
            f"{len(small)} of {len(world.partitions)} clients hold fewer than {MIN_ROWS_PER_CLASS * c} "
            f"private rows ({MIN_ROWS_PER_CLASS} per class): alone they learn little"
        )
    return out


def cap_shards(parts: list[np.ndarray], cap: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep a seeded random ``cap`` samples of each shard that has more (data-scarcity studies)."""
    return [np.sort(rng.choice(p, cap, replace=False)) if len(p) > cap else p for p in parts]


def spec_key(spec: WorldSpec) -> str:
    """A short stable hash of ``spec`` (the on-disk cache key)."""
    text = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_world(world: World, path: Path) -> None:
    """Write ``world``'s arrays to ``path`` (.npz, no pickle), atomically."""
    d, sp = world.data, world.splits
    sizes = np.array([len(p) for p in world.partitions], dtype=np.int64)
    parts = np.concatenate(world.partitions) if world.partitions else np.zeros(0, np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        x=d.x,
        y=d.y,
        name=np.array(d.name),
        class_names=np.array(d.class_names, dtype=str),
        num_classes=np.array(d.num_classes),
        test=sp.test,
        public=sp.public,
        server=sp.server,
        pool=sp.pool,
        part_sizes=sizes,
        parts=parts,
        transfer_x=world.transfer_x,
        groups=d.groups if d.groups is not None else np.zeros(0, np.int64),
        has_groups=np.array(d.groups is not None),
        key=np.array(spec_key(world.spec)),
        **_scaler_arrays(world.scaler),
    )
    os.replace(tmp, path)


def load_world(path: Path, spec: WorldSpec) -> World:
    """Read a world written by ``save_world`` for ``spec``; ValueError if it is for another spec."""
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != spec_key(spec):
            raise ValueError(f"{path} holds another world")
        groups = f["groups"] if "has_groups" in f.files and bool(f["has_groups"]) else None
        names = tuple(str(c) for c in f["class_names"])
        data = Dataset(str(f["name"]), f["x"], f["y"], int(f["num_classes"]), names, groups)
        splits = Splits(f["test"], f["public"], f["server"], f["pool"])
        parts = tuple(np.split(f["parts"], np.cumsum(f["part_sizes"])[:-1])) if len(f["part_sizes"]) else ()
        rows = int(f["scale_rows"])
        scaler = Scaler(f["scale_mean"], f["scale_std"], rows, str(f["scale_source"])) if rows else None
        return World(spec, data, splits, parts, f["transfer_x"], scaler)


def _scaler_arrays(scaler: Scaler | None) -> dict[str, np.ndarray]:
    if scaler is None:
        return {
            "scale_mean": np.zeros(0, np.float32),
            "scale_std": np.zeros(0, np.float32),
            "scale_rows": np.array(0),
            "scale_source": np.array(""),
        }
    return {
        "scale_mean": scaler.mean,
        "scale_std": scaler.std,
        "scale_rows": np.array(scaler.rows),
        "scale_source": np.array(scaler.source),
    }


def load_node_data(
    path: str, label: str, input_shape: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A device's own private data (.npz ``x``/``y`` or .csv) checked against the world.

    Labels must already be the world's class indices ``0..C-1`` (a device may hold only
    some classes, so they are not re-encoded).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("data-path", f"no such file on this node: {path!r}")
    if p.suffix not in (".npz", ".csv"):
        raise ConfigError("data-path", f"{path!r} must be a .npz or .csv file")
    x, y = _read_npz(p) if p.suffix == ".npz" else _read_csv(p, label)
    x = x.astype(np.float32).reshape(len(x), *input_shape) if x.size == len(x) * int(np.prod(input_shape)) else x
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            "data-path", f"inputs of shape {tuple(x.shape[1:])} in {path!r}; the world's are {tuple(input_shape)}"
        )
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError("data-path", f"{len(x)} inputs and {len(y)} labels in {path!r}")
    if y.dtype.kind not in "iu" and not np.all(np.mod(y.astype(float), 1) == 0):
        raise ConfigError("data-path", f"labels in {path!r} must be class indices 0..{num_classes - 1}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError("data-path", f"labels in {path!r} outside 0..{num_classes - 1}")
    return x, y
