"""Stragglers and dropouts in a real Flower simulation: a slow client, a client that always
fails; the round timeout, late replies and the summary's participation fields."""

import time

from flwr.app import Error, Message, RecordDict
from flwr.clientapp import ClientApp

from peerkd.round.results import read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.student import client_app as real
from peerkd.wire.protocol import NODE_PARTITION_ID
from peerkd.world.build import WorldSpec
from simulations.runner import run_one
from strategies import build_strategy

CPU = {"num_cpus": 1.0, "num_gpus": 0.0}
TIMEOUT_S, SLOW_S, ROUNDS = 10.0, 13.0, 3

slow_fleet = ClientApp(mods=[real.drop_expired])


@slow_fleet.train("distill")
def distill(msg, context):
    client = int(context.node_config[NODE_PARTITION_ID])
    if client == 2 and int(msg.content["config"]["server-round"]) == 1:
        time.sleep(SLOW_S)  # misses round 1's deadline; its late reply must not count anywhere
    if client == 3:
        raise RuntimeError("client 3 is down")
    return real.distill(msg, context)


@slow_fleet.evaluate()
def evaluate(msg, context):
    return real.evaluate_student(msg, context)


def test_straggler_and_dropout(tmp_path):
    # Prepare: 4 clients, 3 rounds; client 2 is 13 s slow in round 1 (timeout 10 s), client 3 always fails.
    world = WorldSpec(dataset="digits", num_clients=4, seed=0)
    spec = RunSpec(world=world, rounds=ROUNDS, epochs=1, round_timeout=TIMEOUT_S)
    # Execute
    summary = run_one(spec, build_strategy("peer"), tmp_path, {"rule": "peer"}, CPU, client_app=slow_fleet)
    # Assert: round 1 is not lost to Ray's start-up (the clock starts after the warm-up).
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    rounds = [r for r in rows if r["type"] == "round"]
    clients = sorted((r["round"], r["client"]) for r in rows if r["type"] == "client")
    assert clients == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    assert [r["replies"] for r in rounds] == [2, 3, 3]
    assert [len(r["missing"]) for r in rounds] == [1, 0, 0]  # round 1: client 2, abandoned
    # The late round-1 reply was never pulled: no duplicate, no rejection of it in round 2.
    assert [r["rejected"] for r in rounds] == [1, 1, 1]  # client 3's error, each round
    assert all(r["round_s"] < TIMEOUT_S + 4 for r in rounds)
    # Participation: means over the 3 clients heard from, flagged; client 3 never heard from.
    assert summary["clients_evaluated"] == 3 and summary["clients_missing"] == [3]
    assert summary["partial_mean"] is True and summary["clients_stale"] == []
    assert summary["replies_per_client"] == {"0": 3, "1": 3, "2": 2, "3": 0}
    assert [c["client"] for c in summary["per_client"]] == [0, 1, 2]


def test_an_expired_message_is_answered_at_once_untrained(flower_identity):
    # Prepare: a message whose 5 s TTL ran out 1 s ago (its round was abandoned while it queued).
    msg = Message(RecordDict(), dst_node_id=7, message_type="train.distill", ttl=5.0)
    msg.metadata.created_at = time.time() - 6.0
    calls = []
    # Execute
    reply = real.drop_expired(msg, None, lambda m, c: calls.append(m))
    fresh = Message(RecordDict(), dst_node_id=7, message_type="train.distill", ttl=5.0)
    real.drop_expired(fresh, None, lambda m, c: calls.append(m))
    # Assert: the expired one never reaches the handler; the fresh one does.
    assert reply.has_error() and isinstance(reply.error, Error) and "expired" in reply.error.reason
    assert calls == [fresh]
