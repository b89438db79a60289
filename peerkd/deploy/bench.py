"""Where a deployed round's time goes (``peerkd-deploy bench``): wall, start-up, ClientApp work, waiting.

Each (place, setup, cluster size) gets a fresh cluster and one ``peer`` run on ``digits``; the
place is ``loopback`` or ``netns`` (every process in its own network namespace,
``peerkd.deploy.netns``; root only). Per round:
``wall_s`` (the ServerApp's round time, ``metrics.jsonl``), ``train_s`` (the slowest client's
training, as its reply reports it), ``handler_s`` (the slowest ClientApp handler: training,
evaluation, the reply's logits), ``startup_s`` (the longest start-up a message waited for:
a fresh process's interpreter, imports, FAB and app load; a warm ClientApp's pull and first
load), and ``waiting_s`` = wall − the slowest node's start-up + handler: polls, transfers and
the server's own work. Start-up and handler times come from the ClientApps' timing lines
(``$PEERKD_TIMING_LOG``, ``peerkd.student.client_app.record_timing``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from peerkd.deploy import netns
from peerkd.deploy.cluster import Cluster, DeployError
from peerkd.deploy.launch import start_local, submit_run, wait_for_summary
from peerkd.env import TIMING_ENV
from peerkd.round.results import append_jsonl, read_jsonl

__all__ = ["WHERE", "bench", "bench_one", "round_breakdown"]

TIMING_FILE = "timing.jsonl"


def round_breakdown(rounds: list[dict], clients: list[dict], timing: list[dict]) -> list[dict]:
    """Per round: wall, slowest training, slowest handler, longest start-up and the waiting left.

    ``rounds`` and ``clients`` are ``metrics.jsonl``'s round and client rows, ``timing`` the
    ClientApps' timing lines (one per message: node, round, startup_s, handler_s).
    """
    out = []
    for r in rounds:
        n = r["round"]
        mine = [t for t in timing if t["round"] == n]
        train = [c["train_s"] for c in clients if c["round"] == n and c.get("train_s") is not None]
        busiest = max((t["startup_s"] + t["handler_s"] for t in mine), default=0.0)
        out.append(
            {
                "round": n,
                "wall_s": r["round_s"],
                "train_s": max(train, default=0.0),
                "handler_s": max((t["handler_s"] for t in mine), default=0.0),
                "startup_s": max((t["startup_s"] for t in mine), default=0.0),
                "waiting_s": max(0.0, r["round_s"] - busiest),
            }
        )
    return out


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else 0.0


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (``read_jsonl``: a torn line skipped); none if it was never written."""
    return read_jsonl(path) if path.is_file() else []


def _run_loopback(
    sub: Path, nodes: int, run_config: str, app: Path, secure: bool, setup: str, env: dict, timeout: float
) -> dict:
    """A fresh loopback cluster in ``sub``, one run; its summary within ``timeout`` s (everything stopped after)."""
    cluster = Cluster(sub)
    start_local(sub, nodes, secure=secure, setup=setup, node_env=env)
    try:
        submit_run(sub, run_config, app)
        return wait_for_summary(sub / "out", cluster, timeout)
    finally:
        cluster.stop()


def _run_netns(
    sub: Path, nodes: int, run_config: str, app: Path, secure: bool, setup: str, env: dict, timeout: float
) -> dict:
    """As ``_run_loopback`` across network namespaces (``peerkd.deploy.netns``: always TLS + node auth);
    DeployError if anything survived the teardown."""
    spaces, cluster = netns.Namespaces(nodes).create(), Cluster(sub)
    try:
        info = netns.start_netns_cluster(sub, spaces, setup=setup, node_env=env)
        netns.submit_run_in(info, run_config, app)
        summary = wait_for_summary(sub / "out", cluster, timeout)
    except BaseException:  # the run's own error is the one to see: tear down, then let it through
        netns.teardown(cluster, spaces)
        raise
    left = netns.teardown(cluster, spaces)
    if left:
        raise DeployError("the namespace bench left behind: " + "; ".join(left))
    return summary


WHERE = {"loopback": _run_loopback, "netns": _run_netns}


def bench_one(
    state: Path, nodes: int, rounds: int, app: Path, secure: bool, setup: str, where: str = "loopback"
) -> dict:
    """One fresh cluster of ``nodes`` in ``setup`` (``where``: loopback or netns), one run; its per-round
    breakdown and means."""
    sub = state / (f"{setup}-{nodes}" if where == "loopback" else f"{where}-{setup}-{nodes}")
    timing_file = sub / TIMING_FILE
    sub.mkdir(parents=True, exist_ok=True)
    timing_file.unlink(missing_ok=True)
    run_config = f"strategy='peer' data='digits' num-clients={nodes} rounds={rounds} out='{sub / 'out'}'"
    timeout = 120 + 60 * rounds * max(1, nodes // 2)
    summary = WHERE[where](sub, nodes, run_config, app, secure, setup, {TIMING_ENV: str(timing_file)}, timeout)
    lines = _read_jsonl(sub / "out" / "metrics.jsonl")
    per_round = round_breakdown(
        [r for r in lines if r.get("type") == "round"],
        [r for r in lines if r.get("type") == "client"],
        _read_jsonl(timing_file),
    )
    means = {f"mean_{k}": _mean(per_round, k) for k in ("wall_s", "train_s", "handler_s", "startup_s", "waiting_s")}
    return {
        "setup": setup,
        "where": where,
        "nodes": nodes,
        "secure": secure or where == "netns",
        **means,
        "acc_mean": summary["acc_mean"],
        "rounds": per_round,
        "load_avg": os.getloadavg()[0],
    }


def bench(
    state: Path,
    sizes: list[int],
    rounds: int,
    app: Path,
    secure: bool,
    setups: list[str],
    places: tuple[str, ...] = ("loopback",),
) -> Iterator[dict]:
    """``bench_one`` for every place, setup and cluster size (fresh cluster each), in that order; each row
    as soon as it is measured, also appended to ``state/bench.jsonl``."""
    for where in places:
        for setup in setups:
            for n in sizes:
                row = bench_one(state, n, rounds, app, secure, setup, where)
                append_jsonl(state / "bench.jsonl", row)
                yield row
