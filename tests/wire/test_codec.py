import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from peerkd.wire.codec import CodecError, array_bytes, check_weights, decode_logits, encode_logits


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
