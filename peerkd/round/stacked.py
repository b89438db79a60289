"""A stacked round: one request for many nodes and their replies as arrays, no Message per node.

The batched engine answers every node of a round in-process. Where nothing reads the Messages
(no hook that reads them, a rule with a stacked form, a request the grid can answer as arrays),
the loop sends the round as one ``StackedRequest`` and gets one ``StackedReplies`` back: each
node's metrics as a column, the transfer-set logits as one ``(n, P, C)`` array. The bytes are
what the Messages would have weighed (``peerkd.wire.codec.array_bytes`` of one sample record:
in the fp32 codec a record's size is fixed by its shape; tests compare them with the Message
path's counts), screening gives the same verdicts and reasons (the same checks, row by row only
for the rows a vectorised check flags), and the client rows are the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from peerkd.round import record
from peerkd.round.screening import error_reason, screen_content
from peerkd.wire import protocol as P
from peerkd.wire.codec import encode_class_table, encode_logits
from peerkd.wire.records import metric_record

# The metrics a stacked reply carries, as the Message path's ``metrics_record`` writes them.
COLUMNS = (P.METRIC_PARTITION, P.METRIC_NUM_EXAMPLES, P.METRIC_TEST_ACC, P.METRIC_TEST_LOSS)
TRAINED = (P.METRIC_TRAIN_LOSS, P.METRIC_TRAIN_S)


@dataclass(frozen=True)
class StackedRequest:
    """One round's request to ``nodes``: what each node's Message would have said."""

    message_type: str
    config: ConfigRecord  # every node's config (the rule's entries merged in)
    nodes: list[int]
    targets: np.ndarray | None  # (n, P, C) float32 rows, as each node decodes its target; None: no node has one
    has_target: np.ndarray  # (n,) bool
    bytes_down: int  # one target's serialised bytes (a node without a target is sent none)
    # (n, 2) float32 [senders, included] per node: ``targets`` are then the senders' sum, which the
    # grid turns into each node's leave-one-out mean from the logits it sent last (peer_sum)
    peers: np.ndarray | None = None


@dataclass(frozen=True)
class StackedReplies:
    """The answers of a stacked round, one row per node that answered, in request order.

    ``metrics`` holds ``COLUMNS`` and ``TRAINED`` as ``(n,)`` arrays; ``logits`` the transfer-set
    logits (or probabilities) when the request asked for them, or, with ``counts``, each
    student's per-class table and label counts (FD's class means, the prototype rules' class-mean
    embeddings: ``(n, C, W)``, ``(n, C)``); ``probe`` the server split's logits when it asked for
    those (WML); ``failed`` the error each other node's client met (Flower's reason text, as an
    error reply carries it)."""

    nodes: np.ndarray  # (n,) int64
    archs: list[str]
    metrics: dict[str, np.ndarray]
    logits: np.ndarray | None  # (n, P, C) float32
    bytes_logits: int  # one reply's logits record, serialised
    failed: dict[int, str] = field(default_factory=dict)
    probe: np.ndarray | None = None  # (n, R, C) float32
    bytes_probe: int = 0
    counts: np.ndarray | None = None  # (n, C) label counts: ``logits`` are then class tables (FD, prototypes)

    def traffic(self, measured: bool) -> tuple[int, int]:
        """One reply's array bytes as (the rule's traffic, measurement traffic): the logits are
        measurement traffic when only a measure asked for them (``measured``)."""
        if measured:
            return self.bytes_probe, self.bytes_logits
        return self.bytes_logits + self.bytes_probe, 0

    def values(self, i: int) -> dict[str, Any]:
        """Row ``i``'s metrics as a reply's MetricRecord holds them (Python ints and floats)."""
        return {k: col[i].item() for k, col in self.metrics.items()}

    def content(self, i: int) -> RecordDict:
        """Row ``i`` as the reply's records (for the rare row a check flags: the same checks, the same reasons)."""
        records: dict[str, Any] = {P.KEY_METRICS: metric_record(self.values(i))}
        if self.counts is not None:
            records[P.KEY_LOGITS] = encode_class_table(self.logits[i], self.counts[i])
        elif self.logits is not None:
            records[P.KEY_LOGITS] = encode_logits(self.logits[i])
        if self.probe is not None:
            records[P.KEY_PROBE] = encode_logits(self.probe[i])
        return RecordDict(records)

    def take(self, keep: np.ndarray) -> StackedReplies:
        """The rows ``keep`` (a bool mask); no copy when it keeps them all."""
        if keep.all():
            return self
        logits, probe, counts = (None if a is None else a[keep] for a in (self.logits, self.probe, self.counts))
        archs = [a for a, k in zip(self.archs, keep) if k]
        metrics = {k: v[keep] for k, v in self.metrics.items()}
        return StackedReplies(
            self.nodes[keep], archs, metrics, logits, self.bytes_logits, {}, probe, self.bytes_probe, counts
        )


def screen_stacked(replies: StackedReplies, rule: Any, num_clients: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``screen_reply`` for every row at once: the mask of accepted rows and each rejected node
    with its reason. A vectorised check flags rows out of range or not finite (and repeated
    partition ids); each flagged row then goes through ``screen_content``, so a rejection reads
    as on the Message path. The nodes whose client failed are rejected with their error."""
    m = replies.metrics
    client, acc = m[P.METRIC_PARTITION], m[P.METRIC_TEST_ACC]
    ok = (client >= 0) & (client < num_clients) & (acc >= 0) & (acc <= 1) & (m[P.METRIC_NUM_EXAMPLES] >= 1)
    for key in (P.METRIC_TEST_LOSS, *TRAINED):
        if key in m:
            ok &= np.isfinite(m[key]) & (m[key] >= 0)
    for rows in (replies.logits, replies.probe, replies.counts):  # NaN and infinity carry into a row's sum
        if rows is not None:  # (an overflow is only flagged)
            ok &= np.isfinite(rows.sum(axis=tuple(range(1, rows.ndim))))
    if replies.counts is not None:  # FD's check_reply: no negative count
        ok &= (replies.counts >= 0).all(axis=1)
    rejected = [(node, error_reason(reason)) for node, reason in replies.failed.items()]
    repeats = _repeats(client)
    seen = set(client[ok & ~repeats].tolist())  # an unflagged row is its partition's first
    keep = np.ones(len(client), dtype=bool)
    for i in np.flatnonzero(~ok | repeats):
        values, reason = screen_content(replies.content(i), rule, num_clients)
        if values is not None and values[P.METRIC_PARTITION] in seen:
            values, reason = None, f"duplicate {P.METRIC_PARTITION} {values[P.METRIC_PARTITION]}"
        if values is None:
            keep[i] = False
            rejected.append((int(replies.nodes[i]), reason))
        else:
            seen.add(values[P.METRIC_PARTITION])
    return keep, rejected


def _repeats(values: np.ndarray) -> np.ndarray:
    """Rows whose value an earlier row has too."""
    _, first = np.unique(values, return_index=True)
    out = np.ones(len(values), dtype=bool)
    out[first] = False
    return out


def client_rows(rnd: int, replies: StackedReplies, rule: Any, bytes_down: dict[int, int]) -> list[dict[str, Any]]:
    """``record.client_row`` for every (accepted) row: the rows the Message path writes. The
    logits count as the rule's traffic, or as measurement traffic when only the agreement
    measure asked for them (``rule.measurement_keys``)."""
    up, measure = replies.traffic(P.KEY_LOGITS in rule.measurement_keys())
    columns = {k: v.tolist() for k, v in replies.metrics.items()}
    rows = []
    for i, (node, arch) in enumerate(zip(replies.nodes.tolist(), replies.archs)):
        values = {k: col[i] for k, col in columns.items()}
        accuracy = rule.client_accuracy(values) or (values[P.METRIC_TEST_ACC], values[P.METRIC_TEST_LOSS])
        rows.append(record.client_row(rnd, node, values, {"arch": arch}, accuracy, (up, bytes_down[node], measure)))
    return rows
