"""Codecs for logits on the wire: hand-checked int8 and top-k values, exact byte counts, and
malformed encodings rejected (a rejected reply, never a crash)."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.round.screening import screen_reply
from peerkd.wire.codec import (
    INT8_BLOCK,
    Codec,
    CodecError,
    array_bytes,
    decode_logits,
    dequantize_int8,
    encode_logits,
    fill_top_k,
    quantize_int8,
    to_array,
    to_numpy,
    top_k,
)
from peerkd.wire.protocol import ARRAY_LOGITS, KEY_LOGITS
from peerkd.world.build import WorldSpec, build_world
from strategies import build_strategy


def test_int8_maps_a_blocks_min_and_max_to_the_ends():
    # Prepare: with blocks of 2 rows, rows [0, 1] and [2, 2] span 0..2 -> zero 1, scale 2/254;
    # the constant third row is a block of its own: scale 1, q 0.
    values = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, -1.0]], dtype=np.float32)
    # Execute
    q, scale, zero = quantize_int8(values, block=2)
    # Assert
    assert q.tolist() == [[-127, 0], [127, 127], [0, 0]]
    np.testing.assert_allclose(scale, [2 / 254, 1.0], rtol=1e-6)
    np.testing.assert_allclose(zero, [1.0, -1.0])
    np.testing.assert_allclose(dequantize_int8(q, scale, zero, block=2), values, atol=1e-6)


def test_int8_blocks_are_32_rows_on_the_wire():
    # 70 rows: blocks of 32, 32 and 6 rows; a row in the last block keeps its own range.
    values = np.zeros((70, 3), dtype=np.float32)
    values[:, 0] = 100.0  # the first two blocks span 0..100
    values[64:] = [[0.0, 1.0, 2.0]]  # the last spans 0..2: scale 2/254
    record = encode_logits(values, Codec("int8"))
    assert tuple(record["logits.scale"].shape) == (3,)
    np.testing.assert_allclose(to_numpy(record["logits.scale"]), [100 / 254, 100 / 254, 2 / 254], rtol=1e-6)
    np.testing.assert_allclose(decode_logits(record, (70, 3)), values, atol=1 / 254 + 1e-6)


def test_int8_error_is_at_most_half_a_step_of_its_block():
    values = np.random.default_rng(0).normal(0, 5, (100, 10)).astype(np.float32)
    decoded = decode_logits(encode_logits(values, Codec("int8")), values.shape)
    blocks = np.arange(100) // INT8_BLOCK
    step = np.array([np.ptp(values[blocks == b]) / 254 for b in blocks])
    assert (np.abs(decoded - values) <= step[:, None] / 2 + 1e-5).all()


def test_top_k_keeps_the_largest_and_fills_with_the_mean_of_the_rest():
    # Prepare: k = 2 of [1, 5, 0, 3] keeps 5 (column 1) and 3 (column 3); the dropped 1 and 0 average 0.5.
    index, kept, fill = top_k(np.array([[1.0, 5.0, 0.0, 3.0]], dtype=np.float32), 2)
    assert index.tolist() == [[1, 3]] and kept.tolist() == [[5.0, 3.0]] and fill.tolist() == [0.5]
    assert index.dtype == np.uint8
    # Execute / Assert
    assert fill_top_k(index, kept, fill, 4).tolist() == [[0.5, 5.0, 0.5, 3.0]]
    decoded = decode_logits(encode_logits(np.array([[1.0, 5.0, 0.0, 3.0]]), Codec("topk", 2)), (1, 4))
    assert decoded.tolist() == [[0.5, 5.0, 0.5, 3.0]]


def test_top_k_of_probabilities_spreads_the_mass_left_evenly():
    # 0.6 and 0.2 kept; the dropped 0.05 and 0.15 average 0.1: the row still sums to 1.
    probs = np.array([[0.2, 0.05, 0.6, 0.15]])
    decoded = decode_logits(encode_logits(probs, Codec("topk", 2), probs=True), (1, 4), probs=True)
    np.testing.assert_allclose(decoded, [[0.2, 0.1, 0.6, 0.1]], rtol=1e-3)  # float16 values


@pytest.mark.parametrize(
    ("codec", "payload"),
    [
        # (500, 10) logits; every array carries numpy.save's 128-byte header.
        (Codec("fp32"), 500 * 10 * 4 + 128),
        (Codec("fp16"), 500 * 10 * 2 + 128),
        (Codec("int8"), 500 * 10 + 128 + 2 * (16 * 4 + 128)),  # values; scale, zero per 32 rows
        (Codec("topk", 3), 500 * 3 * 2 + 128 + 500 * 3 + 128 + 500 * 2 + 128),  # fp16 values, uint8 indices, fp16 fill
    ],
)
def test_bytes_are_the_serialised_arrays(codec, payload):
    logits = np.random.default_rng(1).normal(size=(500, 10)).astype(np.float32)
    record = encode_logits(logits, codec)
    assert array_bytes(RecordDict({KEY_LOGITS: record})) == payload
    decoded = decode_logits(record, (500, 10))
    assert decoded.shape == (500, 10) and decoded.dtype == np.float32
    # Every codec keeps the top class, up to int8's step (6/254 here: two close classes may tie).
    top = decoded[np.arange(500), logits.argmax(axis=1)]
    assert (top >= decoded.max(axis=1) - 0.03).all()


def _topk_record(index, kept=None, index_dtype=np.uint8, fill=0.0):
    index = np.asarray(index)
    kept = np.ones(index.shape, dtype=np.float32) if kept is None else np.asarray(kept, dtype=np.float32)
    return ArrayRecord(
        {
            ARRAY_LOGITS: to_array(kept),
            f"{ARRAY_LOGITS}.index": to_array(index.astype(index_dtype)),
            f"{ARRAY_LOGITS}.fill": to_array(np.full(len(index), fill, dtype=np.float32)),
        }
    )


def _int8_record(scale, zero=(0.0,), q_dtype=np.int8):
    return ArrayRecord(
        {
            ARRAY_LOGITS: to_array(np.zeros((1, 3), dtype=q_dtype)),
            f"{ARRAY_LOGITS}.scale": to_array(np.asarray(scale, dtype=np.float32)),
            f"{ARRAY_LOGITS}.zero": to_array(np.asarray(zero, dtype=np.float32)),
        }
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_topk_record([[0, 3]]), "top-k indices outside 0..2"),
        (_topk_record([[1, 1]]), "repeat within a row"),
        (_topk_record([[0, 1]], index_dtype=np.float32), "top-k indices"),
        (_topk_record([[0, 1, 2]]), "k < 3"),
        (_topk_record([[0, 1]], kept=[[np.nan, 1.0]]), "NaN"),
        (_topk_record([[0, 1]], fill=np.inf), "NaN or infinity"),
        (ArrayRecord({k: v for k, v in _topk_record([[0, 1]]).items() if k != "logits.fill"}), "without fill"),
        (_int8_record([0.0]), "scales must be > 0"),
        (_int8_record([np.inf]), "NaN or infinity"),
        (_int8_record([-1.0]), "scales must be > 0"),
        (_int8_record([1.0], zero=(np.nan,)), "NaN or infinity"),
        (_int8_record([1.0], q_dtype=np.int16), "int8 values"),
        (
            ArrayRecord({ARRAY_LOGITS: to_array(np.zeros((1, 3), np.int8)), "logits.scale": to_array(np.ones(1))}),
            "zero",
        ),
    ],
)
def test_malformed_encodings_are_refused(record, message):
    with pytest.raises(CodecError, match=message):
        decode_logits(record, (1, 3))


def test_top_k_probabilities_that_sum_past_one_are_refused():
    with pytest.raises(CodecError, match="sum to at most 1"):
        decode_logits(_topk_record([[0, 1]], kept=[[0.5, 0.3]], fill=0.3), (1, 3), probs=True)
    with pytest.raises(CodecError, match="sum to at most 1"):
        decode_logits(_topk_record([[0, 1]], kept=[[0.5, 0.3]], fill=-0.1), (1, 3), probs=True)


def test_a_bad_encoding_is_a_rejected_reply(flower_identity):
    # Prepare: a peer rule on a digits world, and a reply whose top-k indices point past the classes.
    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
    rule = build_strategy("peer")
    rule.setup(ServerContext(world, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
    p, c = len(world.transfer_x), world.num_classes
    bad = _topk_record(np.tile([c, 0], (p, 1)))
    metrics = MetricRecord({"partition-id": 1, "num-examples": 10, "test-acc": 0.5, "test-loss": 1.2})
    request = Message(RecordDict(), dst_node_id=7, message_type="train.distill")
    # Execute
    values, reason = screen_reply(Message(RecordDict({"metrics": metrics, KEY_LOGITS: bad}), reply_to=request), rule, 3)
    # Assert
    assert values is None and reason == f"top-k indices outside 0..{c - 1}"


def test_codec_settings_are_validated():
    with pytest.raises(ConfigError, match="codec"):
        Codec("int4")
    with pytest.raises(ConfigError, match="codec.k"):
        Codec("topk", 0)
