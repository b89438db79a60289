"""The record builders of ``peerkd.wire.records`` return what Flower's constructors return, checked
by Flower where the input is not plainly of the record's types."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from peerkd.wire.codec import encode_logits
from peerkd.wire.records import config_record, metric_record, record_dict, reply_message

METRICS = {"partition-id": 3, "num-examples": 42, "test-acc": 0.5, "test-loss": 1.25}
CONFIG = {"arch": "mlp64", "round": 2, "lr": 0.01, "reply-logits": True, "blob": b"\x00\x01"}


def _same(ours, flowers) -> None:
    assert type(ours) is type(flowers)
    assert ours == flowers
    assert dict(ours) == dict(flowers)


def test_metric_and_config_records_equal_flowers():
    _same(metric_record(METRICS), MetricRecord(METRICS))
    _same(config_record(CONFIG), ConfigRecord(CONFIG))
    _same(metric_record({}), MetricRecord({}))


def test_record_dict_serialises_as_flowers():
    records = {
        "metrics": metric_record(METRICS),
        "info": config_record({"arch": "mlp64"}),
        "logits": encode_logits(np.arange(6, dtype=np.float32).reshape(3, 2)),
    }
    ours, flowers = record_dict(records), RecordDict(records)
    _same(ours, flowers)
    assert recorddict_to_proto(ours).SerializeToString() == recorddict_to_proto(flowers).SerializeToString()
    assert set(ours.array_records) == {"logits"} and set(ours.metric_records) == {"metrics"}


def test_records_are_not_shared_with_the_input():
    values = dict(METRICS)
    record = metric_record(values)
    values["test-acc"] = 0.9
    assert record["test-acc"] == 0.5
    record["train-loss"] = 0.25  # the record stays an ordinary, checked Flower record
    with pytest.raises(TypeError):
        record["bad"] = "text"


@pytest.mark.parametrize(
    ("build", "values"),
    [
        (metric_record, {"flag": True}),  # bool is no metric
        (metric_record, {"acc": "high"}),
        (metric_record, {1: 0.5}),
        (config_record, {"x": object()}),
        (record_dict, {"metrics": {"acc": 0.5}}),  # a plain dict is no record
    ],
)
def test_what_flower_refuses_is_refused(build, values):
    with pytest.raises(TypeError):
        build(values)


def test_numpy_scalars_take_flowers_path():
    """A NumPy float64 is a float to Flower (a subclass) but not plainly one: Flower checks it and keeps it."""
    record = metric_record({"acc": np.float64(0.5), "n": 3})
    assert record == MetricRecord({"acc": np.float64(0.5), "n": 3})
    with pytest.raises(TypeError):
        metric_record({"acc": np.float32(0.5)})


def test_reply_message_answers_the_message():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    msg = Message(RecordDict({"config": ConfigRecord({"round": 1})}), dst_node_id=1_005, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m-1"
    out = reply_message(msg, {"metrics": metric_record(METRICS)})
    assert out.metadata.reply_to_message_id == "m-1" and out.metadata.message_type == "train"
    assert out.content == RecordDict({"metrics": MetricRecord(METRICS)})
    assert isinstance(out.content["metrics"], MetricRecord)
