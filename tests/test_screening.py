"""Reply screening: a malformed or forged reply is a logged rejection, never a crash."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from peerkd.codec import encode_logits
from peerkd.protocol import ARRAY_LOGITS, KEY_LOGITS
from peerkd.server_app import ServerContext, screen_reply
from peerkd.world import WorldSpec, build_world
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
