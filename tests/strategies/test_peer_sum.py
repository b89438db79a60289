"""peer_sum: the server sends only the peers' sum and count, each client removes its own logits;
the maths by hand, and the same numbers as ``peer`` on a tiny world. (Its Flower-engine run is
checked against the batched engine with every other rule in test_batched.py.)"""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from peerkd.batched import run_batched
from peerkd.round.contract import ServerContext
from peerkd.round.results import read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.student.exchange import leave_one_out_from_sum
from peerkd.wire.codec import Codec, encode_logits
from peerkd.wire.protocol import ARRAY_LOGITS, KEY_LOGITS, KEY_TARGETS
from peerkd.world.build import WorldSpec, build_world
from strategies import build_strategy
from strategies.aggregation import leave_one_out_mean
from strategies.peer_sum import sum_logits


def test_the_sum_less_ones_own_logits_is_the_leave_one_out_mean():
    # Peers [1, 3], [3, 1], [2, 2]: the sum is [6, 6]; peer 0 gets ([6, 6] - [1, 3]) / 2 = [2.5, 1.5].
    total = sum_logits([[[1, 3]], [[3, 1]], [[2, 2]]])
    assert total.tolist() == [[6.0, 6.0]]
    assert leave_one_out_from_sum(total, 3, np.array([[1.0, 3.0]])).tolist() == [[2.5, 1.5]]
    assert leave_one_out_from_sum(total, 3, None).tolist() == [[2.0, 2.0]]  # not a sender: the mean of all
    assert leave_one_out_from_sum(np.array([[1.0, 3.0]]), 1, np.array([[1.0, 3.0]])) is None  # no other sender
    np.testing.assert_allclose(
        leave_one_out_from_sum(total, 3, np.array([[3.0, 1.0]])), leave_one_out_mean([[[1, 3]], [[3, 1]], [[2, 2]]])[1]
    )


def test_every_node_receives_the_same_sum(flower_identity):
    # Prepare: a rule that has folded three replies.
    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
    rule = build_strategy("peer_sum")
    rule.setup(ServerContext(world, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
    shape = (len(world.transfer_x), world.num_classes)
    replies = []
    for node in (11, 12, 13):
        request = Message(RecordDict(), dst_node_id=node, message_type="train.distill")
        content = RecordDict({KEY_LOGITS: encode_logits(np.full(shape, node)), "metrics": MetricRecord({})})
        replies.append(Message(content, reply_to=request))
    rule.aggregate_round(1, replies)
    # Execute
    messages = rule.configure_round(2, [11, 12, 13, 14], ConfigRecord(), None)
    # Assert: one matrix (11 + 12 + 13 = 36 everywhere) for all; node 14 sent nothing.
    sums = [m.content[KEY_TARGETS][ARRAY_LOGITS].numpy() for m in messages]
    assert all(np.array_equal(s, np.full(shape, 36.0, dtype=np.float32)) for s in sums)
    assert [m.content[KEY_TARGETS]["peers"].numpy().tolist() for m in messages] == [[3.0, 1.0]] * 3 + [[3.0, 0.0]]


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_peer_sum_gives_peers_numbers(codec, tmp_path, flower_identity):
    # Execute: peer and peer_sum on one tiny world (3 clients, 3 rounds), batched engine.
    world = WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=64, transfer_size=96)
    spec = RunSpec(world=world, rounds=3, epochs=1, students=("mlp32",), codec=Codec(codec))
    runs = {r: run_batched(spec, build_strategy(r), tmp_path / r, {}, device="cpu") for r in ("peer", "peer_sum")}
    # Assert: the same accuracy for every client, the same training loss in every round, the same bytes up.
    peer, summed = runs["peer"], runs["peer_sum"]
    assert [c["acc"] for c in summed["per_client"]] == [c["acc"] for c in peer["per_client"]]
    losses = {
        r: {
            (x["round"], x["client"]): x["train_loss"] for x in read_jsonl(tmp_path / r / "metrics.jsonl") if "acc" in x
        }
        for r in runs
    }
    assert losses["peer_sum"].keys() == losses["peer"].keys() and len(losses["peer"]) == 9
    for key, loss in losses["peer"].items():
        assert losses["peer_sum"][key] == pytest.approx(loss, rel=1e-5)
    assert summed["bytes_up"] == peer["bytes_up"]
