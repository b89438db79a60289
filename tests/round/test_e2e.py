"""End to end: real Flower simulations (Ray backend), real training, tiny worlds.

Each rule runs 3 clients × 2 rounds on digits; the results directory is checked against
the contract in docs/design.md ("Results"). The four rules of the default comparison run in
Flower's engine, one simulation each; the literature rules run in the batched engine (each
runs in Flower's engine too, with bytes and accuracies equal to the batched engine's, in
``tests/batched/test_batched.py``'s parity test, which starts Ray once for all of them).
"""

import json

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord
from flwr.clientapp import ClientApp

from peerkd.batched import run_batched
from peerkd.round.results import SUMMARY_KEYS, read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.student import client_app as real
from peerkd.wire.protocol import KEY_LOGITS, NODE_PARTITION_ID
from peerkd.world.build import WorldSpec
from simulations.runner import run_one
from strategies import build_strategy, rule_settings

CPU = {"num_cpus": 1.0, "num_gpus": 0.0}
TRANSFER = 180  # digits: 10% public split of 1,797 samples, stratified per class


def tiny_spec(**world) -> RunSpec:
    return RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=0, **world), rounds=2, epochs=1)


def check_contract(out, rule, rounds=2, clients=3):
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["strategy"] == rule and summary["dataset"] == "digits"
    assert summary["num_clients"] == clients and summary["rounds"] == rounds and summary["seed"] == 0
    for key in ("acc_mean", "acc_worst"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["acc_worst"] <= summary["acc_mean"]
    assert len(summary["per_client"]) == clients
    assert summary["wall_s"] > 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows if r["type"] == "round"] == list(range(1, rounds + 1))
    client_rows = [r for r in rows if r["type"] == "client"]
    assert len(client_rows) == rounds * clients
    assert sum(r["bytes_up"] for r in client_rows) == summary["bytes_up"]
    assert sum(r["bytes_down"] for r in client_rows) == summary["bytes_down"]
    assert yaml.safe_load((out / "config.yaml").read_text())["rule"] == rule
    return summary, rows


@pytest.mark.parametrize("rule", ["local", "fedavg", "teacher", "peer"])
def test_each_rule_end_to_end(rule, tmp_path):
    # Execute
    summary, rows = check_contract_run(rule, tmp_path)
    # Assert: bytes follow from what each rule sends (float32 logits: 180×10×4 B + .npy header).
    logits_bytes = TRANSFER * 10 * 4 + 128
    per_client = [r for r in rows if r["type"] == "client"]
    if rule == "local":
        assert summary["bytes_up"] == summary["bytes_down"] == 0
    elif rule == "teacher":
        assert 0.5 < summary["teacher_acc"] <= 1.0
        assert all(r["bytes_down"] == logits_bytes and r["bytes_up"] == 0 for r in per_client)
    elif rule == "peer":
        assert all(r["bytes_up"] == logits_bytes for r in per_client)
        # Round 1 has no peer logits yet; round 2 sends each client the others' mean.
        assert [r["bytes_down"] for r in per_client if r["round"] == 1] == [0, 0, 0]
        assert [r["bytes_down"] for r in per_client if r["round"] == 2] == [logits_bytes] * 3
    else:  # fedavg: every client holds the global model; weights both ways.
        assert len({r["acc"] for r in per_client if r["round"] == 2}) == 1
        assert all(r["bytes_up"] == r["bytes_down"] > 64 * 64 * 4 for r in per_client)


def tiny_rule(rule, **settings):
    """Rule ``rule`` with those of ``settings`` it takes (teacher rules train briefly)."""
    return build_strategy(rule, **{k: v for k, v in settings.items() if k in rule_settings(rule)})


def check_contract_run(rule, tmp_path):
    out = tmp_path / rule
    run_one(tiny_spec(), tiny_rule(rule, teacher_epochs=5), out, {"rule": rule}, CPU)
    return check_contract(out, rule)


def test_heterogeneous_students_peer(tmp_path):
    spec = RunSpec(
        world=WorldSpec(dataset="digits", num_clients=3, seed=0), rounds=2, epochs=1, students=("mlp32", "cnn")
    )
    summary = run_one(spec, build_strategy("peer"), tmp_path / "het", {"rule": "peer"}, CPU)
    assert [c["arch"] for c in summary["per_client"]] == ["mlp32", "cnn", "mlp32"]
    assert summary["acc_by_arch"]["mlp32"]["clients"] == 2


# A faulty fleet: client 1 sends NaN logits, client 2 sends the wrong shape, and client 0
# crashes in round 2. The server must reject each, log why, and finish every round.
faulty = ClientApp()


@faulty.train("distill")
def faulty_distill(msg, context):
    client = int(context.node_config[NODE_PARTITION_ID])
    if client == 0 and int(msg.content["config"]["server-round"]) == 2:
        raise RuntimeError("client 0 crashed")
    reply = real.distill(msg, context)
    if client == 1:
        reply.content[KEY_LOGITS] = ArrayRecord({"logits": Array(np.full((TRANSFER, 10), np.nan, np.float32))})
    if client == 2:
        reply.content[KEY_LOGITS] = ArrayRecord({"logits": Array(np.zeros((TRANSFER, 3), np.float32))})
    return reply


def test_malformed_replies_are_rejected_and_rounds_go_on(tmp_path):
    out = tmp_path / "faulty"
    spec = RunSpec(world=WorldSpec(dataset="digits", num_clients=4, seed=0), rounds=2, epochs=1)
    summary = run_one(spec, build_strategy("peer"), out, {"rule": "peer"}, CPU, client_app=faulty)
    rounds = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    reasons = [rej["reason"] for r in rounds for rej in r["rejections"]]
    assert sum("NaN" in x for x in reasons) == 2  # client 1, both rounds
    assert sum("shape" in x for x in reasons) == 2  # client 2, both rounds
    assert sum("client 0 crashed" in x for x in reasons) == 1
    assert [r["replies"] for r in rounds] == [2, 1]  # clients 0+3, then 3 alone
    assert summary["rejected_replies"] == 5
    # Only client 3's round-2 reply and earlier ones count; no NaN reached the results.
    assert {c["client"] for c in summary["per_client"]} == {0, 3}
    assert 0.0 <= summary["acc_mean"] <= 1.0


NPY = 128  # numpy's .npy header for these shapes
LOGITS = TRANSFER * 10 * 4 + NPY  # a (180, 10) float32 matrix
CLASS_TABLE = 10 * 10 * 4 + NPY + 10 * 4 + NPY  # fd: (10, 10) matrix + (10,) vector


@pytest.mark.parametrize(
    "rule, up, down_round2, students, world",
    [
        ("wml", 2 * LOGITS, LOGITS, ("mlp32", "cnn"), {}),  # transfer + server-split probe logits
        ("dsfl", LOGITS, LOGITS, ("mlp32", "cnn"), {}),  # probabilities up, ERA down
        ("fedmd", LOGITS, LOGITS, ("mlp32", "cnn"), {}),
        ("fd", CLASS_TABLE, CLASS_TABLE, ("mlp32", "cnn"), {"public_frac": 0.0}),  # no transfer set at all
        ("feddf", None, None, ("mlp64",), {}),
        ("oracle", 0, LOGITS, ("mlp32", "cnn"), {}),
        ("teacher_ensemble", 0, LOGITS, ("mlp32", "cnn"), {}),
    ],
)
def test_literature_rules_end_to_end(rule, up, down_round2, students, world, tmp_path):
    # Prepare: heterogeneous students for every logit rule.
    spec = RunSpec(
        world=WorldSpec(dataset="digits", num_clients=3, seed=0, **world), rounds=2, epochs=1, students=students
    )
    # Execute
    run_batched(
        spec, tiny_rule(rule, teacher_epochs=3, teacher_members=2), tmp_path / rule, {"rule": rule}, device="cpu"
    )
    summary, rows = check_contract(tmp_path / rule, rule)
    # Assert: the bytes each protocol must send, and agreement where students share inputs.
    clients = [r for r in rows if r["type"] == "client"]
    rounds = [r for r in rows if r["type"] == "round"]
    assert [c["arch"] for c in summary["per_client"]] == list(students * 3)[:3]
    if up is not None:
        assert {r["bytes_up"] for r in clients} == {up}
        assert {r["bytes_down"] for r in clients if r["round"] == 2} == {down_round2}
    if rule in ("wml", "dsfl", "fedmd", "oracle", "teacher_ensemble"):
        assert all(0.0 <= r["agreement"] <= 1.0 and r["kl_to_consensus"] >= 0 for r in rounds)
    if rule == "wml":
        assert sum(rounds[-1]["wml_weights"].values()) == pytest.approx(1.0)
    if rule == "oracle":
        assert summary["private"] is False
        assert all(r["bytes_measure"] == LOGITS for r in clients)  # metrics-only logits, counted apart
    if rule == "feddf":
        assert all(r["bytes_up"] == r["bytes_down"] > 0 for r in clients)
        assert 0.0 <= rounds[-1]["global_acc"] <= 1.0
