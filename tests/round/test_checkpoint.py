"""Checkpoint pieces with numbers a reader can check: client files, metrics trimming,
node renaming, the batched students' snapshot, the participation summary."""

import json
from collections import Counter

import torch

from peerkd.batched.store import StudentStore
from peerkd.hooks.participation import participation
from peerkd.round.checkpoint import load_client, prune_client_files, rekey_nodes, save_client
from peerkd.round.results import RunWriter, read_jsonl
from peerkd.world.build import WorldSpec, build_world


def test_client_files_load_the_newest_up_to_a_round_and_prune_the_rest(tmp_path):
    # Prepare: client 0 wrote rounds 1, 2, 4; client 1 wrote round 1.
    d = str(tmp_path)
    for client, rnd in [(0, 1), (0, 2), (0, 4), (1, 1)]:
        save_client(d, client, rnd, "mlp32", {"w": torch.full((2,), float(rnd))})
    # Execute / Assert: a resume after round 3 loads client 0's round 2, client 1's round 1.
    arch, weights = load_client(d, 0, 3)
    assert arch == "mlp32" and weights["w"].tolist() == [2.0, 2.0]
    assert load_client(d, 1, 3)[1]["w"].tolist() == [1.0, 1.0]
    assert load_client(d, 2, 3) is None
    # Pruning at round 3 keeps each client's newest file <= 3 and anything later.
    prune_client_files(d, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c0-r2.pt", "c0-r4.pt", "c1-r1.pt"]


def test_keep_rounds_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
    # Prepare: rows of rounds 1-3, a final evaluation, and a torn last line.
    writer = RunWriter(tmp_path, {"rule": "peer"})
    writer.log({"type": "setup"}, *({"type": "round", "round": r} for r in (1, 2, 3)))
    writer.log({"type": "client", "round": 2, "final_evaluation": True})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "round", "rou')
    # Execute: resume after round 2, then log round 3 again.
    resumed = RunWriter(tmp_path, {"rule": "peer"}, resume=True)
    resumed.keep_rounds(2)
    resumed.log({"type": "round", "round": 3, "again": True})
    # Assert
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["type"], r.get("round")) for r in rows] == [("setup", None), ("round", 1), ("round", 2), ("round", 3)]
    assert rows[-1]["again"] is True


class _Rule:
    def __init__(self):
        self.logits = {101: "a", 102: "b"}  # by node id
        self.weights = {0: 0.5, 1: 0.5}  # by client id
        self.name = "peer"


def test_rekey_nodes_renames_node_keyed_state_only():
    rule = _Rule()
    rekey_nodes(rule, {101: 7, 102: None})  # client of node 102 is gone now
    assert rule.logits == {7: "a"}
    assert rule.weights == {0: 0.5, 1: 0.5}


def test_student_store_snapshot_restores_every_student():
    # Prepare: 3 students of two architectures; client 1's weights changed.
    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
    store = StudentStore(torch.device("cpu"))
    store.load("mlp32", world, [0, 1])
    weights = store.load("mlp32", world, [1])
    store.save("mlp32", [1], {k: v + 1.0 for k, v in weights.items()})
    store.load("mlp64", world, [2])
    snap = store.snapshot()
    # Execute: a fresh store restored from the snapshot.
    fresh = StudentStore(torch.device("cpu"))
    fresh.restore(snap)
    # Assert: the same weights, rows and architectures.
    assert {c: a for c, (a, _) in snap.items()} == {0: "mlp32", 1: "mlp32", 2: "mlp64"}
    for arch, clients in (("mlp32", [0, 1]), ("mlp64", [2])):
        a, b = store.load(arch, world, clients), fresh.load(arch, world, clients)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(snap[1][1][next(iter(weights))], weights[next(iter(weights))][0] + 1.0)


def test_participation_names_who_took_part():
    # 3 clients, 2 rounds: client 0 answered twice, client 1 once (round 1), client 2 never.
    latest = {0: {"round": 2}, 1: {"round": 1}}
    out = participation(3, 2, latest, Counter({0: 2, 1: 1}))
    assert out == {
        "clients_evaluated": 2,
        "clients_missing": [2],
        "clients_stale": [1],
        "partial_mean": True,
        "replies_per_client": {"0": 2, "1": 1, "2": 0},
    }
    assert json.loads(json.dumps(out)) == out
