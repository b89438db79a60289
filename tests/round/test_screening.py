"""Reply screening: a malformed or forged reply is a logged rejection, never a crash."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from peerkd.round.contract import ServerContext
from peerkd.round.screening import screen_reply
from peerkd.wire.codec import encode_logits
from peerkd.wire.protocol import ARRAY_LOGITS, KEY_LOGITS
from peerkd.world.build import WorldSpec, build_world
from strategies import build_strategy

WORLD = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
SHAPE = (len(WORLD.transfer_x), WORLD.num_classes)


def reply(metrics, **records):
    request = Message(RecordDict(), dst_node_id=7, message_type="train.distill")
    return Message(RecordDict({"metrics": MetricRecord(metrics), **records}), reply_to=request)


def peer():
    s = build_strategy("peer")
    s.setup(ServerContext(WORLD, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
    return s


GOOD = {"partition-id": 1, "num-examples": 10, "test-acc": 0.5, "test-loss": 1.2}


def test_a_well_formed_reply_passes(flower_identity):
    values, reason = screen_reply(reply(GOOD, **{KEY_LOGITS: encode_logits(np.zeros(SHAPE))}), peer(), 3)
    assert reason is None and values["partition-id"] == 1


def test_missing_or_bad_test_loss_is_rejected(flower_identity):
    logits = {KEY_LOGITS: encode_logits(np.zeros(SHAPE))}
    no_loss = {k: v for k, v in GOOD.items() if k != "test-loss"}
    assert screen_reply(reply(no_loss, **logits), peer(), 3) == (None, "test-loss None is not a finite number >= 0")
    assert screen_reply(reply({**GOOD, "test-loss": float("nan")}, **logits), peer(), 3)[0] is None


def test_text_bytes_labelled_float32_are_a_rejection_not_a_crash(flower_identity):
    # Prepare: an Array whose header says float32 (P, C) but whose bytes are text.
    forged = Array(dtype="float32", shape=tuple(SHAPE), stype="numpy.ndarray", data=b"not a numpy array at all")
    # Execute
    values, reason = screen_reply(reply(GOOD, **{KEY_LOGITS: ArrayRecord({ARRAY_LOGITS: forged})}), peer(), 3)
    # Assert
    assert values is None and reason


# --- every other way a reply can break the protocol: a rejection with its reason ---------


def forged(dtype="float32", shape=SHAPE, data=b"not a numpy array at all"):
    return ArrayRecord({ARRAY_LOGITS: Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data)})


def npy_bytes(values):
    import io

    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "metrics, records, reason",
    [
        ({**GOOD, "secret": 1.0}, {}, "unknown metric 'secret'"),
        ({**GOOD, "dp-steps": 5}, {}, "DP-SGD metrics come together: dp-steps, dp-sgd-noise, dp-rate; got only"),
        ({**GOOD, "dp-steps": -1, "dp-sgd-noise": 1.0, "dp-rate": 0.5}, {}, "dp-steps -1 is not an integer >= 0"),
        ({**GOOD, "dp-steps": 5, "dp-sgd-noise": math.nan, "dp-rate": 0.5}, {}, "dp-sgd-noise nan is not a finite"),
        ({**GOOD, "dp-steps": 5, "dp-sgd-noise": 1.0, "dp-rate": 0.0}, {}, "dp-rate 0.0 outside (0, 1]"),
        ({k: v for k, v in GOOD.items() if k != "partition-id"}, {}, "partition-id None outside 0..2"),
        ({k: v for k, v in GOOD.items() if k != "test-acc"}, {}, "test-acc None outside [0, 1]"),
        ({**GOOD, "partition-id": 3}, {}, "partition-id 3 outside 0..2"),
        ({**GOOD, "test-acc": 1.5}, {}, "test-acc 1.5 outside [0, 1]"),
        ({**GOOD, "test-acc": [0.5]}, {}, "test-acc [0.5] outside [0, 1]"),
        ({**GOOD, "train-loss": float("inf")}, {}, "train-loss inf is not a finite number >= 0"),
        ({**GOOD, "train-s": -1.0}, {}, "train-s -1.0 is not a finite number >= 0"),
        ({**GOOD, "num-examples": 0}, {}, "num-examples 0 is not an integer in 1..2**63-1"),
        ({**GOOD, "num-examples": 2.5}, {}, "num-examples 2.5 is not an integer in"),
        (GOOD, {"extra": ArrayRecord()}, "unknown record 'extra'"),
        (
            GOOD,
            {KEY_LOGITS: ConfigRecord({"logits": b"x"})},
            "record 'logits' holds a ConfigRecord, expected ArrayRecord",
        ),
        (GOOD, {"info": MetricRecord({"arch": 1})}, "record 'info' holds a MetricRecord, expected ConfigRecord"),
        (GOOD, {KEY_LOGITS: forged()}, "logits bytes do not decode"),
        (GOOD, {KEY_LOGITS: forged(data=npy_bytes(np.full(SHAPE, "ab")))}, "logits bytes hold <U2 values"),
        (GOOD, {KEY_LOGITS: forged(data=npy_bytes(np.zeros((2, 2), np.float32)))}, "logits bytes decode to shape"),
        (GOOD, {KEY_LOGITS: forged(dtype="int64")}, "logits dtype int64, expected a float type"),
        (GOOD, {KEY_LOGITS: forged(dtype="not-a-dtype", data=b"")}, "logits dtype not-a-dtype"),
        (GOOD, {KEY_LOGITS: forged(shape=(10**9, 10**9))}, "logits shape (1000000000, 1000000000)"),
    ],
)
def test_each_break_of_the_protocol_is_a_rejection_with_its_reason(flower_identity, metrics, records, reason):
    # Prepare: a reply that is well-formed but for one thing.
    content = {KEY_LOGITS: encode_logits(np.zeros(SHAPE)), **records}
    # Execute
    values, why = screen_reply(reply(metrics, **content), peer(), 3)
    # Assert
    assert values is None and why.startswith(reason), why


def test_a_reply_carrying_a_client_error_is_a_rejection(flower_identity):
    from flwr.app import Error

    request = Message(RecordDict(), dst_node_id=7, message_type="train.distill")
    failed = Message(Error(code=1, reason="Traceback\n" + "x" * 10_000 + "\nRuntimeError: boom"), reply_to=request)
    values, why = screen_reply(failed, peer(), 3)
    assert values is None and why.startswith("client error: ...xxx") and why.endswith("x RuntimeError: boom")
    assert len(why) <= len("client error: ") + 300


def fedavg():
    s = build_strategy("fedavg")
    s.setup(ServerContext(WORLD, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
    return s


def test_fedavg_weights_with_forged_bytes_or_counts_are_rejections(flower_identity):
    from peerkd.wire.protocol import KEY_ARRAYS

    rule = fedavg()
    name, ref = next(iter(rule.arrays.items()))
    text = ArrayRecord(
        {**rule.arrays, name: Array(dtype=ref.dtype, shape=tuple(ref.shape), stype=ref.stype, data=b"t")}
    )
    strings = np.full(tuple(ref.shape), "w")
    as_text = ArrayRecord(
        {**rule.arrays, name: Array(dtype=ref.dtype, shape=tuple(ref.shape), stype=ref.stype, data=npy_bytes(strings))}
    )
    cases = [
        ({KEY_ARRAYS: text}, GOOD, f"weight {name!r} bytes do not decode"),
        ({KEY_ARRAYS: as_text}, GOOD, f"weight {name!r} bytes hold <U1 values, expected float32"),
        ({KEY_ARRAYS: rule.arrays}, {k: v for k, v in GOOD.items() if k != "num-examples"}, "num-examples must be"),
        ({KEY_ARRAYS: rule.arrays}, {**GOOD, "num-examples": 2**63}, "num-examples 9223372036854775808 is not"),
    ]
    for records, metrics, reason in cases:
        values, why = screen_reply(reply(metrics, **records), rule, 3)
        assert values is None and why.startswith(reason), why
    assert screen_reply(reply(GOOD, **{KEY_ARRAYS: rule.arrays}), rule, 3)[1] is None


def test_every_rule_aggregates_a_round_with_no_accepted_reply():
    from strategies import RULES, rule_settings

    for name in RULES:
        quick = {k: v for k, v in {"teacher_epochs": 1, "server_epochs": 1}.items() if k in rule_settings(name)}
        rule = build_strategy(name, **quick)
        rule.setup(ServerContext(WORLD, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
        assert isinstance(rule.aggregate_round(1, []), dict), name
        assert rule.agreement_logits([]) is None, name
