"""Per-round wall time on loopback for a few cluster sizes (``peerkd-deploy bench``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from peerkd.deploy.cluster import Cluster
from peerkd.deploy.launch import start_local, submit_run, wait_for_summary


def bench(state: Path, sizes: list[int], rounds: int, app: Path, secure: bool, tuned: bool) -> list[dict]:
    """Per-round wall time of `peer` on digits for each cluster size (loopback, fresh cluster each)."""
    rows = []
    for n in sizes:
        sub = state / f"{'tuned' if tuned else 'baseline'}-{n}"
        out = sub / "out"
        cluster = Cluster(sub)
        start_local(sub, n, secure=secure, tuned=tuned)  # refuses a state in use; cleans up if it fails
        try:
            submit_run(sub, f"strategy='peer' data='digits' num-clients={n} rounds={rounds} out='{out}'", app)
            wait_for_summary(out, cluster, 120 + 60 * rounds * max(1, n // 2))
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            times = [r["round_s"] for r in lines if r.get("type") == "round"]
            rows.append(
                {
                    "nodes": n,
                    "tuned": tuned,
                    "round_s": times,
                    "mean_round_s": sum(times) / len(times),
                    "load_avg": os.getloadavg()[0],
                }
            )
        finally:
            cluster.stop()
    return rows
