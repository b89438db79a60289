"""Structured configs (Hydra) and their validation: the edge where config stops.

Everything below ``to_run_spec`` / ``to_strategy`` takes plain typed arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from peerkd.batched.grid import DEVICES, STORES
from peerkd.batched.memory import MemoryPart, check_fits
from peerkd.errors import ConfigError, check_choice, check_range
from peerkd.hooks.faults import AttackSpec, FaultSpec
from peerkd.hooks.privacy import PrivacySpec
from peerkd.round.spec import RunSpec
from peerkd.student.models import AUTO, MODELS, default_student, expand_students
from peerkd.wire.codec import CODECS, Codec
from peerkd.world.build import MAX_SEED, WorldSpec
from peerkd.world.data import BUILTIN_DATASETS, check_fractions, file_fractions, is_text, load_bytes, load_dataset
from peerkd.world.partition import PARTITIONS
from peerkd.world.transfer import TRANSFER_KINDS
from strategies import RULES, build_strategy, rule_settings
from strategies.base import DistillationStrategy

# Upper bounds of sizes, far above any run here, so that a typo (an extra 000) is one line and
# not an allocation: every batch is full (a small shard is repeated to fill it), so a batch's
# memory grows with batch_size whatever the data; a batch plan holds every epoch's indices.
MAX_BATCH_SIZE = 2**20
MAX_EPOCHS = 10_000
MAX_ROWS = 10**8  # data.size, data.transfer_size, shard sizes: synth takes ~2 KB a row to generate


@dataclass
class DataConf:
    name: str = "mnist5k"  # digits | mnist5k | mnist1d | synth | file
    path: Optional[str] = None  # .npz (x, y) or .csv, with data=file
    label: str = "label"  # label column of a CSV file
    size: int = 0  # samples of a generated dataset (synth: 0 = 20,000); fleets of 10,000 clients need ~400,000
    # Split fractions; null (data=file's default): chosen by the file's size (peerkd.world.data.file_fractions)
    test_frac: Optional[float] = 0.2
    public_frac: Optional[float] = 0.1  # transfer set: inputs shared, labels never used
    server_frac: Optional[float] = 0.1  # labelled, for the central teacher only
    transfer: str = "public"  # transfer set: public | imbalanced | noise | digits | mnist5k | mnist1d
    transfer_size: int = 0  # inputs in the transfer set (0: the public split's size; text: at most 256 windows of it)
    standardize: bool = True  # data=file with flat features: z-score them with the public + server rows' mean/std


@dataclass
class PartitionConf:
    name: str = "dirichlet"  # iid | dirichlet | shard
    alpha: float = 0.3  # Dirichlet concentration
    classes_per_client: int = 2  # shard
    min_size: int = 10  # fewest private samples per client
    samples_per_client: int = 0  # cap each private shard (data-scarcity studies); 0 = no cap


def _named(cls: type) -> type:
    """A generated node type, findable by name in this module (so it pickles, e.g. to a sweep worker)."""
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


def _rule_node(name: str) -> type:
    """A config node type for rule ``name``: its ``name`` and exactly the settings its
    constructor takes, with the constructor's defaults (``peerkd run strategy=X``)."""
    fields = [(k, typ, field(default=default)) for k, (typ, default) in rule_settings(name).items()]
    title = "".join(part.capitalize() for part in name.split("_"))
    return _named(dataclasses.make_dataclass(f"{title}RuleConf", [("name", str, field(default=name)), *fields]))


RULE_NODES: dict[str, type] = {name: _rule_node(name) for name in RULES}


def _shared_rule_node() -> type:
    """Settings for commands that run several rules (compare, sweep): every key some rule takes,
    default null (each rule's own default); a set key applies to every rule that takes it."""
    keys = {k: typ for name in RULES for k, (typ, _) in rule_settings(name).items()}
    return _named(
        dataclasses.make_dataclass(
            "SharedRuleConf", [(k, Optional[typ], field(default=None)) for k, typ in keys.items()]
        )
    )


SharedRuleConf = _shared_rule_node()


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
class EngineConf:
    name: str = (
        "batched"  # batched: all students of an architecture in one vmapped model; flower: Ray, one actor per client
    )
    device: str = "auto"  # batched: auto (CUDA when visible) | cpu | cuda
    chunk: int = 0  # batched: most students per vmapped call (0: automatic)
    store: str = "auto"  # batched: where weights stay between calls: auto | device | host (streamed by chunk)
    stacked: bool = True  # batched: rounds of peer/local/teacher rules as arrays, no Message per node (false: Messages)
    ray_address: Optional[str] = None  # a running Ray cluster: auto | HOST:PORT (null: a private local Ray)
    workers: int = 0  # batched: Ray actors holding a fixed shard of students each (0: all in this process)
    worker_cpus: float = 1.0  # batched: Ray CPUs per worker (its torch threads)
    worker_gpus: float = 0.0  # batched: Ray GPUs per worker (fractions share a GPU)


ENGINES = ("batched", "flower")


def _spec_node(spec: type, name: str) -> type:
    """A config node type with ``spec``'s fields and defaults (the frozen spec validates them)."""
    import typing

    hints = typing.get_type_hints(spec)
    return _named(
        dataclasses.make_dataclass(name, [(f.name, hints[f.name], field(default=f.default)) for f in fields(spec)])
    )


FaultsConf = _spec_node(FaultSpec, "FaultsConf")  # faults.crash_prob=0.3 ... (peerkd.hooks.faults)
AttackConf = _spec_node(AttackSpec, "AttackConf")  # attack.fraction=0.2 attack.kind=wrong


@dataclass
class CodecConf:
    name: str = "fp32"  # fp32 | fp16 | int8 | topk: how logits, probabilities and targets travel (both ways)
    k: int = 3  # topk: values kept per row


@dataclass
class PrivacyConf:
    epsilon: Optional[float] = None  # target epsilon for the whole run; null: no noise
    delta: float = 1e-5
    clip: float = 1.0  # L2 bound of each released row of centred logits
    noise: str = "client"  # client: each adds all the noise; distributed: summed clients share it (peer_sum)
    release: str = "logits"  # unit=client: logits (clipped rows) or votes (noisy one-hot top-1 votes; peer, peer_sum)
    unit: str = "client"  # client: noise the released rows (a whole shard protected); example: DP-SGD (one example)


@dataclass
class RunConf:
    strategy: Any = MISSING  # one rule's node from the `strategy` group: its name and settings
    data: DataConf = field(default_factory=DataConf)
    partition: PartitionConf = field(default_factory=PartitionConf)
    train: TrainConf = field(default_factory=TrainConf)
    resources: ResourcesConf = field(default_factory=ResourcesConf)
    engine: EngineConf = field(default_factory=EngineConf)
    codec: CodecConf = field(default_factory=CodecConf)
    privacy: PrivacyConf = field(default_factory=PrivacyConf)
    num_clients: int = 10
    rounds: int = 20
    seed: int = 0
    students: list[str] = field(default_factory=lambda: [AUTO])  # assigned round-robin; auto: tlm for text, else mlp64
    out: Optional[str] = None  # results directory (default runs/<command>-<time>)
    resume: bool = False  # run: go on from the checkpoint a killed run left in out= (compare and sweep always do)
    overwrite: bool = False  # run: replace a finished run in out= made with other settings (else it is refused)
    round_timeout: float = 600.0
    measure_agreement: bool = True  # per-round peer agreement; may add measurement-only logits
    participation: float = 1.0  # fraction of clients training each round (a seeded sample, the same for every rule)
    clients_per_round: int = 0  # or this many clients per round (0: from participation)
    faults: FaultsConf = field(default_factory=FaultsConf)  # injected faults, seeded (peerkd.hooks.faults)
    attack: AttackConf = field(default_factory=AttackConf)  # attacking clients, seeded
    verbose: bool = False
    quiet: bool = False  # no progress bars (they show only on a terminal anyway)


@dataclass
class CompareConf(RunConf):
    strategy: Any = field(default_factory=SharedRuleConf)  # settings for every rule in `rules` that takes them
    rules: list[str] = field(default_factory=lambda: ["local", "fedavg", "teacher", "peer"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pair: list[str] = field(
        default_factory=lambda: ["peer", "teacher"]
    )  # the report's headline paired difference: first - second


@dataclass
class SweepConf(CompareConf):
    grid: list[str] = field(default_factory=list)  # Hydra sweep overrides: "num_clients=2,4,8,16"
    parallel: int = 0  # runs at once (1: in this process; 0: one per CPU core, at most 4)
    report: bool = True  # write report.md and plots when the sweep ends
    skip_unfit: bool = False  # leave out (and list) the runs whose rule refuses a point (e.g. peer at 1 client)


@dataclass
class BenchConf(RunConf):
    sizes: list[int] = field(default_factory=lambda: [10, 100])  # fleet sizes (clients = students)
    variants: list[str] = field(default_factory=lambda: ["loop", "flower", "batched"])  # loop: train_model per client


SCHEMAS: dict[str, type] = {
    "run_schema": RunConf,
    "compare_schema": CompareConf,
    "sweep_schema": SweepConf,
    "bench_schema": BenchConf,
}


def schema_fields(schema: str) -> list[str]:
    """The keys of a config node type by its name (``RunConf``, ``DataConf``, ...), for errors."""
    import dataclasses

    cls = {c.__name__: c for c in _node_types()}.get(schema)
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def _node_types() -> list[type]:
    return [
        *SCHEMAS.values(),
        DataConf,
        PartitionConf,
        TrainConf,
        ResourcesConf,
        EngineConf,
        CodecConf,
        PrivacyConf,
        FaultsConf,
        AttackConf,
        SharedRuleConf,
        *RULE_NODES.values(),
    ]


GROUPS: dict[str, dict[str, Any]] = {  # config group -> option name -> its node
    "strategy": {name: node() for name, node in RULE_NODES.items()},
    "data": {
        **{name: DataConf(name=name) for name in BUILTIN_DATASETS},
        "file": DataConf(name="file", test_frac=None, public_frac=None, server_frac=None),
    },
    "partition": {name: PartitionConf(name=name) for name in PARTITIONS},
    "codec": {name: CodecConf(name=name) for name in CODECS},
}


def register() -> None:
    """Put the schemas and every group option into Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    for group, options in GROUPS.items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)


def to_run_spec(cfg: Any, seed: int | None = None) -> RunSpec:
    """Validate a composed config and turn it into a plain RunSpec."""
    d, p, t = cfg.data, cfg.partition, cfg.train
    check_range("num_clients", cfg.num_clients, 1)
    check_range("rounds", cfg.rounds, 1)
    check_range("train.epochs", t.epochs, 1, MAX_EPOCHS)
    check_range("train.lr", t.lr, 0.0, 10.0, low_open=True)
    check_range("train.batch_size", t.batch_size, 1, MAX_BATCH_SIZE)
    check_range("round_timeout", cfg.round_timeout, 0.0, low_open=True)
    if (rules := getattr(cfg, "rules", None)) is not None:  # compare, sweep: one settings node for several rules
        check_shared_settings(cfg.strategy, list(rules))
    students = expand_students(list(cfg.students), cfg.num_clients)
    if not students:
        raise ConfigError("students", "needs at least one model", (AUTO, *MODELS))
    students = tuple(default_student(is_text(d.name, d.path)) if s == AUTO else s for s in students)
    check_choice("data", d.name, GROUPS["data"])
    for key in ("size", "transfer_size"):
        check_range(f"data.{key}", getattr(d, key), 0, MAX_ROWS)
    check_range("partition.min_size", p.min_size, 1, MAX_ROWS)
    check_range("partition.samples_per_client", p.samples_per_client, 0, MAX_ROWS)
    test_frac, public_frac, server_frac = _fractions(d)
    check_fractions(test_frac, public_frac, server_frac)
    world = WorldSpec(
        dataset=d.name,
        data_path=d.path or "",
        data_label=d.label,
        data_size=int(d.size),
        test_frac=test_frac,
        public_frac=public_frac,
        server_frac=server_frac,
        transfer=check_choice("data.transfer", d.transfer, TRANSFER_KINDS),
        transfer_size=int(d.transfer_size),
        partition=p.name,
        partition_alpha=p.alpha,
        classes_per_client=p.classes_per_client,
        min_size=p.min_size,
        samples_per_client=int(p.samples_per_client),
        num_clients=cfg.num_clients,
        seed=check_seed(cfg.seed if seed is None else seed),
        standardize=bool(d.standardize),
    )
    return RunSpec(
        world=world,
        rounds=cfg.rounds,
        students=students,
        epochs=t.epochs,
        lr=t.lr,
        batch_size=t.batch_size,
        round_timeout=cfg.round_timeout,
        measure_agreement=cfg.measure_agreement,
        clients_per_round=clients_per_round(cfg.participation, cfg.clients_per_round, cfg.num_clients),
        codec=Codec(cfg.codec.name, cfg.codec.k),
        privacy=PrivacySpec(**_as_dict(cfg.privacy)),
        faults=FaultSpec(**_as_dict(cfg.faults)),
        attack=AttackSpec(**_as_dict(cfg.attack)),
    )


def check_seed(seed: int) -> int:
    """``seed`` if it is an integer in ``0..MAX_SEED``, else ConfigError naming ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError("seed", f"{seed!r} is out of range", f"an integer in 0..{MAX_SEED}")
    return seed


def _fractions(d: Any) -> tuple[float, float, float]:
    """The split fractions; unset (null) ones of a user file chosen by its size and classes."""
    given = (d.test_frac, d.public_frac, d.server_frac)
    if None not in given:
        return given
    if d.name != "file":
        field = ("data.test_frac", "data.public_frac", "data.server_frac")[given.index(None)]
        raise ConfigError(
            field, f"is null; only data=file chooses fractions by size, not data={d.name}", "a number in [0, 1)"
        )
    check_fits([MemoryPart("loading data.path", "data.path", load_bytes("file", d.path))])
    data = load_dataset("file", d.path, d.label)
    return file_fractions(*given, len(data.y), data.num_classes)


def clients_per_round(participation: float, per_round: int, num_clients: int) -> int:
    """Validated clients per round (0: all) from ``participation`` or ``clients_per_round``."""
    check_range("participation", participation, 0.0, 1.0, low_open=True)
    check_range("clients_per_round", per_round, 0, num_clients)
    if per_round:
        if participation < 1.0:
            raise ConfigError("clients_per_round", "set together with participation", "one of the two")
        return 0 if per_round == num_clients else int(per_round)
    return 0 if participation == 1.0 else max(1, round(participation * num_clients))


def check_engine(e: Any) -> EngineConf:
    """The validated engine settings, as a plain EngineConf."""
    e = e if isinstance(e, EngineConf) else EngineConf(**_as_dict(e))
    check_choice("engine.name", e.name, ENGINES)
    check_choice("engine.device", e.device, DEVICES)
    check_range("engine.chunk", e.chunk, 0)
    check_choice("engine.store", e.store, STORES)
    if e.store != "auto" and (e.name != "batched" or e.workers):
        raise ConfigError("engine.store", f"{e.store} with the {e.name} engine and {e.workers} workers",
                          "auto, or the in-process batched engine (engine.name=batched, engine.workers=0)")  # fmt: skip
    if e.name == "flower" and e.device != "auto":
        raise ConfigError("engine.device", "the flower engine places clients by resources.num_gpus", "auto")
    _check_workers(e)
    if e.device == "cuda" and not e.workers:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("engine.device", "cuda asked for, but no CUDA device is visible", "auto, cpu")
    return e


def _check_workers(e: EngineConf) -> None:
    """The cluster settings: workers only for the batched engine, a cluster only where Ray runs."""
    check_range("engine.workers", e.workers, 0)
    check_range("engine.worker_cpus", e.worker_cpus, 0.0, low_open=True)
    check_range("engine.worker_gpus", e.worker_gpus, 0.0)
    if e.workers and e.name != "batched":
        raise ConfigError("engine.workers", "shards the batched engine; flower places clients by resources", "0")
    if e.ray_address is not None and e.name == "batched" and not e.workers:
        raise ConfigError(
            "engine.ray_address", "is set, but engine.workers=0 runs the batched engine in this process", "workers >= 1"
        )
    if e.workers and e.device == "cuda" and not e.worker_gpus:
        raise ConfigError(
            "engine.worker_gpus", "0 with engine.device=cuda: a worker sees a GPU only if given one", "> 0"
        )


def to_strategy(s: Any, rule: str | None = None) -> DistillationStrategy:
    """Instantiate the rule of a ``strategy`` node (``rule`` overrides its name).

    A one-rule node (``peerkd run``) gives all its settings, and the rule's constructor
    validates them. A shared node (compare, sweep) gives each rule the keys it takes that
    are set; ``check_shared_settings`` refuses keys that no rule of the run takes.
    """
    values = {k: v for k, v in _as_dict(s).items() if v is not None}
    name = check_choice("strategy", rule or values.get("name", ""), RULES)
    values.pop("name", None)
    if rule is not None and "name" not in _as_dict(s):  # a shared node: each rule takes its own keys
        values = {k: v for k, v in values.items() if k in rule_settings(name)}
    return build_strategy(name, **values)


def check_shared_settings(s: Any, rules: list[str]) -> None:
    """Refuse a shared-node setting that none of ``rules`` takes (it would silently do nothing)."""
    takes = {k for rule in rules for k in rule_settings(check_choice("strategy", rule, RULES))}
    for key, value in _as_dict(s).items():
        if value is not None and key not in takes:
            raise ConfigError(f"strategy.{key}", f"no rule of {list(rules)} takes it", sorted(takes) or "none")


def _as_dict(node: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def check_resources(r: ResourcesConf) -> dict[str, float]:
    """Validated client resources for Flower's simulation backend."""
    check_range("resources.num_cpus", r.num_cpus, 0.0, low_open=True)
    check_range("resources.num_gpus", r.num_gpus, 0.0)
    if r.num_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "resources.num_gpus", f"{r.num_gpus:g} asked for, but no CUDA device is visible", "0 on this machine"
            )
    return {"num_cpus": float(r.num_cpus), "num_gpus": float(r.num_gpus)}


def check_overrides(cfg: Any, overrides: list[str]) -> None:
    """Refuse what Hydra would take silently: keys that no schema has, added with ``+`` (nothing
    would read them), and a number or string given for a boolean setting (OmegaConf reads 2 as true)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if extra := unknown_keys(cfg):
        what = "not a setting" if len(extra) == 1 else "not settings"
        raise ConfigError(", ".join(extra), f"{what} (added with +, nothing would read it)", "the keys --cfg job lists")
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override() or o.is_delete() or (value := o.value()) is None or isinstance(value, bool):
            continue
        if isinstance(OmegaConf.select(cfg, o.key_or_group, default=None), bool):
            raise ConfigError(o.key_or_group, f"{value!r} is not a boolean", "true, false")


def unknown_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` that its nodes' schemas (dataclasses) do not declare."""
    from omegaconf import DictConfig, OmegaConf

    cls = OmegaConf.get_type(cfg)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    out = []
    for key in cfg.keys():
        node = cfg._get_node(key)
        if known is not None and key not in known:
            out.append(f"{prefix}{key}")
        elif isinstance(node, DictConfig):
            out += unknown_keys(node, f"{prefix}{key}.")
    return out
