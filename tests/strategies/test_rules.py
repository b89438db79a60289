"""Strategy behaviour on real Flower Messages and real models, without a simulation."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.student.models import build_model
from peerkd.student.training import predict_logits, train_model
from peerkd.wire.codec import CodecError, encode_logits
from peerkd.wire.protocol import KEY_LOGITS, KEY_PROBE, KEY_TARGETS
from peerkd.world.build import WorldSpec, build_world
from strategies import RULES, build_strategy

WORLD = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
P, C = WORLD.transfer_x.shape[0], WORLD.num_classes


def ctx(students=("mlp64",), world=WORLD):
    return ServerContext(world, students, 0, torch.device("cpu"), 1, 1e-3, 32)


def reply(node, client, **records):
    """A reply from ``node`` (its source is the request's destination, as on the wire)."""
    request = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"metrics": MetricRecord({"partition-id": client, "num-examples": 10}), **records})
    return Message(content, reply_to=request)


def test_every_rule_is_registered_and_documented():
    assert set(RULES) == {
        "local",
        "fedavg",
        "teacher",
        "peer",
        "peer_sum",
        "wml",
        "fd",
        "dsfl",
        "fedmd",
        "feddf",
        "oracle",
        "teacher_ensemble",
        "teacher_pool",
        "fedproto",
        "fedtgp",
    }
    for cls in RULES.values():
        assert cls.__module__.split(".")[-1] in (cls.name, "local")  # one rule per file
        doc = __import__(cls.__module__, fromlist=["x"]).__doc__
        assert doc and len(doc) > 80


def test_wml_weights_shift_to_the_peer_that_is_right_on_the_server_split(flower_identity):
    # Prepare: peer 0 predicts the server labels perfectly, peer 1 uniformly.
    s = build_strategy("wml", weight_lr=1.0, weight_steps=5)
    s.setup(ctx())
    y = WORLD.split("server")[1]
    good = np.full((len(y), C), -10.0, np.float32)
    good[np.arange(len(y)), y] = 10.0
    flat = np.zeros((len(y), C), np.float32)
    transfer = np.zeros((P, C), np.float32)
    replies = [
        reply(100, 0, **{KEY_LOGITS: encode_logits(transfer), KEY_PROBE: encode_logits(good)}),
        reply(200, 1, **{KEY_LOGITS: encode_logits(transfer), KEY_PROBE: encode_logits(flat)}),
    ]
    # Execute
    out = s.aggregate_round(1, replies)
    # Assert: weights stay on the simplex and move to the accurate peer.
    w = out["wml_weights"]
    assert w["0"] > 0.9 > 0.1 > w["1"] and w["0"] + w["1"] == pytest.approx(1.0)
    assert out["ensemble_nll"] > 0
    msgs = s.configure_round(2, [100, 200], __import__("flwr.app", fromlist=["ConfigRecord"]).ConfigRecord({}), None)
    assert all(KEY_TARGETS in m.content for m in msgs)
    s.check_reply(replies[0].content)
    with pytest.raises(CodecError):  # a reply without the probe logits is refused
        s.check_reply(RecordDict({KEY_LOGITS: encode_logits(transfer)}))


def test_fd_targets_carry_a_mask_and_replies_need_counts(flower_identity):
    s = build_strategy("fd")
    s.setup(ctx())
    target = np.ones((C, C), np.float32)
    target[3] = np.nan
    record = s.encode_target(target)
    assert record["mask"].numpy()[3] == 0 and record["mask"].numpy().sum() == C - 1
    assert np.isfinite(record["logits"].numpy()).all()
    ok = ArrayRecord({"logits": Array(np.zeros((C, C), np.float32)), "counts": Array(np.ones(C, np.float32))})
    s.check_reply(RecordDict({KEY_LOGITS: ok}))
    with pytest.raises(CodecError, match="counts"):
        s.check_reply(RecordDict({KEY_LOGITS: encode_logits(np.zeros((C, C), np.float32))}))


def test_feddf_fuses_the_average_toward_the_ensemble(flower_identity):
    s = build_strategy("feddf", server_epochs=5, temperature=1.0)
    s.setup(ctx())
    members, replies = [], []
    for c in range(2):
        m = build_model("mlp64", WORLD.data.input_shape, C, seed=c)
        train_model(m, *WORLD.private(c), epochs=5, lr=1e-3, batch_size=32, seed=c)
        members.append(predict_logits(m, WORLD.transfer_x))
        replies.append(reply(10 + c, c, arrays=ArrayRecord(m.state_dict())))
    ensemble = np.mean(members, axis=0)

    def kl_to_ensemble(model):
        p = torch.softmax(torch.as_tensor(ensemble), 1)
        q = torch.log_softmax(torch.as_tensor(predict_logits(model, WORLD.transfer_x)), 1)
        return float((p * (p.log() - q)).sum(1).mean())

    # Execute: the plain average, then FedDF's fused model.
    avg = build_strategy("fedavg")
    avg.setup(ctx())
    avg.aggregate_round(1, replies)
    out = s.aggregate_round(1, replies)
    # Assert: fusion moves the global model toward the ensemble's predictions.
    assert kl_to_ensemble(s.model) < kl_to_ensemble(avg.model)
    assert out["avg_acc"] == pytest.approx(avg.acc)


def test_teacher_variants_train_on_what_they_claim():
    server = build_strategy("teacher", teacher_epochs=1).setup(ctx())
    oracle = build_strategy("oracle", teacher_epochs=1)
    o = oracle.setup(ctx())
    ens = build_strategy("teacher_ensemble", teacher_epochs=1, teacher_members=2).setup(ctx())
    assert server["teacher_train_size"] == len(WORLD.splits.server)
    assert o["teacher_train_size"] == len(WORLD.splits.pool)  # every client's shard pooled
    assert oracle.private is False and RULES["teacher"].private is True
    assert ens["teacher_members"] == 2 and 0 <= ens["teacher_acc"] <= 1


@pytest.mark.parametrize("rule", ["peer", "wml", "dsfl", "fedmd", "teacher", "feddf"])
def test_transfer_based_rules_refuse_an_empty_transfer_set(rule):
    no_public = build_world(WorldSpec(dataset="digits", num_clients=3, public_frac=0.0))
    with pytest.raises(ConfigError, match="transfer set") as err:
        build_strategy(rule).setup(ctx(world=no_public))
    assert err.value.field == "data.public_frac"


def test_fd_and_local_run_without_a_transfer_set():
    no_public = build_world(WorldSpec(dataset="digits", num_clients=3, public_frac=0.0))
    for rule in ("fd", "local"):
        build_strategy(rule).setup(ctx(world=no_public))


@pytest.mark.parametrize("rule", ["peer", "wml", "fd"])
def test_peer_rules_need_two_clients(rule):
    with pytest.raises(ConfigError, match="at least 2 clients"):
        build_strategy(rule).check(("mlp64",), 1)


@pytest.mark.parametrize("rule", ["fedavg", "feddf"])
def test_weight_rules_refuse_heterogeneous_students(rule):
    with pytest.raises(ConfigError, match="one architecture") as err:
        build_strategy(rule).check(("mlp32", "cnn"), 3)
    assert err.value.field == "students"
