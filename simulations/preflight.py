"""Preflight: what a run would refuse, or could not hold, refused before Ray or any engine starts.

``preflight`` checks, in this order: the Ray address (a TCP connect with a timeout), the memory
that loading the dataset takes (from its settings alone), the memory of the whole run (with the
dataset loaded, before the world is built: ``run_memory``), then the world, the models, the
rule, privacy and attackers. Every refusal is one ConfigError naming the field.

The memory estimate is rough (within about 2×, erring high) and covers this machine's RAM:

- the dataset while it loads (``peerkd.world.data.load_bytes``), and as held (inputs, labels, a
  standardised copy of a user file's features), with the transfer set as built (Gaussian noise
  is drawn in float64; another dataset is loaded and resized to the world's inputs);
- the batched engine: its copy of the test and server splits, every student's weights twice and
  three copies of what each sends (``fleet_bytes``), and one vmapped call: ``engine.chunk``
  students (automatic chunks count as one: they size themselves to half the free memory),
  each with its weights ×10 (Adam), activations of ``2 × train.batch_size`` rows kept for the
  backward pass, and its batch plan (``student_bytes``, ``plan_bytes``);
- workers and actors on a local Ray: a process (``ACTOR_BYTES``) and a copy of the world each,
  and one call each. Flower's actor pool is ``CPUs / resources.num_cpus`` actors.

It leaves out: what the GPU holds (on CUDA, the engine's data and calls; chunks are sized to
GPU memory there), Ray clusters elsewhere (``engine.ray_address``: workers are not on this
machine), a rule's own server-side work (a teacher model, FedDF's server epochs), and other
runs of a sweep started side by side (each run is checked alone).
"""

from __future__ import annotations

import math
import os

from peerkd.batched.cohort import EVAL_ROWS
from peerkd.batched.memory import MemoryPart, check_fits, fleet_bytes, plan_bytes, student_bytes
from peerkd.cluster import check_reachable
from peerkd.errors import ConfigError, check_range
from peerkd.hooks.dpsgd import check_example_budget
from peerkd.hooks.privacy import privacy_setup
from peerkd.round.spec import RunSpec
from peerkd.student.models import build_model, check_modality, num_parameters
from peerkd.student.training import pick_device
from peerkd.wire.protocol import MSG_CLASS_DISTILL, MSG_PROTO
from peerkd.world.build import WorldSpec, build_world
from peerkd.world.data import BUILTIN_DATASETS, Dataset, load_bytes, load_dataset
from simulations.config import EngineConf

ACTOR_BYTES = 300 << 20  # a Ray worker process with torch and Flower imported: ~280 MiB resident, measured
DATA_FIELDS = {"file": "data.path", "synth": "data.size", "synthtext": "data.size"}  # else "data"


def preflight(spec: RunSpec, strategy, engine: EngineConf | None = None, resources: dict | None = None) -> None:
    """Fail fast, before Ray or any engine starts, on anything the run would refuse or could not hold.

    Parameters
    ----------
    spec : RunSpec
        World and training settings.
    strategy : DistillationStrategy
        The exchange rule.
    engine : EngineConf | None
        Where the run goes (default: the batched engine in this process).
    resources : dict | None
        The flower engine's per-client resources (``num_cpus``), which size its actor pool.
    """
    engine, w = engine or EngineConf(), spec.world
    check_reachable(engine.ray_address)
    if engine.workers:
        check_range("engine.workers", engine.workers, 1, w.num_clients)
    check_load(w)
    data = load_dataset(w.dataset, w.data_path or None, w.data_label or None, w.data_size)
    check_range("num_clients", w.num_clients, 1, len(data.y))  # at most a sample each (the partition says more)
    for name in sorted(set(spec.students)):
        check_modality(name, data.text)
    check_fits(run_memory(spec, data, engine, resources or {}, table_width=_table_width(strategy, spec, data)))
    world = build_world(w)
    strategy.check(spec.students, w.num_clients)
    if spec.privacy.enabled and spec.privacy.unit == "example":  # DP-SGD: a rule it covers, a budget shards meet
        check_example_budget(spec.privacy, spec.rounds, strategy, world, spec.epochs, spec.batch_size)
    else:  # refuses a budget no noise meets, or a rule noise cannot cover
        privacy_setup(spec.privacy, spec.rounds, strategy)
    check_attack(spec, strategy)
    strategy.check_data(world.data.text)


def _table_width(strategy, spec: RunSpec, data: Dataset) -> int:
    """The width of the per-class tables ``strategy``'s clients send, or 0 when they send transfer-set
    logits or weights: FD's rows are the classes; the prototype rules' their own
    (``FedProto.prototype_width``)."""
    kind = getattr(strategy, "message_type", None)  # FedAvg's is Flower's own strategy: weights
    if kind == MSG_CLASS_DISTILL:
        return data.num_classes
    return strategy.prototype_width(spec.students, data) if kind == MSG_PROTO else 0


def check_load(w: WorldSpec) -> None:
    """Refuse a dataset whose loading alone would not fit in memory, before it is loaded."""
    need = load_bytes(w.dataset, w.data_path or None, w.data_size)
    check_fits([MemoryPart(f"loading data={w.dataset}", DATA_FIELDS.get(w.dataset, "data"), need)])


def run_memory(
    spec: RunSpec, data: Dataset, engine: EngineConf, resources: dict, table_width: int = 0
) -> list[MemoryPart]:
    """The parts of a run's memory estimate on this machine (the module docstring says what it covers);
    ``table_width`` > 0: the rule's clients send per-class tables of that width (FD, the prototype
    rules), never transfer-set logits, so the fleet holds a ``(C, width)`` table each."""
    w, field = spec.world, DATA_FIELDS.get(spec.world.dataset, "data")
    transfer_rows = w.transfer_size or round(w.public_frac * len(data.y))
    held = MemoryPart("dataset", field, _held_bytes(data, w))
    transfer = MemoryPart(
        "transfer set", "data.transfer_size" if w.transfer_size else field, _transfer_bytes(w, data, transfer_rows)
    )
    models = {arch: build_model(arch, data.input_shape, data.num_classes, seed=0) for arch in set(spec.students)}
    logits, slots = transfer_rows * data.positions * data.num_classes, len(spec.students)
    logits = data.num_classes * table_width if table_width else logits
    fleet = sum(  # students are assigned round-robin: slot k serves clients k, k + slots, ...
        fleet_bytes(num_parameters(models[arch]), (w.num_clients - k + slots - 1) // slots, logits)
        for k, arch in enumerate(spec.students)
    )
    eval_rows = min(EVAL_ROWS, max(transfer_rows, round(w.test_frac * len(data.y)), 1))
    call = max(
        student_bytes(m, data.input_shape, 2 * spec.batch_size, eval_rows)
        + plan_bytes(max(len(data.y), transfer_rows), spec.batch_size, spec.epochs)  # a shard is at most the data
        for m in models.values()
    )
    world = MemoryPart("", max(held, transfer, key=lambda p: p.bytes).field, held.bytes + transfer.bytes)
    splits = MemoryPart("the engine's test and server splits", field, round((w.test_frac + w.server_frac) * held.bytes))
    engine_parts = _engine_parts(engine, resources, world, splits, call, w.num_clients)
    return [held, transfer, MemoryPart("students' weights and logits", "num_clients", fleet), *engine_parts]


def _engine_parts(
    engine: EngineConf, resources: dict, world: MemoryPart, splits: MemoryPart, call: int, clients: int
) -> list[MemoryPart]:
    """The engine's share: copies of the ``world`` in other processes, the batched engine's copy of
    the test and server ``splits`` (torch shares the rest with the world on CPU), ``call`` bytes
    per student training at once."""
    local = engine.ray_address in (None, "", "local")
    if engine.name == "flower":  # Flower's pool: as many actors as the CPUs hold, each with the world and a student
        actors = max(1, int((os.cpu_count() or 1) / resources.get("num_cpus", 1.0))) if local else 0
        each = ACTOR_BYTES + world.bytes + (0 if resources.get("num_gpus", 0) > 0 else call)
        fewer = "a larger resources.num_cpus (fewer actors)"
        return [MemoryPart(f"{actors} Ray actors", "resources.num_cpus", actors * each, fewer)]
    gpu, chunk = _on_gpu(engine), min(engine.chunk or 1, clients)
    field = "engine.chunk" if engine.chunk > 1 else "train.batch_size"
    at_once = f"{engine.workers} workers × {chunk}" if engine.workers else f"{chunk}"
    parts = [
        splits._replace(bytes=0 if gpu else splits.bytes),
        MemoryPart(f"{at_once} students training at once", field, 0 if gpu else max(engine.workers, 1) * chunk * call),
    ]
    if engine.workers and local:
        parts.append(
            MemoryPart(f"{engine.workers} Ray workers", "engine.workers", engine.workers * (ACTOR_BYTES + world.bytes))
        )
    return parts


def _held_bytes(data: Dataset, w: WorldSpec) -> int:
    """A loaded dataset's inputs and labels, twice for a user file's standardised features."""
    copies = 2 if w.dataset == "file" and w.standardize and data.tabular else 1
    return copies * data.x.nbytes + data.y.nbytes


def _transfer_bytes(w: WorldSpec, data: Dataset, rows: int) -> int:
    """The transfer set as built: noise is drawn and scaled in float64; another dataset is
    loaded and resized to the world's inputs (float32, three tensors at once)."""
    features = math.prod(data.input_shape)
    if w.transfer == "noise":
        return rows * features * (8 + 8 + 4)
    if w.transfer in BUILTIN_DATASETS:  # a fixed or default-sized built-in: small, and cached for build_world
        return load_bytes(w.transfer) + 3 * len(load_dataset(w.transfer).y) * features * 4
    return rows * features * data.x.itemsize


def _on_gpu(engine: EngineConf) -> bool:
    """Whether the batched engine's data and vmapped calls live on a GPU, not in this machine's RAM."""
    if engine.workers:
        return engine.worker_gpus > 0 and engine.device != "cpu"
    return pick_device(engine.device).type == "cuda"


def check_attack(spec: RunSpec, strategy) -> None:
    """Refuse attackers that leave no honest client, or with a rule whose clients send weights:
    the attack forges what a client sends of logits, probabilities or class means, so there it
    would change nothing."""
    from strategies.base import LogitDistillation

    spec.attack.check_fleet(spec.world.num_clients)
    if spec.attack.fraction > 0 and not isinstance(strategy, LogitDistillation):
        raise ConfigError(
            "attack.fraction",
            f"{strategy.name}'s clients send weights, and attacks forge logits",
            "0 with this rule, or a logit rule (peer, wml, fd, dsfl, fedmd, teacher, local)",
        )
