"""What a student reads from a request and writes into its reply, for both engines.

The per-client ClientApp (``peerkd.client_app``) and the batched engine
(``peerkd.batched``) decode requests and build replies with these functions alone, so
the two engines send the same records, and the ServerApp counts the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from peerkd import protocol as P
from peerkd.codec import decode_logits, encode_logits, to_array
from peerkd.placement import placement
from peerkd.protocol import RoundParams
from peerkd.world import World


def student_arch(params: RoundParams, client: int, node_config: Mapping[str, Any] | None = None) -> str:
    """The student architecture of ``client``: the node's own ``student`` setting, else
    ``params.students`` round-robin by partition id."""
    default = params.students[client % len(params.students)]
    return str((node_config or {}).get(P.NODE_STUDENT, default))


def transfer_targets(content: RecordDict, world: World) -> np.ndarray | None:
    """The ``(P, C)`` targets on the transfer set a request carries, or None; CodecError if malformed."""
    shape = (len(world.transfer_x), world.num_classes)
    return decode_logits(content[P.KEY_TARGETS], shape) if P.KEY_TARGETS in content else None


def class_targets(content: RecordDict, num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """FD's per-class targets: the ``(C, C)`` table and a ``(C,)`` bool mask of its valid rows
    (all valid when the request sends no mask), or None without targets."""
    if P.KEY_TARGETS not in content:
        return None
    record = content[P.KEY_TARGETS]
    table = decode_logits(record, (num_classes, num_classes))
    if P.ARRAY_MASK not in record:
        return table, np.ones(num_classes, dtype=bool)
    mask = decode_logits(ArrayRecord({P.ARRAY_LOGITS: record[P.ARRAY_MASK]}), (num_classes,))
    return table, mask > 0


def metrics_record(client: int, num_examples: int, acc: float, loss: float, **extra: float) -> MetricRecord:
    """A reply's metrics: partition id, shard size, test accuracy and loss, then ``extra``."""
    return MetricRecord(
        {
            P.METRIC_PARTITION: client,
            P.METRIC_NUM_EXAMPLES: num_examples,
            P.METRIC_TEST_ACC: acc,
            P.METRIC_TEST_LOSS: loss,
            **extra,
        }
    )


def reply_records(
    params: RoundParams,
    metrics: MetricRecord,
    transfer_logits: Callable[[], np.ndarray],
    probe_logits: Callable[[], np.ndarray],
    records: dict | None = None,
) -> dict[str, Any]:
    """A trained student's reply records: ``metrics``, ``records``, and what ``params`` asks for.

    Parameters
    ----------
    params : RoundParams
        The request's settings (``reply_logits``, ``reply_probs``, ``reply_probe``).
    metrics : MetricRecord
        From ``metrics_record``.
    transfer_logits, probe_logits : Callable[[], np.ndarray]
        The student's logits on the transfer set and on the server split's inputs; called
        only when asked for.
    records : dict | None
        Handler-specific records (weights, FD class means).
    """
    out = {P.KEY_METRICS: metrics, **(records or {})}
    if params.reply_logits:
        logits = transfer_logits()
        if params.reply_probs:
            logits = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
        out[P.KEY_LOGITS] = encode_logits(logits)
    if params.reply_probe:
        out[P.KEY_PROBE] = encode_logits(probe_logits())
    return out


def query_records(client: int, logits: np.ndarray) -> dict[str, Any]:
    """A ``query.logits`` reply's records: the transfer-set logits and the partition id."""
    return {P.KEY_LOGITS: encode_logits(logits), P.KEY_METRICS: MetricRecord({P.METRIC_PARTITION: client})}


def class_means_record(means: np.ndarray, counts: np.ndarray) -> ArrayRecord:
    """FD's reply: per-class mean logits ``(C, C)`` and label counts ``(C,)``."""
    return ArrayRecord({P.ARRAY_LOGITS: to_array(means), P.ARRAY_COUNTS: to_array(counts)})


def reply(msg: Message, arch: str, records: dict) -> Message:
    """The reply to ``msg`` carrying ``records``, the student's architecture and, inside Ray,
    the node it ran on (``peerkd.placement``)."""
    info = ConfigRecord({"arch": arch, **placement()})
    return Message(RecordDict({**records, P.KEY_INFO: info}), reply_to=msg)
