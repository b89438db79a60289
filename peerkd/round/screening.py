"""Screening of a client's reply before anything in it reaches an aggregate or a results file.

A reply is accepted only if it is exactly what the protocol describes: known record names
holding records of the right kind, the metrics the protocol defines (required ones present,
each of the right type and range, no others), and whatever the rule checks in its arrays
(``check_reply``: names, shapes, dtypes, decodable bytes, finite values). Anything else is a
rejection with a one-line reason; no reply, however forged, raises out of ``screen_reply``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from peerkd.wire import protocol as P
from peerkd.wire.codec import CodecError

# Record names a reply may carry, with the record type each must be.
REPLY_RECORDS: dict[str, type] = {
    P.KEY_METRICS: MetricRecord,
    P.KEY_LOGITS: ArrayRecord,
    P.KEY_ARRAYS: ArrayRecord,
    P.KEY_PROBE: ArrayRecord,
    P.KEY_INFO: ConfigRecord,
}
# Metrics a reply may carry beyond the required partition id, test accuracy and test loss.
DP_METRICS = (P.METRIC_DP_STEPS, P.METRIC_DP_NOISE, P.METRIC_DP_RATE)  # example-level DP: all three or none
OPTIONAL_METRICS = (P.METRIC_NUM_EXAMPLES, P.METRIC_TRAIN_LOSS, P.METRIC_TRAIN_S, *DP_METRICS)
INT64_MAX = 2**63 - 1  # the largest integer a MetricRecord carries over the wire
REPLY_METRICS = (P.METRIC_PARTITION, P.METRIC_TEST_ACC, P.METRIC_TEST_LOSS, *OPTIONAL_METRICS)


class ReplyChecker(Protocol):
    """What screening needs of a rule: its own check of the reply's arrays."""

    def check_reply(self, content: RecordDict) -> None: ...


def screen_reply(reply: Message, strategy: ReplyChecker, num_clients: int) -> tuple[dict[str, Any] | None, str | None]:
    """The reply's metrics if it is well-formed, else None and the reason it was rejected.

    Parameters
    ----------
    reply : Message
        A client's reply, as pulled from the Grid.
    strategy : ReplyChecker
        The run's rule; its ``check_reply`` validates the arrays it needs.
    num_clients : int
        Partition ids must lie in ``0..num_clients-1``.
    """
    try:
        if reply.has_error():
            return None, error_reason(str(reply.error.reason))
        content = reply.content
    except Exception as exc:  # noqa: BLE001  (a forged reply can fail anywhere: a rejection, never a crash)
        return None, f"malformed reply ({type(exc).__name__}: {_short(str(exc))})"
    return screen_content(content, strategy, num_clients)


def screen_content(
    content: RecordDict, strategy: ReplyChecker, num_clients: int
) -> tuple[dict[str, Any] | None, str | None]:
    """``screen_reply`` for a reply's records (a stacked round's flagged rows come here too)."""
    try:
        reason = _records_problem(content) or _metrics_problem(dict(content[P.KEY_METRICS]), num_clients)
        if reason:
            return None, reason
        strategy.check_reply(content)
        return dict(content[P.KEY_METRICS]), None
    except CodecError as exc:
        return None, _short(str(exc))
    except Exception as exc:  # noqa: BLE001  (a forged reply can fail anywhere: a rejection, never a crash)
        return None, f"malformed reply ({type(exc).__name__}: {_short(str(exc))})"


def error_reason(reason: str) -> str:
    """The rejection of an error reply whose reason is ``reason`` (its end: a traceback ends with its exception)."""
    return f"client error: {_short(reason, tail=True)}"


def _records_problem(content: RecordDict) -> str | None:
    """Why the reply's record names or types break the protocol, or None."""
    if P.KEY_METRICS not in content:
        return "no metrics record"
    for name, record in content.items():
        expected = REPLY_RECORDS.get(name)
        if expected is None:
            return f"unknown record {_short(repr(name))} (allowed: {', '.join(REPLY_RECORDS)})"
        if not isinstance(record, expected):
            return f"record {name!r} holds a {type(record).__name__}, expected {expected.__name__}"
    return None


def _metrics_problem(values: dict[str, Any], num_clients: int) -> str | None:
    """Why the reply's metrics break the protocol, or None."""
    if unknown := sorted(set(values) - set(REPLY_METRICS)):
        return f"unknown metric {_short(repr(unknown[0]))} (allowed: {', '.join(REPLY_METRICS)})"
    client = values.get(P.METRIC_PARTITION)
    if not _is_int(client) or not 0 <= client < num_clients:
        return f"{P.METRIC_PARTITION} {_short(repr(client))} outside 0..{num_clients - 1}"
    acc = values.get(P.METRIC_TEST_ACC)
    if not isinstance(acc, float) or not 0.0 <= acc <= 1.0:
        return f"{P.METRIC_TEST_ACC} {_short(repr(acc))} outside [0, 1]"
    for key in (P.METRIC_TEST_LOSS, P.METRIC_TRAIN_LOSS, P.METRIC_TRAIN_S):
        value = values.get(key)
        if (key == P.METRIC_TEST_LOSS or value is not None) and not _finite_at_least(value, 0.0):
            return f"{key} {_short(repr(value))} is not a finite number >= 0"
    n = values.get(P.METRIC_NUM_EXAMPLES)
    if n is not None and (not _is_int(n) or not 1 <= n <= INT64_MAX):
        return f"{P.METRIC_NUM_EXAMPLES} {_short(repr(n))} is not an integer in 1..2**63-1"
    return _dp_problem(values)


def _dp_problem(values: dict[str, Any]) -> str | None:
    """Why the reply's DP-SGD metrics are not all three of: steps (integer >= 0), noise multiplier
    (finite >= 0), sampling rate (in (0, 1]), or None (none of them is fine too)."""
    present = [k for k in DP_METRICS if k in values]
    if not present:
        return None
    if len(present) < len(DP_METRICS):
        return f"DP-SGD metrics come together: {', '.join(DP_METRICS)}; got only {', '.join(present)}"
    steps, noise, rate = (values[k] for k in DP_METRICS)
    if not _is_int(steps) or not 0 <= steps <= INT64_MAX:
        return f"{P.METRIC_DP_STEPS} {_short(repr(steps))} is not an integer >= 0"
    if not _finite_at_least(noise, 0.0):
        return f"{P.METRIC_DP_NOISE} {_short(repr(noise))} is not a finite number >= 0"
    if not _finite_at_least(rate, 0.0) or not 0.0 < rate <= 1.0:
        return f"{P.METRIC_DP_RATE} {_short(repr(rate))} outside (0, 1]"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_at_least(value: Any, low: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low


def _short(text: str, limit: int = 300, tail: bool = False) -> str:
    """``text`` on one line, at most ``limit`` characters (a forged reply may carry megabytes of it);
    ``tail`` keeps the end (a client's traceback ends with its exception)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return "..." + text[3 - limit :] if tail else text[: limit - 3] + "..."
