"""Preflight's memory estimate, worked out by hand on digits, and its refusals before anything loads."""

import os

import pytest

from peerkd.errors import ConfigError
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec
from peerkd.world.data import load_dataset
from simulations import preflight as pf
from simulations.config import EngineConf
from strategies import build_strategy

# digits, 10 clients of mlp64, the default splits (0.2 / 0.1 / 0.1), batches of 32, 2 epochs:
DATASET = 1797 * 64 * 4 + 1797 * 8  # float32 pixels, int64 labels: 474,408
TRANSFER = 180 * 64 * 4  # the public split, round(0.1 × 1797) = 180 inputs: 46,080
PARAMS = (64 * 64 + 64) + (64 * 10 + 10)  # mlp64 on 64 inputs: 4,810
FLEET = 4 * 10 * (2 * PARAMS + 3 * 180 * 10)  # 10 students, 1,800 logits each: 600,800
SPLITS = round(0.3 * DATASET)  # the batched engine's test + server copies: 142,322
# One student in a call (student_bytes): weights ×10; 64 training rows of 64 inputs + 3 × 202 outputs
# (Flatten 64, Linear 64, ReLU 64, Linear 10); 359 test rows (round(0.2 × 1797)) of 202 outputs.
STUDENT = 4 * (10 * PARAMS + 64 * (64 + 3 * 202) + 359 * 202)  # 653,992
PLAN = 4 * 8 * 2 * 57 * 32  # 57 batches of 32 over 1,797 rows, 2 epochs: 116,736


def digits_spec(**kw) -> RunSpec:
    return RunSpec(world=WorldSpec(dataset="digits", num_clients=10, **kw), rounds=1)


def parts(spec: RunSpec, engine: EngineConf, resources: dict | None = None) -> dict[str, int]:
    data = load_dataset(spec.world.dataset)
    return {p.what: p.bytes for p in pf.run_memory(spec, data, engine, resources or {})}


def test_the_batched_estimate_by_hand():
    # Execute: 4 students per vmapped call.
    got = parts(digits_spec(), EngineConf(device="cpu", chunk=4))
    # Assert
    assert got == {
        "dataset": DATASET,
        "transfer set": TRANSFER,
        "students' weights and logits": FLEET,
        "the engine's test and server splits": SPLITS,
        "4 students training at once": 4 * (STUDENT + PLAN),
    }


def test_class_table_rules_hold_a_table_per_student_not_transfer_logits():
    # Prepare: FD sends a (10, 10) table of class means; FedProto (proto_dim 0) mlp64's 64-wide embeddings.
    spec, data = digits_spec(), load_dataset("digits")
    fd, proto = build_strategy("fd"), build_strategy("fedproto")
    # Execute
    widths = (
        pf._table_width(fd, spec, data),
        pf._table_width(proto, spec, data),
        pf._table_width(build_strategy("peer"), spec, data),
    )
    got = {p.what: p.bytes for p in pf.run_memory(spec, data, EngineConf(device="cpu", chunk=4), {}, widths[0])}
    # Assert: 10 students, each 2 copies of its weights and 3 of a 10 x 10 table
    assert widths == (10, 64, 0) and pf._table_width(build_strategy("fedavg"), spec, data) == 0
    assert got["students' weights and logits"] == 4 * 10 * (2 * PARAMS + 3 * 10 * 10)


def test_the_flower_estimate_counts_its_actor_pool(monkeypatch):
    # Prepare: 4 CPUs, half a CPU per client: Flower starts 8 actors, each a process with the world and a student.
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    # Execute
    got = parts(digits_spec(), EngineConf(name="flower"), {"num_cpus": 0.5})
    # Assert
    assert got["8 Ray actors"] == 8 * (pf.ACTOR_BYTES + DATASET + TRANSFER + STUDENT + PLAN)


def test_noise_is_drawn_in_float64():
    # 1,000 noise inputs of 64 features: float64 draws, their scaled float64 copy, float32: 20 bytes a value.
    got = parts(digits_spec(transfer="noise", transfer_size=1000), EngineConf(device="cpu"))
    assert got["transfer set"] == 1000 * 64 * 20


def test_a_dataset_too_large_to_load_is_refused_before_it_loads(monkeypatch):
    # Prepare: 64 MiB of memory; synth of 100,000 rows takes ~200 MiB to generate. Loading would fail the test.
    monkeypatch.setattr("peerkd.batched.memory.available_ram", lambda: 64 << 20)
    monkeypatch.setattr(pf, "load_dataset", lambda *a, **k: pytest.fail("loaded"))
    spec = RunSpec(world=WorldSpec(dataset="synth", data_size=100_000), rounds=1)
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"data.size: the run would need ~200.3 MiB of memory, but 64.0 MiB is"):
        pf.preflight(spec, build_strategy("peer"))


def test_the_largest_part_names_the_setting(monkeypatch):
    monkeypatch.setattr("peerkd.batched.memory.available_ram", lambda: 64 << 20)
    # A batch of 2**20 rows: one student's activations are ~5 GiB.
    with pytest.raises(ConfigError, match=r"^train.batch_size: the run would need ~5\.\d GiB .*\(1 students training"):
        pf.preflight(RunSpec(world=WorldSpec(dataset="digits"), batch_size=2**20), build_strategy("peer"))
    # 2,000,000 noise inputs: ~2.4 GiB drawn, and about as much for every client's logits on them.
    spec = RunSpec(world=WorldSpec(dataset="digits", transfer="noise", transfer_size=2_000_000), rounds=1)
    with pytest.raises(ConfigError, match=r"^data.transfer_size: the run would need"):
        pf.preflight(spec, build_strategy("peer"))


def test_more_workers_than_clients_is_refused_before_ray():
    with pytest.raises(ConfigError, match=r"engine.workers: 11 is out of range \(allowed: \[1, 10\]\)"):
        pf.preflight(digits_spec(), build_strategy("peer"), EngineConf(workers=11))
