"""Faulty fleets in real Flower simulations (Ray backend, real training, digits): every bad
reply is a recorded rejection, every round gets its row, and a run where nothing was
accepted finishes with a summary that says so (issue 11's reply rows)."""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp

from peerkd.round.results import read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.student import client_app as real
from peerkd.wire.protocol import KEY_ARRAYS, KEY_LOGITS, KEY_METRICS, METRIC_TEST_LOSS, NODE_PARTITION_ID
from peerkd.world.build import WorldSpec
from simulations.runner import run_one
from strategies import build_strategy

CPU = {"num_cpus": 1.0, "num_gpus": 0.0}
TRANSFER = 180  # digits: the 10% public split


def _client(context) -> int:
    return int(context.node_config[NODE_PARTITION_ID])


def _round(msg) -> int:
    return int(msg.content["config"]["server-round"])


# Peer, 4 clients: 0 sends text bytes labelled float32 (P, C); 1 drops test-loss from its
# metrics; 2 adds a metric in round 1 and sends its logits as a ConfigRecord in round 2;
# 3 is honest.
forgers = ClientApp()


@forgers.train("distill")
def forging_distill(msg, context):
    reply = real.distill(msg, context)
    client, content = _client(context), reply.content
    if client == 0:
        text = Array(dtype="float32", shape=(TRANSFER, 10), stype="numpy.ndarray", data=b"0.1, 0.2, 0.3" * 100)
        content[KEY_LOGITS] = ArrayRecord({"logits": text})
    elif client == 1:
        content[KEY_METRICS] = MetricRecord({k: v for k, v in content[KEY_METRICS].items() if k != METRIC_TEST_LOSS})
    elif client == 2 and _round(msg) == 1:
        content[KEY_METRICS] = MetricRecord({**content[KEY_METRICS], "secret": 1.0})
    elif client == 2:
        content[KEY_LOGITS] = ConfigRecord({"logits": "0.1 0.2"})
    return reply


def test_forged_replies_are_rejected_with_reasons_and_every_round_is_recorded(tmp_path):
    # Execute
    out = tmp_path / "forged"
    spec = RunSpec(world=WorldSpec(dataset="digits", num_clients=4, seed=0), rounds=2, epochs=1)
    summary = run_one(spec, build_strategy("peer"), out, {"rule": "peer"}, CPU, client_app=forgers)
    # Assert: both rounds recorded, client 3 alone accepted, each rejection with its reason.
    rows = read_jsonl(out / "metrics.jsonl")
    rounds = [r for r in rows if r["type"] == "round"]
    assert [(r["round"], r["replies"], r["rejected"], r["no_reply_accepted"]) for r in rounds] == [
        (1, 1, 3, False),
        (2, 1, 3, False),
    ]
    reasons = sorted(x["reason"] for r in rounds for x in r["rejections"])
    assert sum(x.startswith("logits bytes do not decode") for x in reasons) == 2
    assert sum(x == "test-loss None is not a finite number >= 0" for x in reasons) == 2
    assert sum(x.startswith("unknown metric 'secret'") for x in reasons) == 1
    assert sum(x == "record 'logits' holds a ConfigRecord, expected ArrayRecord" for x in reasons) == 1
    assert {r["client"] for r in rows if r["type"] == "client"} == {3}
    assert [c["client"] for c in summary["per_client"]] == [3] and 0.0 <= summary["acc_mean"] <= 1.0
    assert (summary["accepted_replies"], summary["rejected_replies"], summary["no_reply_accepted"]) == (2, 6, False)


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


# FedAvg, 3 clients, none of them honest: 0 sends text bytes as its first weight, 1 sends a
# string array where a float32 one belongs, 2 claims NaN training examples.
weight_forgers = ClientApp()


@weight_forgers.train()
def forging_train(msg, context):
    reply = real.train(msg, context)
    client, content = _client(context), reply.content
    name, ref = next(iter(content[KEY_ARRAYS].items()))
    if client == 0:
        forged = Array(dtype=ref.dtype, shape=tuple(ref.shape), stype=ref.stype, data=b"weights as text")
    elif client == 1:
        forged = Array(dtype=ref.dtype, shape=tuple(ref.shape), stype=ref.stype, data=_npy(np.full(ref.shape, "w")))
    else:
        forged = ref
        content[KEY_METRICS] = MetricRecord({**content[KEY_METRICS], "num-examples": float("nan")})
    content[KEY_ARRAYS] = ArrayRecord({**content[KEY_ARRAYS], name: forged})
    return reply


def test_a_run_with_no_accepted_reply_finishes_and_says_so(tmp_path, caplog):
    # Execute
    out = tmp_path / "none"
    spec = RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=0), rounds=2, epochs=1)
    with caplog.at_level("INFO", logger="peerkd"):
        summary = run_one(spec, build_strategy("fedavg"), out, {"rule": "fedavg"}, CPU, client_app=weight_forgers)
    # Assert: every round has its row saying nothing was accepted, and why each reply was not.
    rounds = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "round"]
    assert [(r["round"], r["replies"], r["rejected"], r["no_reply_accepted"]) for r in rounds] == [
        (1, 0, 3, True),
        (2, 0, 3, True),
    ]
    reasons = sorted(x["reason"] for r in rounds for x in r["rejections"])
    assert sum("bytes do not decode" in x for x in reasons) == 2
    assert sum("bytes hold <U1 values, expected float32" in x for x in reasons) == 2
    assert sum(x.startswith("num-examples nan is not an integer") for x in reasons) == 2
    assert "no reply accepted (3 rejected, 0 missing)" in caplog.text
    # The summary exists (the run finished) and says no reply was accepted: no accuracies.
    assert (summary["no_reply_accepted"], summary["accepted_replies"], summary["rejected_replies"]) == (True, 0, 6)
    assert summary["acc_mean"] is None and summary["per_client"] == []
