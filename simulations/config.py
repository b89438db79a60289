"""Structured configs (Hydra) and their validation: the edge where config stops.

Everything below ``to_run_spec`` / ``to_strategy`` takes plain typed arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from peerkd.data import BUILTIN_DATASETS
from peerkd.errors import ConfigError, check_choice, check_range
from peerkd.models import MODELS
from peerkd.partition import PARTITIONS
from peerkd.server_app import RunSpec
from peerkd.transfer import TRANSFER_KINDS
from peerkd.world import WorldSpec
from strategies import RULES, build_strategy
from strategies.base import DistillationStrategy


@dataclass
class DataConf:
    name: str = "mnist5k"  # digits | mnist5k | mnist1d | file
    path: Optional[str] = None  # .npz (x, y) or .csv, with data=file
    label: str = "label"  # label column of a CSV file
    test_frac: float = 0.2
    public_frac: float = 0.1  # transfer set: inputs shared, labels never used
    server_frac: float = 0.1  # labelled, for the central teacher only
    transfer: str = "public"  # transfer set: public | imbalanced | noise | digits | mnist5k | mnist1d
    transfer_size: int = 0  # inputs in the transfer set (0: the public split's size)


@dataclass
class PartitionConf:
    name: str = "dirichlet"  # iid | dirichlet | shard
    alpha: float = 0.3  # Dirichlet concentration
    classes_per_client: int = 2  # shard
    min_size: int = 10  # fewest private samples per client
    samples_per_client: int = 0  # cap each private shard (data-scarcity studies); 0 = no cap


@dataclass
class StrategyConf:
    name: str = "peer"  # see strategies.RULES
    alpha: float = 1.0  # weight of the KD term
    temperature: float = 4.0  # KD temperature T (loss scaled by T^2); dsfl uses 1
    teacher: str = "auto"  # teacher model (auto: cnn_large for images, mlp256x2 for flat data)
    teacher_epochs: int = 30
    teacher_members: int = 3  # teacher_ensemble: teachers averaged
    weight_lr: float = 1.0  # wml: mirror-descent step size on the peer weights
    weight_steps: int = 5  # wml: mirror-descent steps per round
    era_temperature: float = 0.1  # dsfl: ERA sharpening temperature
    digest_epochs: int = 2  # dsfl, fedmd: epochs fitting the targets on the transfer set
    server_epochs: int = 2  # feddf: server distillation epochs per round


@dataclass
class TrainConf:
    epochs: int = 2  # local epochs per round
    lr: float = 1e-3  # Adam
    batch_size: int = 32


@dataclass
class ResourcesConf:
    num_cpus: float = 1.0  # per client actor
    num_gpus: float = 0.0  # per client actor; fractions pack several clients on one GPU


@dataclass
class RunConf:
    strategy: StrategyConf = field(default_factory=StrategyConf)
    data: DataConf = field(default_factory=DataConf)
    partition: PartitionConf = field(default_factory=PartitionConf)
    train: TrainConf = field(default_factory=TrainConf)
    resources: ResourcesConf = field(default_factory=ResourcesConf)
    num_clients: int = 10
    rounds: int = 20
    seed: int = 0
    students: list[str] = field(default_factory=lambda: ["mlp64"])  # assigned round-robin
    out: Optional[str] = None  # results directory (default runs/<command>-<time>)
    round_timeout: float = 600.0
    measure_agreement: bool = True  # per-round peer agreement; may add measurement-only logits
    verbose: bool = False


@dataclass
class CompareConf(RunConf):
    rules: list[str] = field(default_factory=lambda: ["local", "fedavg", "teacher", "peer"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pair: list[str] = field(default_factory=lambda: ["peer", "teacher"])  # the report's headline paired difference: first - second


@dataclass
class SweepConf(CompareConf):
    grid: list[str] = field(default_factory=list)  # Hydra sweep overrides: "num_clients=2,4,8,16"
    parallel: int = 0  # runs at once (1: in this process; 0: one per CPU core, at most 4)
    report: bool = True  # write report.md and plots when the sweep ends


SCHEMAS: dict[str, type] = {"run_schema": RunConf, "compare_schema": CompareConf, "sweep_schema": SweepConf}


def schema_fields(schema: str) -> list[str]:
    """The keys of a config node type by its name (``RunConf``, ``DataConf``, ...), for errors."""
    import dataclasses

    cls = {c.__name__: c for c in _node_types()}.get(schema)
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def _node_types() -> list[type]:
    return [*SCHEMAS.values(), DataConf, PartitionConf, TrainConf, ResourcesConf, StrategyConf]


GROUPS: dict[str, tuple[type, dict[str, dict[str, Any]]]] = {
    "strategy": (StrategyConf, {name: {"name": name} for name in RULES}),
    "data": (DataConf, {name: {"name": name} for name in (*BUILTIN_DATASETS, "file")}),
    "partition": (PartitionConf, {name: {"name": name} for name in PARTITIONS}),
}


def register() -> None:
    """Put the schemas and every group option into Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    for group, (schema, options) in GROUPS.items():
        for name, values in options.items():
            cs.store(group=group, name=name, node=schema(**values))


def to_run_spec(cfg: Any, seed: int | None = None) -> RunSpec:
    """Validate a composed config and turn it into a plain RunSpec."""
    d, p, t = cfg.data, cfg.partition, cfg.train
    check_range("num_clients", cfg.num_clients, 1)
    check_range("rounds", cfg.rounds, 1)
    check_range("train.epochs", t.epochs, 1)
    check_range("train.lr", t.lr, 0.0, 10.0, low_open=True)
    check_range("train.batch_size", t.batch_size, 1)
    check_range("round_timeout", cfg.round_timeout, 0.0, low_open=True)
    students = tuple(check_choice("students", s, MODELS) for s in cfg.students)
    if not students:
        raise ConfigError("students", "needs at least one model", MODELS)
    check_choice("data", d.name, GROUPS["data"][1])
    world = WorldSpec(
        dataset=d.name, data_path=d.path or "", data_label=d.label, test_frac=d.test_frac,
        public_frac=d.public_frac, server_frac=d.server_frac, transfer=check_choice("data.transfer", d.transfer, TRANSFER_KINDS),
        transfer_size=int(check_range("data.transfer_size", d.transfer_size, 0)), partition=p.name, partition_alpha=p.alpha,
        classes_per_client=p.classes_per_client, min_size=p.min_size,
        samples_per_client=int(check_range("partition.samples_per_client", p.samples_per_client, 0)),
        num_clients=cfg.num_clients, seed=cfg.seed if seed is None else seed,
    )
    return RunSpec(world=world, rounds=cfg.rounds, students=students, epochs=t.epochs, lr=t.lr,
                   batch_size=t.batch_size, round_timeout=cfg.round_timeout, measure_agreement=cfg.measure_agreement)


def to_strategy(s: StrategyConf, rule: str | None = None) -> DistillationStrategy:
    """Validate strategy settings and instantiate the rule (``rule`` overrides ``s.name``)."""
    name = check_choice("strategy", rule or s.name, RULES)
    check_range("strategy.alpha", s.alpha, 0.0, 100.0)
    check_range("strategy.temperature", s.temperature, 0.0, 100.0, low_open=True)
    check_choice("strategy.teacher", s.teacher, ("auto", *MODELS))
    check_range("strategy.teacher_epochs", s.teacher_epochs, 1)
    check_range("strategy.teacher_members", s.teacher_members, 1)
    check_range("strategy.weight_lr", s.weight_lr, 0.0)
    check_range("strategy.weight_steps", s.weight_steps, 0)
    check_range("strategy.era_temperature", s.era_temperature, 0.0, low_open=True)
    check_range("strategy.digest_epochs", s.digest_epochs, 0)
    check_range("strategy.server_epochs", s.server_epochs, 0)
    return build_strategy(
        name, alpha=s.alpha, temperature=s.temperature, model=s.teacher, epochs=s.teacher_epochs, members=s.teacher_members,
        weight_lr=s.weight_lr, weight_steps=s.weight_steps, era_temperature=s.era_temperature,
        digest_epochs=s.digest_epochs, server_epochs=s.server_epochs,
    )


def check_resources(r: ResourcesConf) -> dict[str, float]:
    """Validated client resources for Flower's simulation backend."""
    check_range("resources.num_cpus", r.num_cpus, 0.0, low_open=True)
    check_range("resources.num_gpus", r.num_gpus, 0.0)
    if r.num_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("resources.num_gpus", f"{r.num_gpus:g} asked for, but no CUDA device is visible", "0 on this machine")
    return {"num_cpus": float(r.num_cpus), "num_gpus": float(r.num_gpus)}
