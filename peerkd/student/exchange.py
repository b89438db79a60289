"""What a student reads from a request and writes into its reply, for both engines.

The per-client ClientApp (``peerkd.student.client_app``) and the batched engine
(``peerkd.batched``) decode requests and build replies with these functions alone, so
the two engines send the same records, and the ServerApp counts the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from peerkd.hooks.privacy import privatize, privatize_votes, vote_targets
from peerkd.student.placement import placement
from peerkd.wire import protocol as P
from peerkd.wire.codec import Codec, CodecError, decode_array, decode_logits, encode_class_table, encode_logits
from peerkd.wire.protocol import RoundParams
from peerkd.wire.records import config_record, metric_record, reply_message
from peerkd.world.build import World


def student_arch(params: RoundParams, client: int, node_config: Mapping[str, Any] | None = None) -> str:
    """The student architecture of ``client``: the node's own ``student`` setting, else
    ``params.students`` round-robin by partition id."""
    default = params.students[client % len(params.students)]
    return str((node_config or {}).get(P.NODE_STUDENT, default))


def transfer_targets(
    content: RecordDict, world: World, sent: np.ndarray | None = None, params: RoundParams | None = None
) -> np.ndarray | None:
    """The ``(P, C)`` targets on the transfer set a request carries, or None; CodecError if malformed.

    A peers' sum (``peer_sum``: the record also holds ``ARRAY_PEERS``) becomes this node's
    leave-one-out mean, ``sent`` being the logits this node sent last (as the server decoded them).
    Under a vote release (``params.dp_release``) the targets are vote counts: they become the
    labels of their noisy argmax (``vote_targets``).
    """
    targets = _transfer_targets(content, world, sent)
    if targets is None or params is None or params.dp_release != "votes":
        return targets
    return vote_targets(targets, params.temperature)


def _transfer_targets(content: RecordDict, world: World, sent: np.ndarray | None) -> np.ndarray | None:
    if P.KEY_TARGETS not in content:
        return None
    shape = (world.transfer_rows, world.num_classes)
    record = content[P.KEY_TARGETS]
    if P.ARRAY_PEERS not in record:
        return decode_logits(record, shape)
    count, included = decode_array(record[P.ARRAY_PEERS], (2,))
    if count != int(count) or count < 0 or included not in (0, 1) or (included and count < 1):
        raise CodecError(f"peers' sum record [{count:g}, {included:g}] is not [senders >= 0, 0|1]")
    return leave_one_out_from_sum(decode_logits(record, shape), int(count), sent if included else None)


def leave_one_out_from_sum(total: np.ndarray, count: int, own: np.ndarray | None) -> np.ndarray | None:
    """The mean of the other senders' logits from their sum: ``(total - own) / (count - 1)``, or
    ``total / count`` for a node not among the senders (``own`` None); None with no other sender.

    ``leave_one_out_from_sum([[6, 6]], 3, [[1, 3]]) == [[2.5, 1.5]]``.
    """
    return leave_one_out_from_sums(total, count, [own])[0]


def leave_one_out_from_sums(total: np.ndarray, count: int, own: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """``leave_one_out_from_sum`` for many nodes sent the same sum at once (the batched engine's
    cohort): float64 differences and quotients, float32 out, computed by torch over all the rows
    (its threads; the same correctly rounded operations as numpy's)."""
    others = np.array([count - (o is not None) for o in own], dtype=np.float64)
    zero = np.zeros(np.shape(total), np.float32)
    mine = torch.from_numpy(np.stack([zero if o is None else o for o in own])).double()  # float32 or 64: exact
    rest = torch.from_numpy(np.array(total, dtype=np.float64)) - mine
    means = rest.div_(torch.from_numpy(np.maximum(others, 1))[:, None, None]).float().numpy()
    return [means[i] if others[i] >= 1 else None for i in range(len(own))]


def sent_logits(records: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
    """The transfer-set logits a reply's ``records`` carry, decoded as the server decodes them."""
    return decode_logits(records[P.KEY_LOGITS], shape) if P.KEY_LOGITS in records else None


def class_targets(content: RecordDict, num_classes: int, width: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-class targets: the ``(C, width)`` table (FD: ``(C, C)`` logits; prototypes: embeddings)
    and a ``(C,)`` bool mask of its valid rows (all valid when the request sends no mask), or None
    without targets."""
    if P.KEY_TARGETS not in content:
        return None
    record = content[P.KEY_TARGETS]
    table = decode_logits(record, (num_classes, width or num_classes))
    if P.ARRAY_MASK not in record:
        return table, np.ones(num_classes, dtype=bool)
    mask = decode_array(record[P.ARRAY_MASK], (num_classes,))
    return table, mask > 0


def metrics_record(client: int, num_examples: int, acc: float, loss: float, **extra: float) -> MetricRecord:
    """A reply's metrics: partition id, shard size, test accuracy and loss, then ``extra``."""
    return metric_record(
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
    world_seed: int = 0,
) -> dict[str, Any]:
    """A trained student's reply records: ``metrics``, ``records``, and what ``params`` asks for,
    privatised when ``params.dp_noise`` > 0 and packed in ``params``'s codec.

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
    world_seed : int
        With the round and the client, seeds the privacy noise.
    """
    out = {P.KEY_METRICS: metrics, **(records or {})}
    released = {}
    if params.reply_logits:
        released[P.KEY_LOGITS] = transfer_logits()
    if params.reply_probe:
        released[P.KEY_PROBE] = probe_logits()
    if released and params.dp_noise > 0:
        key = (world_seed, params.round, int(metrics[P.METRIC_PARTITION]))
        released = (
            privatize_votes(released, params.dp_noise, key)
            if params.dp_release == "votes"
            else privatize(released, params.dp_clip, params.dp_noise, key)
        )
    codec = Codec(params.codec, params.codec_k)
    for name, values in released.items():
        probs = params.reply_probs and name == P.KEY_LOGITS
        if probs:
            values = torch.softmax(torch.as_tensor(values), dim=1).numpy()
        out[name] = encode_logits(values, codec, probs=probs)
    return out


def query_records(client: int, logits: np.ndarray) -> dict[str, Any]:
    """A ``query.logits`` reply's records: the transfer-set logits and the partition id."""
    return {P.KEY_LOGITS: encode_logits(logits), P.KEY_METRICS: metric_record({P.METRIC_PARTITION: client})}


def class_means_record(means: np.ndarray, counts: np.ndarray, params: RoundParams | None = None) -> ArrayRecord:
    """FD's reply: per-class mean logits ``(C, C)`` (prototype rules: mean embeddings ``(C, D)``) in
    ``params``'s codec and label counts ``(C,)``."""
    return encode_class_table(means, counts, Codec(params.codec, params.codec_k) if params is not None else Codec())


def reply(msg: Message, arch: str, records: dict) -> Message:
    """The reply to ``msg`` carrying ``records``, the student's architecture and, inside Ray,
    the node it ran on (``peerkd.student.placement``)."""
    return reply_message(msg, {**records, P.KEY_INFO: config_record({"arch": arch, **placement()})})
