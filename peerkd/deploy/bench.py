"""Where a deployed round's time goes (``peerkd-deploy bench``): wall, start-up, ClientApp work, waiting.

Each (setup, cluster size) gets a fresh cluster and one ``peer`` run on ``digits``. Per round:
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
from pathlib import Path

from peerkd.deploy.cluster import Cluster
from peerkd.deploy.launch import start_local, submit_run, wait_for_summary
from peerkd.env import TIMING_ENV
from peerkd.round.results import read_jsonl

__all__ = ["bench", "round_breakdown"]

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


def bench_one(state: Path, nodes: int, rounds: int, app: Path, secure: bool, setup: str) -> dict:
    """One fresh cluster of ``nodes`` in ``setup``, one run; its per-round breakdown and means."""
    sub, timing_file = state / f"{setup}-{nodes}", state / f"{setup}-{nodes}" / TIMING_FILE
    out = sub / "out"
    sub.mkdir(parents=True, exist_ok=True)
    timing_file.unlink(missing_ok=True)
    cluster = Cluster(sub)
    start_local(sub, nodes, secure=secure, setup=setup, node_env={TIMING_ENV: str(timing_file)})
    try:
        submit_run(sub, f"strategy='peer' data='digits' num-clients={nodes} rounds={rounds} out='{out}'", app)
        summary = wait_for_summary(out, cluster, 120 + 60 * rounds * max(1, nodes // 2))
    finally:
        cluster.stop()
    lines = _read_jsonl(out / "metrics.jsonl")
    per_round = round_breakdown(
        [r for r in lines if r.get("type") == "round"],
        [r for r in lines if r.get("type") == "client"],
        _read_jsonl(timing_file),
    )
    means = {f"mean_{k}": _mean(per_round, k) for k in ("wall_s", "train_s", "handler_s", "startup_s", "waiting_s")}
    return {
        "setup": setup,
        "nodes": nodes,
        "secure": secure,
        **means,
        "acc_mean": summary["acc_mean"],
        "rounds": per_round,
        "load_avg": os.getloadavg()[0],
    }


def bench(state: Path, sizes: list[int], rounds: int, app: Path, secure: bool, setups: list[str]) -> list[dict]:
    """``bench_one`` for every setup and cluster size (fresh cluster each), in that order."""
    return [bench_one(state, n, rounds, app, secure, s) for s in setups for n in sizes]
