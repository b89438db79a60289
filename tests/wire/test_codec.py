import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from peerkd.wire.codec import (
    Codec,
    CodecError,
    HeldArray,
    array_bytes,
    check_weights,
    decode_array,
    decode_logits,
    encode_arrays,
    encode_logits,
    serialized_size,
    to_array,
    to_numpy,
)


def test_logits_round_trip_and_wire_size():
    logits = np.arange(12, dtype=np.float64).reshape(4, 3)
    record = encode_logits(logits)
    out = decode_logits(record, (4, 3))
    np.testing.assert_array_equal(out, logits.astype(np.float32))
    # 12 float32 values = 48 bytes of data plus numpy's .npy header (128 bytes for this shape).
    size = array_bytes(RecordDict({"logits": record}))
    assert size == len(record["logits"].data)
    assert 48 < size <= 48 + 128


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 2), np.float32), "shape"),
        (np.full((4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 3), np.inf, np.float32), "NaN or infinity"),
        (np.zeros((4, 3), np.int32), "dtype"),
    ],
)
def test_decode_rejects_malformed_logits(bad, match):
    with pytest.raises(CodecError, match=match):
        decode_logits(ArrayRecord({"logits": Array(bad)}), (4, 3))


def test_decode_rejects_missing_array_and_forged_bytes():
    with pytest.raises(CodecError, match="no 'logits'"):
        decode_logits(ArrayRecord({"other": Array(np.zeros((4, 3), np.float32))}), (4, 3))
    forged = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"\x00" * 7)
    with pytest.raises(CodecError):
        decode_logits(ArrayRecord({"logits": forged}), (4, 3))


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.array([1.0, 2.0, 3.0], np.float32), "shape"),
        (np.array([1, 0], np.int32), "float"),
        (np.array([1.0, np.nan], np.float32), "NaN"),
    ],
)
def test_one_array_of_a_record_is_validated_like_logits(arr, match):
    # A count, a mask, a vector: decoded alone, with the same checks as a logits matrix.
    np.testing.assert_array_equal(decode_array(to_array(np.array([3.0, 1.0], np.float32)), (2,)), [3.0, 1.0])
    with pytest.raises(CodecError, match=match):
        decode_array(Array(arr), (2,))


def test_check_weights_against_reference():
    ref = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(2, np.float32))})
    check_weights(ArrayRecord({"w": Array(np.ones((2, 2), np.float32)), "b": Array(np.ones(2, np.float32))}), ref)
    with pytest.raises(CodecError, match="shape"):
        check_weights(ArrayRecord({"w": Array(np.ones((3, 2), np.float32)), "b": Array(np.ones(2, np.float32))}), ref)
    with pytest.raises(CodecError, match="names"):
        check_weights(ArrayRecord({"w": Array(np.ones((2, 2), np.float32))}), ref)
    with pytest.raises(CodecError, match="NaN"):
        check_weights(
            ArrayRecord({"w": Array(np.full((2, 2), np.nan, np.float32)), "b": Array(np.ones(2, np.float32))}), ref
        )


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "topk"])
def test_held_arrays_weigh_and_serialise_as_flowers_own(codec):
    # Prepare: every array each codec sends, held (no bytes made) and as Flower builds it
    values = np.random.default_rng(0).standard_normal((70, 10)).astype(np.float32)
    held = encode_arrays("logits", values, Codec(codec))
    # Execute / Assert: the size counted without bytes is the size of Flower's bytes; the bytes,
    # Flower's deflated form (what its simulation and deployments send), a pickle, all equal
    for name, arr in held.items():
        assert isinstance(arr, HeldArray) and "_data" not in arr.__dict__
        own = Array(arr.values.copy())
        assert serialized_size(arr) == len(own.data) and "_data" not in arr.__dict__
        assert arr.data == own.data and arr.deflate() == own.deflate() and arr.object_id == own.object_id, name
        back = pickle.loads(pickle.dumps(arr))
        assert type(back) is Array and back == own
    flowers = sum(len(Array(a.values.copy()).data) for a in held.values())
    assert array_bytes(RecordDict({"r": ArrayRecord(held)})) == flowers


def test_a_held_array_reads_back_without_a_copy_and_cannot_be_changed_through_it():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    arr = to_array(values)
    out = to_numpy(arr)
    assert np.shares_memory(out, values) and not out.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0] = 1.0
    arr.data = Array(np.zeros((2, 3), np.float32)).data  # new bytes replace the values
    assert arr.values is None and to_numpy(arr).tolist() == [[0.0] * 3] * 2
