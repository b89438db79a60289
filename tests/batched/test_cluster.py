"""peerkd on a Ray cluster: a real two-node cluster on loopback, both engines, a killed worker.

The cluster tests need the ``ray`` command (``ray start``); without it they skip. The
cluster is started once for the module and stopped by process-group id at its end; the
module fails if any of its processes survives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from ray_cluster import LoopbackCluster, new_temp_dir, ray_cli

from peerkd.batched import BatchedGrid
from peerkd.batched.sharded import ShardedGrid, shard_clients
from peerkd.batched.store import StudentStore
from peerkd.cluster import cluster_args
from peerkd.errors import ConfigError
from peerkd.hooks.placement import clients_per_node
from peerkd.hooks.standard import standard_hooks
from peerkd.round.hook import RoundHook
from peerkd.round.loop import run_federation
from peerkd.round.results import RunWriter
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec, build_world
from simulations.config import EngineConf, check_engine
from simulations.runner import run_engine
from strategies import build_strategy

SPEC = RunSpec(
    world=WorldSpec(dataset="digits", num_clients=4, seed=0, samples_per_client=64, transfer_size=96),
    rounds=2,
    epochs=1,
    students=("mlp32",),
)
RESOURCES = {"num_cpus": 1.0, "num_gpus": 0.0}


def client_rows(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "client"]


# --- without a cluster -------------------------------------------------------------------


def test_shards_are_contiguous_and_near_equal():
    # Execute / Assert: 5 clients over 2 workers: 5*1//2 = 2 is the cut.
    assert shard_clients(5, 2) == [[0, 1], [2, 3, 4]]
    assert shard_clients(4, 4) == [[0], [1], [2], [3]]


def test_a_local_run_never_joins_a_running_cluster():
    # Execute / Assert: no address -> Ray's "local" (a private instance); an address drops the
    # per-instance CPU count, which a cluster's nodes declare themselves.
    assert cluster_args(None, {"num_cpus": 2}) == {"address": "local", "num_cpus": 2}
    assert cluster_args("10.0.0.5:6379", {"num_cpus": 2, "logging_level": "ERROR"}) == {
        "address": "10.0.0.5:6379",
        "logging_level": "ERROR",
    }


@pytest.mark.parametrize(
    "engine, field",
    [
        (EngineConf(name="flower", workers=2), "engine.workers"),
        (EngineConf(ray_address="auto"), "engine.ray_address"),
        (EngineConf(workers=-1), "engine.workers"),
        (EngineConf(workers=2, worker_cpus=0.0), "engine.worker_cpus"),
        (EngineConf(workers=2, device="cuda"), "engine.worker_gpus"),
    ],
)
def test_bad_cluster_settings_name_their_field(engine, field):
    with pytest.raises(ConfigError) as err:
        check_engine(engine)
    assert err.value.field == field


def test_a_store_snapshot_restores_the_same_students(tmp_path):
    # Prepare: a store that made two mlp32 students and one cnn student, then trained one.
    world = build_world(SPEC.world)
    store = StudentStore(torch.device("cpu"))
    w = store.load("mlp32", world, [0, 2])
    store.load("cnn", world, [1])
    store.save("mlp32", [2], {k: v[1:] + 1.0 for k, v in w.items()})
    # Execute: snapshot, through a file, into a fresh store.
    torch.save(store.snapshot(), tmp_path / "s.pt")
    fresh = StudentStore(torch.device("cpu"))
    fresh.restore(torch.load(tmp_path / "s.pt", weights_only=True))
    # Assert: the same weights, client by client (client 2 is its init + 1).
    for arch, clients in (("mlp32", [0, 2]), ("cnn", [1])):
        a, b = store.load(arch, world, clients), fresh.load(arch, world, clients)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(fresh.load("mlp32", world, [2])[k], w[k][1:] + 1.0) for k in w)


# --- on a two-node loopback cluster ------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    if ray_cli() is None:
        pytest.skip("no `ray` command in this environment: the cluster tests need `ray start`")
    c = LoopbackCluster(new_temp_dir())
    try:
        c.start()
        yield c
    finally:
        survivors = c.stop()
        assert survivors == [], f"cluster processes survived: {survivors}"
        shutil.rmtree(c.temp_dir, ignore_errors=True)  # Ray's logs and sockets (kept when something survived)


@pytest.fixture(scope="module")
def single_machine(tmp_path_factory):
    """The reference: the same peer run in this process (batched engine, no Ray)."""
    out = tmp_path_factory.mktemp("single")
    grid = BatchedGrid(SPEC.world.num_clients, device="cpu")
    return run_federation(grid, SPEC, build_strategy("peer"), RunWriter(out, {}), standard_hooks(SPEC)), out


def test_batched_workers_on_two_nodes_give_the_single_machine_numbers(cluster, single_machine, tmp_path):
    # Execute: 2 workers (1 CPU each: one per node) on the cluster.
    engine = check_engine(EngineConf(workers=2, device="cpu", ray_address=cluster.address))
    summary = run_engine(SPEC, build_strategy("peer"), tmp_path, {}, engine, RESOURCES)
    # Assert: the same numbers, exactly; each worker on its own node; every row names its node.
    ref, ref_out = single_machine
    assert [(c["client"], c["acc"], c["loss"]) for c in summary["per_client"]] == [
        (c["client"], c["acc"], c["loss"]) for c in ref["per_client"]
    ]
    ref_rows = {(r["round"], r["client"]): r["train_loss"] for r in client_rows(ref_out)}
    rows = client_rows(tmp_path)
    assert {(r["round"], r["client"]): r["train_loss"] for r in rows} == ref_rows
    nodes = {w["ray_node"] for w in summary["workers"]}
    assert len(nodes) == 2 and {r["ray_node"] for r in rows} == nodes
    assert {n: v["clients"] for n, v in summary["clients_per_node"].items()} == {n: 2 for n in nodes}
    assert [w["clients"] for w in summary["workers"]] == [[0, 1], [2, 3]] and summary["worker_events"] == []
    assert "RAY_ADDRESS" not in os.environ  # a later bare ray.init() must not find this cluster


def test_flower_engine_on_two_nodes_gives_the_single_machine_numbers(cluster, single_machine, tmp_path):
    # Execute: Flower's simulation on the cluster, one client actor per node (1 CPU each).
    engine = check_engine(EngineConf(name="flower", ray_address=cluster.address))
    summary = run_engine(SPEC, build_strategy("peer"), tmp_path, {}, engine, RESOURCES)
    # Assert: accuracies within 0.005 of the single-machine run, training losses within float
    # tolerance; clients ran on both nodes and the summary counts them per node.
    ref, ref_out = single_machine
    for a, b in zip(summary["per_client"], ref["per_client"], strict=True):
        assert a["client"] == b["client"] and abs(a["acc"] - b["acc"]) <= 0.005
    ref_rows = {(r["round"], r["client"]): r["train_loss"] for r in client_rows(ref_out)}
    rows = client_rows(tmp_path)
    for r in rows:
        if r["train_loss"] is not None:
            assert r["train_loss"] == pytest.approx(ref_rows[(r["round"], r["client"])], rel=1e-4)
    assert len({r["ray_node"] for r in rows}) == 2
    assert sum(v["clients"] for v in summary["clients_per_node"].values()) == 4


def test_a_killed_worker_costs_at_most_one_round_of_its_shard(cluster, single_machine, tmp_path):
    # Prepare: 2 workers on the cluster, 4 rounds. After round 1, SIGKILL worker 1; after
    # round 2, delete worker 0's saved shard (as on a machine that cannot see it) and SIGKILL it.
    import ray

    spec = RunSpec(world=SPEC.world, rounds=4, epochs=1, students=SPEC.students)
    killed = []

    class Kill(RoundHook):
        def after_round(self, result):
            kill(result.round)
            return {}

    def kill(rnd):
        if rnd in (1, 2):
            shard = 2 - rnd
            if shard == 0:
                (tmp_path / "workers" / "shard-0.pt").unlink()
            killed.append(grid.info[shard]["pid"])
            os.kill(killed[-1], signal.SIGKILL)

    ray.init(**cluster_args(cluster.address, {"logging_level": "ERROR"}))
    try:
        grid = ShardedGrid(4, 2, tmp_path / "workers", device="cpu", timeout=120)
        run_federation(grid, spec, build_strategy("peer"), RunWriter(tmp_path, {}), [*standard_hooks(spec), Kill()])
        grid.close()
    finally:
        ray.shutdown()
    # Assert: a killed round lost at most the dead worker's two replies (as rejections naming
    # a worker), the next round had all four; worker 1 came back with its round-1 students,
    # worker 0 said its students were lost.
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = {r["round"]: r for r in rows if r["type"] == "round"}
    assert [rounds[r]["replies"] for r in (1, 4)] == [4, 4]
    for r in (2, 3):
        assert rounds[r]["rejected"] in (0, 2) and rounds[r]["replies"] == 4 - rounds[r]["rejected"]
        assert all("worker" in x["reason"] for x in rounds[r]["rejections"])
    events = [(e["shard"], e["event"], e["restored_round"]) for e in grid.events if e["event"] != "lost"]
    assert events == [(1, "restored", 1), (0, "students lost", 0)]
    assert {pid for pid, _ in cluster.processes()}.isdisjoint(killed)
    if rounds[2]["rejected"] == 0:  # Ray re-ran the killed call on the restored worker: the same numbers
        ref = {(r["round"], r["client"]): r["acc"] for r in client_rows(single_machine[1])}
        assert {(r["round"], r["client"]): r["acc"] for r in rows if r["type"] == "client" and r["round"] <= 2} == ref


def test_workers_the_cluster_cannot_hold_are_refused(cluster, tmp_path):
    # Execute: 2 workers of 2 CPUs each on a cluster of 1 + 1 CPUs.
    import ray

    ray.init(**cluster_args(cluster.address, {"logging_level": "ERROR"}))
    try:
        with pytest.raises(ConfigError) as err:
            ShardedGrid(4, 2, tmp_path, device="cpu", num_cpus=2.0)
    finally:
        ray.shutdown()
    # Assert: one line naming the field and what the cluster has (instead of waiting forever).
    assert err.value.field == "engine.worker_cpus" and "the Ray cluster has 2" in str(err.value)


def test_clients_per_node_counts_rows_that_name_a_node():
    rows = [{"ray_node": "a", "host": "h", "ip": "1"}, {"ray_node": "a", "host": "h", "ip": "1"}, {"client": 3}]
    assert clients_per_node(rows) == {"a": {"host": "h", "ip": "1", "clients": 2}}
