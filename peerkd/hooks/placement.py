"""Where the students ran: the summary's ``clients_per_node`` (Ray nodes; empty outside Ray)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peerkd.round.hook import RoundHook, RunRecord
from peerkd.wire.protocol import INFO_HOST, INFO_IP, INFO_RAY_NODE


def clients_per_node(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{ray node id: {host, ip, clients}}`` of client rows that name a Ray node (``{}`` outside Ray)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if INFO_RAY_NODE in r:
            entry = out.setdefault(
                r[INFO_RAY_NODE], {INFO_HOST: r.get(INFO_HOST), INFO_IP: r.get(INFO_IP), "clients": 0}
            )
            entry["clients"] += 1
    return dict(sorted(out.items()))


class PlacementHook(RoundHook):
    """The summary's ``clients_per_node``, from each client's last row."""

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        return {"clients_per_node": clients_per_node(record.latest.values())}
