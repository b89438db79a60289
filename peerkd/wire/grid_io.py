"""Messages through a Flower ``Grid``: waiting for nodes, one push/pull round trip, and what a
reply says about its sender (node, info record, bytes).

The round loop and the fault-injecting grid both send through ``send_and_receive``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from peerkd.errors import RunInterrupted
from peerkd.wire import protocol as P
from peerkd.wire.codec import array_bytes, serialized_size
from peerkd.wire.records import record_dict

log = logging.getLogger("peerkd")

# Seconds between reply pulls (Flower's Grid.send_and_receive sleeps 3 s between pulls).
POLL_S = float(os.environ.get("PEERKD_GRID_POLL_S", "0.2"))
TTL_MARGIN_S = 2.0  # a message lives this much longer than the wait for its reply


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Node ids once ``expected`` have connected; after ``timeout`` go on with those present."""
    deadline = time.monotonic() + timeout
    while len(ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            if not ids:
                raise RuntimeError(f"no node connected within {timeout:g} s (expected {expected})")
            log.warning(
                "only %d of %d nodes connected after %g s; going on with them (with `flwr run`, "
                "pass --federation-config num-supernodes=%d)",
                len(ids),
                expected,
                timeout,
                expected,
            )
            break
        time.sleep(0.1)
    return ids


def send_and_receive(
    grid: Grid,
    messages: list[Message],
    timeout: float,
    poll: float = POLL_S,
    stop: threading.Event | None = None,
    on_pull: Callable[[int], None] | None = None,
) -> tuple[list[Message], dict[str, int]]:
    """Push ``messages``, pull replies every ``poll`` s until all came or ``timeout`` s passed.

    Returns the replies, in the order their messages were sent (pulls return them in any
    order), and the destination node of each pushed message id (an error reply
    the SuperLink writes for an unavailable node names the SuperLink as its source). Same
    contract as ``Grid.send_and_receive``, whose fixed 3 s pull interval dominated a
    deployed round on loopback. Each message's TTL ends with the wait (plus ``TTL_MARGIN_S``), so one still queued
    when the round is abandoned is dropped (by the SuperLink, or by the ClientApp's
    ``drop_expired``) instead of training for a round nobody reads; late replies are
    never pulled. Raises ``RunInterrupted`` once ``stop`` is set. ``on_pull(n)`` hears the
    number of replies in after each pull.
    """
    for m in messages:  # + TTL_MARGIN_S: a reply pulled at the deadline is not yet "expired" (it is missing)
        m.metadata.ttl = timeout + TTL_MARGIN_S + max(0.0, time.time() - m.metadata.created_at)
    pending = {mid for mid in grid.push_messages(messages) if mid}  # None: a message the SuperLink refused
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # push sets the ids
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if on_pull is not None:
            on_pull(len(replies))
        if not pending or time.monotonic() >= deadline:
            break
        _pause(poll, stop)
    order = {mid: k for k, mid in enumerate(sent)}  # replies in send order: aggregates sum in a fixed order
    return sorted(replies, key=lambda r: order.get(r.metadata.reply_to_message_id, len(order))), sent


def _pause(seconds: float, stop: threading.Event | None) -> None:
    """Sleep ``seconds``; raise ``RunInterrupted`` as soon as ``stop`` is set."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise RunInterrupted("stopped while waiting for replies")


def sender(reply: Message, sent: dict[str, int]) -> int:
    """The node a reply answers for: the destination of the message it replies to."""
    return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def reply_info(reply: Message) -> dict[str, Any]:
    """What a reply's info record says of its student: ``arch`` (None if absent) and the Ray
    placement keys the client adds (``peerkd.student.placement``; none outside Ray)."""
    info = reply.content.get(P.KEY_INFO)
    info = info if isinstance(info, ConfigRecord) else {}
    arch = str(info[P.INFO_ARCH]) if P.INFO_ARCH in info else None
    return {"arch": arch, **{k: str(info[k]) for k in P.INFO_PLACEMENT if k in info}}


def reply_bytes(reply: Message, measure_keys: set[str]) -> tuple[int, int]:
    """Serialised array bytes of a reply: (the rule's traffic, measurement-only traffic)."""
    if reply.has_error():
        return 0, 0
    total = array_bytes(reply.content)
    content = reply.content
    records = [content[k] for k in measure_keys if k in content and isinstance(content[k], ArrayRecord)]
    measure = sum(serialized_size(a) for rec in records for a in rec.values())
    return total - measure, measure


def evaluate_messages(node_ids: list[int], config: ConfigRecord) -> list[Message]:
    """One ``evaluate`` message to each of ``node_ids``, every one carrying ``config`` (no arrays)."""
    return [Message(record_dict({P.KEY_CONFIG: config}), dst_node_id=n, message_type=P.MSG_EVALUATE) for n in node_ids]


def evaluate_nodes(
    grid: Grid, node_ids: list[int], config: dict[str, Any], timeout: float, stop: threading.Event | None = None
) -> dict[int, dict[str, Any]]:
    """One ``evaluate`` round trip (no arrays either way): each answering node's metrics and
    info (``reply_info``), by node."""
    replies, sent = send_and_receive(grid, evaluate_messages(node_ids, ConfigRecord(config)), timeout, stop=stop)
    out = {}
    for reply in replies:
        metrics = None if reply.has_error() else reply.content.get(P.KEY_METRICS)
        values = dict(metrics) if isinstance(metrics, MetricRecord) else {}
        if isinstance(values.get(P.METRIC_PARTITION), int) and isinstance(values.get(P.METRIC_TEST_ACC), float):
            out[sender(reply, sent)] = {**values, **reply_info(reply)}
    return out
