"""Logits on the wire: encode to and decode from Flower ArrayRecords, validated.

Arrays travel as Flower serialises them (``numpy.save`` bytes, never pickle). Decoding
checks name, shape, dtype and finiteness, so a malformed or malicious reply is refused
before it can reach an aggregate.

A ``(rows, C)`` matrix travels in one of four codecs (``Codec``), named by the arrays the
record holds, so a decoder needs no other setting:

- ``fp32``, ``fp16``: ``<name>`` in that float type.
- ``int8``: ``<name>`` int8 with one affine map per block of ``INT8_BLOCK`` rows (the last block
  may be shorter), ``<name>.scale`` and ``<name>.zero`` float32 ``(ceil(rows / INT8_BLOCK),)``:
  value = q·scale + zero, q in [-127, 127] spanning the block's min..max. A per-row map cost
  8 bytes a row beside 10 one-byte values on 10 classes (2.2× below float32); per block of 32
  rows it costs a quarter of a byte (3.65× on 500 × 10), and the error stays within half a
  step of the block's range.
- ``topk``: ``<name>`` float16 ``(rows, k)``, the row's k largest values, ``<name>.index``
  ``(rows, k)`` unsigned ints, their columns, and ``<name>.fill`` float16 ``(rows,)``, the mean
  of the values dropped, which fills the rest of the row. For logits this keeps the row's mean
  and the gap between the kept classes and the others; for probabilities it is the mass the k
  values leave, spread evenly, so a row still sums to 1.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from peerkd.clock import timed
from peerkd.errors import check_choice, check_range
from peerkd.wire.protocol import ARRAY_COUNTS, ARRAY_LOGITS

CODECS = ("fp32", "fp16", "int8", "topk")
INT8_BLOCK = 32  # rows sharing one int8 scale and zero point
_FP16_MAX = float(np.finfo(np.float16).max)
_INDEX_DTYPES = ("uint8", "uint16", "uint32")


class CodecError(ValueError):
    """A record that does not hold what the protocol says it must."""


@dataclass(frozen=True)
class Codec:
    """How a ``(rows, C)`` matrix is packed: ``name`` in ``CODECS``; ``k`` columns kept by ``topk``."""

    name: str = "fp32"
    k: int = 3

    def __post_init__(self) -> None:
        check_choice("codec", self.name, CODECS)
        check_range("codec.k", self.k, 1)


FP32 = Codec()


def array_record(arrays: dict[str, Array]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` themselves: Flower's ``ArrayRecord(dict)`` rebuilds each
    from its bytes, which would make a ``HeldArray``'s bytes at once."""
    record = ArrayRecord()
    for name, arr in arrays.items():
        record[name] = arr
    return record


@timed("messages")
def encode_logits(logits: np.ndarray, codec: Codec = FP32, probs: bool = False) -> ArrayRecord:
    """Pack a ``(P, C)`` logits (or, with ``probs``, probabilities) matrix into an ArrayRecord."""
    return array_record(encode_arrays(ARRAY_LOGITS, logits, codec, probs))


def encode_class_table(table: np.ndarray, counts: np.ndarray, codec: Codec = FP32) -> ArrayRecord:
    """A class-table reply's record (FD's per-class mean logits ``(C, C)``, the prototype rules'
    mean embeddings ``(C, D)``): the table in ``codec`` and the ``(C,)`` label counts."""
    return array_record({**encode_arrays(ARRAY_LOGITS, table, codec), ARRAY_COUNTS: to_array(counts)})


def encode_arrays(name: str, values: np.ndarray, codec: Codec = FP32, probs: bool = False) -> dict[str, Array]:
    """The arrays that carry a ``(rows, C)`` matrix under ``name`` in ``codec`` (see the module doc)."""
    values = np.asarray(values, dtype=np.float32)
    if codec.name == "fp16":
        return {name: to_array(_to_fp16(values))}
    if codec.name == "int8":
        q, scale, zero = quantize_int8(values)
        return {name: to_array(q), f"{name}.scale": to_array(scale), f"{name}.zero": to_array(zero)}
    if codec.name == "topk" and codec.k < values.shape[1]:
        index, kept, fill = top_k(values, codec.k)
        return {
            name: to_array(_to_fp16(kept)),
            f"{name}.index": to_array(index),
            f"{name}.fill": to_array(_to_fp16(fill)),
        }
    return {name: to_array(values)}


def quantize_int8(values: np.ndarray, block: int = INT8_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine int8 per block of ``block`` rows: ``q``, ``scale``, ``zero`` (one per block) with
    ``values ≈ q·scale[row // block] + zero[row // block]``.

    A block's min maps to -127 and its max to 127: rows ``[0, 1]`` and ``[2, 2]`` in one block give
    zero 1, scale 1/127, q ``[[-127, 0], [127, 127]]``. A constant block gets scale 1 and q 0.
    """
    rows = len(values)
    starts = np.arange(0, rows, block)
    lo = np.minimum.reduceat(values.min(axis=1), starts) if rows else np.zeros(0, np.float32)
    hi = np.maximum.reduceat(values.max(axis=1), starts) if rows else np.zeros(0, np.float32)
    zero = ((hi.astype(np.float64) + lo) / 2).astype(np.float32)
    scale = ((hi.astype(np.float64) - lo) / 254).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    per_row = np.arange(rows) // block
    q = np.clip(np.rint((values - zero[per_row, None]) / scale[per_row, None]), -127, 127).astype(np.int8)
    return q, scale, zero


def dequantize_int8(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, block: int = INT8_BLOCK) -> np.ndarray:
    """``quantize_int8``'s inverse, in float64: ``q·scale + zero`` with each row's block's map."""
    per_row = np.arange(len(q)) // block
    return q.astype(np.float64) * scale[per_row, None] + zero[per_row, None]


def _to_fp16(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` largest values (descending), their columns in the smallest unsigned dtype,
    and the mean of the values dropped: ``[[1, 5, 0, 3]]``, k 2 -> ``[[1, 3]]``, ``[[5, 3]]``, ``[0.5]``."""
    order = np.argsort(-values, axis=1, kind="stable")
    dtype = next(np.dtype(d) for d in _INDEX_DTYPES if values.shape[1] <= np.iinfo(d).max + 1)
    fill = np.take_along_axis(values, order[:, k:], axis=1).astype(np.float64).mean(axis=1)
    return order[:, :k].astype(dtype), np.take_along_axis(values, order[:, :k], axis=1), fill.astype(np.float32)


def fill_top_k(index: np.ndarray, kept: np.ndarray, fill: np.ndarray, columns: int) -> np.ndarray:
    """The ``(rows, columns)`` matrix ``top_k`` encoded: ``kept`` at ``index``, ``fill`` elsewhere.

    ``fill_top_k([[1, 3]], [[5, 3]], [0.5], 4) == [[0.5, 5, 0.5, 3]]``.
    """
    out = np.repeat(np.asarray(fill, dtype=np.float64)[:, None], columns, axis=1)
    np.put_along_axis(out, np.asarray(index, dtype=np.int64), np.asarray(kept, dtype=np.float64), axis=1)
    return out.astype(np.float32)


def to_array(values: np.ndarray) -> Array:
    """A Flower Array of ``values``: it holds them and makes the bytes ``Array(values)`` holds
    (``numpy.save``'s) only when something reads ``data``: Flower's serialisation in its
    simulation and deployments. In-process (the batched engine) no bytes are made at all;
    ``serialized_size`` counts them exactly and ``to_numpy`` reads the values. ``values`` must not
    change afterwards (the codecs' outputs and the engines' logits are new arrays)."""
    return HeldArray(np.ascontiguousarray(values))


class HeldArray(Array):
    """A Flower Array that keeps its values and serialises them on first read of ``data``
    (with a cached ``numpy.save`` header); pickled, it is a plain Array of those bytes."""

    def __init__(self, values: np.ndarray):  # noqa: D107  (Array's own __init__ would serialise at once)
        self.__dict__.update(dtype=str(values.dtype), shape=tuple(values.shape), stype="numpy.ndarray")
        self.__dict__["_values"] = values

    @property
    def data(self) -> bytes:  # type: ignore[override]
        if "_data" not in self.__dict__:
            values = self.__dict__["_values"]
            self.__dict__["_data"] = _npy_header(values.dtype.str, values.shape) + values.tobytes()
        return self.__dict__["_data"]

    @data.setter
    def data(self, value: bytes) -> None:  # new bytes: the values no longer describe them
        self.__dict__["_data"] = value
        self.__dict__.pop("_values", None)

    @property
    def values(self) -> np.ndarray | None:
        """The values, read-only, while the bytes are theirs (None once ``data`` was set)."""
        values = self.__dict__.get("_values")
        if values is None:
            return None
        view = values.view()
        view.flags.writeable = False
        return view

    def _fields(self) -> tuple:
        """An Array's four fields, in its constructor's order."""
        return self.dtype, tuple(self.shape), self.stype, self.data

    def plain(self) -> Array:
        """The Array Flower would have built: the same fields and bytes."""
        return Array(*self._fields())

    def deflate(self) -> bytes:  # Flower's wire form names the class: an Array's, so that any peer inflates it
        return self.plain().deflate()

    def __reduce__(self):
        return Array, self._fields()


def serialized_size(arr: Array) -> int:
    """Bytes of ``arr.data``, without making them for a ``HeldArray``."""
    values = arr.values if isinstance(arr, HeldArray) else None
    if values is None:
        return len(arr.data)
    return len(_npy_header(values.dtype.str, values.shape)) + values.nbytes


def to_numpy(arr: Array) -> np.ndarray:
    """The array in a Flower Array: a ``HeldArray``'s values (read-only, not copied); bytes with the
    header ``numpy.save`` writes for its declared dtype and shape are read directly, anything else
    goes through ``numpy.load`` (no pickle)."""
    if isinstance(arr, HeldArray) and (values := arr.values) is not None:
        return values
    data = arr.data
    try:
        header = _npy_header(np.dtype(arr.dtype).str, tuple(arr.shape))
    except (TypeError, ValueError):
        header = None
    if header is not None and data.startswith(header):
        out = np.frombuffer(data, dtype=np.dtype(arr.dtype), offset=len(header))
        if out.size == int(np.prod(arr.shape)):
            return out.reshape(arr.shape).copy()
    return arr.numpy()


@functools.lru_cache(maxsize=256)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The header ``numpy.save`` writes for a C-ordered array of ``descr`` and ``shape``."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=np.dtype(descr)), allow_pickle=False)
    return buf.getvalue()[: buf.tell() - int(np.prod(shape)) * np.dtype(descr).itemsize]


@timed("messages")
def decode_logits(record: ArrayRecord, shape: tuple[int, ...], probs: bool = False) -> np.ndarray:
    """Unpack and validate logits (or, with ``probs``, probabilities) in any codec; raise
    CodecError on any mismatch.

    Parameters
    ----------
    record : ArrayRecord
        The record from a message.
    shape : tuple[int, ...]
        Expected ``(P, C)``: transfer-set size by number of classes (or ``(C,)`` for a vector).
    probs : bool
        The matrix holds probabilities: a ``topk`` encoding must then be >= 0 and sum to at most 1.
    """
    if not isinstance(record, ArrayRecord) or ARRAY_LOGITS not in record:
        raise CodecError(f"no {ARRAY_LOGITS!r} array in record")
    if f"{ARRAY_LOGITS}.index" in record and len(shape) == 2:
        return _decode_top_k(record, shape, probs)
    if f"{ARRAY_LOGITS}.scale" in record and len(shape) == 2:
        return _decode_int8(record, shape)
    return decode_array(record[ARRAY_LOGITS], shape)


def decode_array(arr: Array, shape: tuple[int, ...]) -> np.ndarray:
    """One float array of a record (a matrix, a count, a mask, a vector) of ``shape``, finite, as
    float32; CodecError otherwise."""
    if tuple(arr.shape) != tuple(shape):
        raise CodecError(f"logits shape {tuple(arr.shape)}, expected {tuple(shape)}")
    if arr.dtype not in ("float32", "float16", "float64"):
        raise CodecError(f"logits dtype {arr.dtype}, expected a float type")
    out = _decoded(arr, tuple(shape), "logits")
    if not np.isfinite(out).all():
        raise CodecError("logits contain NaN or infinity")
    return out.astype(np.float32, copy=False)


def _decode_typed(arr: Array, shape: tuple[int, ...], dtypes: tuple[str, ...], what: str) -> np.ndarray:
    """An array of ``shape`` and one of ``dtypes``; CodecError otherwise."""
    if tuple(arr.shape) != tuple(shape) or arr.dtype not in dtypes:
        raise CodecError(f"{what}: {arr.dtype} {tuple(arr.shape)}, expected {'|'.join(dtypes)} {tuple(shape)}")
    try:
        out = to_numpy(arr)
    except Exception as exc:
        raise CodecError(f"{what} bytes do not decode: {exc}") from exc
    if out.shape != tuple(shape):
        raise CodecError(f"{what} bytes decode to shape {out.shape}, header says {tuple(shape)}")
    return out


def _decode_int8(record: ArrayRecord, shape: tuple[int, int]) -> np.ndarray:
    """An int8 encoding: validated scales (finite, > 0) and zero points (finite), one per block of
    ``INT8_BLOCK`` rows, dequantised."""
    q = _decode_typed(record[ARRAY_LOGITS], shape, ("int8",), "int8 values")
    if f"{ARRAY_LOGITS}.zero" not in record:
        raise CodecError("int8 encoding without zero points")
    blocks = (-(-shape[0] // INT8_BLOCK),)
    scale = decode_array(record[f"{ARRAY_LOGITS}.scale"], blocks)
    zero = decode_array(record[f"{ARRAY_LOGITS}.zero"], blocks)
    if (scale <= 0).any():
        raise CodecError("int8 scales must be > 0")
    out = dequantize_int8(q, scale, zero)
    if not np.isfinite(out.astype(np.float32)).all():
        raise CodecError("int8 values decode beyond float32")
    return out.astype(np.float32)


def _decode_top_k(record: ArrayRecord, shape: tuple[int, int], probs: bool) -> np.ndarray:
    """A top-k encoding: validated indices (in range, unique per row), values filled out."""
    kept_arr = record[ARRAY_LOGITS]
    k = tuple(kept_arr.shape)[1] if len(kept_arr.shape) == 2 else 0
    if not 1 <= k < shape[1]:
        raise CodecError(f"top-k values of shape {tuple(kept_arr.shape)}, expected ({shape[0]}, k < {shape[1]})")
    kept = decode_array(kept_arr, (shape[0], k))
    index = _decode_typed(record[f"{ARRAY_LOGITS}.index"], (shape[0], k), _INDEX_DTYPES, "top-k indices")
    if (index >= shape[1]).any():
        raise CodecError(f"top-k indices outside 0..{shape[1] - 1}")
    ordered = np.sort(index, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise CodecError("top-k indices repeat within a row")
    if f"{ARRAY_LOGITS}.fill" not in record:
        raise CodecError("top-k encoding without fill values")
    fill = decode_array(record[f"{ARRAY_LOGITS}.fill"], (shape[0],))
    if probs and ((kept < 0).any() or (fill < 0).any() or (kept.sum(axis=1) + fill * (shape[1] - k) > 1.001).any()):
        raise CodecError("top-k probabilities must be >= 0 and sum to at most 1 per row")
    return fill_top_k(index, kept, fill, shape[1])


def check_weights(record: ArrayRecord, reference: ArrayRecord) -> None:
    """Raise CodecError unless ``record`` has the names, shapes and finite values of ``reference``."""
    if set(record.keys()) != set(reference.keys()):
        raise CodecError(f"weight names differ from the global model's: {sorted(set(record) ^ set(reference))}")
    for name, ref in reference.items():
        arr = record[name]
        if tuple(arr.shape) != tuple(ref.shape):
            raise CodecError(f"weight {name!r} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}")
        values = _decoded(arr, tuple(ref.shape), f"weight {name!r}", np.dtype(ref.dtype))
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CodecError(f"weight {name!r} contains NaN or infinity")


def _decoded(arr: Array, shape: tuple[int, ...], what: str, dtype: np.dtype | None = None) -> np.ndarray:
    """The numbers in ``arr`` if its bytes decode to an array of ``shape`` and ``dtype`` (default: any
    float type), else CodecError: forged bytes must not reach ``np.isfinite`` as text or objects."""
    try:
        out = to_numpy(arr)
    except Exception as exc:  # truncated or forged bytes, a dtype numpy cannot read
        raise CodecError(f"{what} bytes do not decode: {type(exc).__name__}") from exc
    expected = "a float type" if dtype is None else str(dtype)
    if (out.dtype.kind != "f") if dtype is None else (out.dtype != dtype):
        raise CodecError(f"{what} bytes hold {out.dtype} values, expected {expected}")
    if out.shape != shape:
        raise CodecError(f"{what} bytes decode to shape {out.shape}, header says {shape}")
    return out


@timed("messages")
def array_bytes(content: RecordDict) -> int:
    """Bytes of every serialised array in a message's content (what crosses the wire for arrays).
    Reads the records themselves: ``content.array_records`` builds a checked copy on every call."""
    records = [r for r in content.values() if isinstance(r, ArrayRecord)]
    return sum(serialized_size(arr) for record in records for arr in record.values())
