"""The paper's setting: a teacher trained on more data than any client, prototype rules' server
maths, and the defaults each kind of world gets."""

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.student.exchange import class_means_record
from peerkd.wire.protocol import CFG_PROTO_DIM, CFG_TEMPERATURE, KEY_LOGITS
from peerkd.world.build import WorldSpec, build_world
from peerkd.world.transfer import TEXT_TRANSFER
from strategies import build_strategy

DIGITS = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=40))
TEXT = build_world(WorldSpec(dataset="synthtext", data_size=6000, num_clients=2, seed=0))


def ctx(world, students=("mlp64",)):
    return ServerContext(world, students, 0, torch.device("cpu"), 1, 1e-3, 32)


def test_the_pool_teacher_sees_every_labelled_row_no_client_holds():
    # Prepare: shards capped at 40 rows leave most of the private pool to nobody.
    held = DIGITS.splits.pool[np.concatenate(DIGITS.partitions)]
    pool = build_strategy("teacher_pool")
    # Execute: what each teacher would train on.
    x_pool, _ = pool.teacher_data(DIGITS)
    x_server, _ = build_strategy("teacher").teacher_data(DIGITS)
    # Assert: server split + spare rows; no client's row, no transfer row; far more than the server's.
    expected = len(DIGITS.splits.server) + len(DIGITS.splits.pool) - len(held)
    assert len(x_pool) == expected > 3 * len(x_server)
    rows = {r.tobytes() for r in x_pool}
    assert not any(DIGITS.data.x[i].tobytes() in rows for i in held if (DIGITS.data.x[held] != 0).any())
    assert not any(DIGITS.data.x[i].tobytes() in rows for i in DIGITS.splits.public[:50])
    with pytest.raises(ConfigError, match="strategy.teacher_data"):
        build_strategy("teacher", teacher_data="clients")
    with pytest.raises(ConfigError, match="oracle's teacher trains on the clients' shards"):
        build_strategy("oracle", teacher_data="pool").teacher_data(DIGITS)


def test_temperature_zero_is_four_for_images_and_one_for_text():
    for world, t in ((DIGITS, 4.0), (TEXT, 1.0)):
        rule = build_strategy("peer")
        rule.setup(ctx(world, ("tlm",) if world is TEXT else ("mlp64",)))
        assert rule.temperature == 0 and rule.kd_temperature == t and rule.round_config()[CFG_TEMPERATURE] == t
    explicit = build_strategy("peer", temperature=2.0)
    explicit.setup(ctx(TEXT, ("tlm",)))
    assert explicit.kd_temperature == 2.0


def test_text_worlds_distill_on_at_most_256_public_windows():
    assert len(TEXT.splits.public) > TEXT_TRANSFER == len(TEXT.transfer_x) == 256
    asked = build_world(WorldSpec(dataset="synthtext", data_size=6000, num_clients=2, seed=0, transfer_size=400))
    assert len(asked.transfer_x) == 400


def proto_reply(node, client, means, counts):
    request = Message(RecordDict(), dst_node_id=node, message_type="train.proto")
    record = class_means_record(np.asarray(means, np.float32), np.asarray(counts, np.float32))
    metrics = MetricRecord({"partition-id": client, "num-examples": 10})
    return Message(RecordDict({"metrics": metrics, KEY_LOGITS: record}), reply_to=request)


def test_fedproto_sends_the_count_weighted_prototypes_and_its_width(flower_identity):
    # Prepare: mlp32 and mlp64 students meet in 64 dimensions (the widest).
    rule = build_strategy("fedproto")
    rule.setup(ctx(DIGITS, ("mlp32", "mlp64")))
    assert rule.round_config()[CFG_PROTO_DIM] == 64 and rule.targets_for([1]) == {1: None}
    a, b = np.zeros((10, 64)), np.zeros((10, 64))
    a[0], b[0], b[1] = 1.0, 4.0, 2.0
    # Execute: class 0 held by both (1 and 3 rows), class 1 by the second only, the rest by nobody.
    rule.aggregate_round(1, [proto_reply(1, 0, a, [1] + [0] * 9), proto_reply(2, 1, b, [3, 5] + [0] * 8)])
    table = rule.targets_for([1, 2])[1]
    # Assert: (1·1 + 3·4) / 4 = 3.25; class 1: 2; unheld classes NaN (sent as masked rows).
    np.testing.assert_allclose(table[0], 3.25)
    np.testing.assert_allclose(table[1], 2.0)
    assert np.isnan(table[2:]).all()


def test_fedtgp_trains_prototypes_that_separate_the_classes(flower_identity):
    rule = build_strategy("fedtgp", server_epochs=200)
    rule.setup(ctx(DIGITS))
    assert rule.targets_for([1]) == {1: None}  # nothing trained before the first replies
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 64)) * 3
    replies = [proto_reply(n, n - 1, centres + rng.normal(size=(10, 64)) * 0.1, [5] * 10) for n in (1, 2, 3)]
    metrics = rule.aggregate_round(1, replies)
    protos = rule.targets_for([1])[1]
    # Every client prototype is nearest its own class's trained prototype, by at least the margin.
    dist = np.linalg.norm(centres[:, None] - protos[None], axis=-1)
    assert (dist.argmin(axis=1) == np.arange(10)).all()
    assert metrics["tgp_margin"] > 0 and np.isfinite(metrics["tgp_loss"])
    assert set(rule.state_dict()) >= {"generator", "margin", "trained"}
