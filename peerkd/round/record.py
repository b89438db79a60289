"""The rows and the summary a run writes: pure functions of what the loop measured."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peerkd.round.results import accuracy_stats
from peerkd.wire import protocol as P

TOTALS = ("bytes_up", "bytes_down", "bytes_measure", "rejected", "replies")  # summed over rounds


def client_row(rnd: int, node: int, values: dict[str, Any], info: dict[str, Any], accuracy, traffic) -> dict[str, Any]:
    """One accepted client's row: ``values`` its metrics, ``info`` its arch and placement,
    ``accuracy`` (acc, loss) as the rule reads them, ``traffic`` (up, down, measure) bytes."""
    acc, loss = accuracy
    up, down, measure = traffic
    return {
        "type": "client",
        "round": rnd,
        "client": values[P.METRIC_PARTITION],
        "node_id": node,
        "arch": info["arch"],
        "acc": acc,
        "loss": loss,
        "train_loss": values.get(P.METRIC_TRAIN_LOSS),
        "train_s": values.get(P.METRIC_TRAIN_S),
        "num_examples": values.get(P.METRIC_NUM_EXAMPLES),
        "bytes_up": up,
        "bytes_down": down,
        "bytes_measure": measure,
        **{k: v for k, v in info.items() if k != "arch"},
    }


def round_row(rnd: int, rows: list[dict], rejected: list[dict], down: dict[int, int], answered: set[int]) -> dict:
    """A round's row before the rule's and the hooks' fields: accuracy over ``rows``, replies,
    rejections, nodes that sent nothing, and bytes (rejected replies' uploads count too)."""
    return {
        "type": "round",
        "round": rnd,
        **accuracy_stats([r["acc"] for r in rows]),
        "replies": len(rows),
        "no_reply_accepted": not rows,  # the rule aggregated nothing this round
        "rejected": len(rejected),
        "rejections": rejected,
        "missing": sorted(set(down) - answered),
        "bytes_up": sum(r["bytes_up"] for r in rows) + sum(r["bytes_up"] for r in rejected),
        "bytes_down": sum(down.values()),
        "bytes_measure": sum(r["bytes_measure"] for r in rows),
    }


def round_line(row: dict[str, Any]) -> str:
    """``acc mean 0.862 worst 0.848  10 replies  0.4 s`` for a round's log line."""
    if not row["replies"]:  # a round with no accepted reply has no accuracy to show
        return f"no reply accepted ({row['rejected']} rejected, {len(row['missing'])} missing)  {row['round_s']:.1f} s"
    if row["acc_mean"] is None:  # replies, but none counted: e.g. only attackers sampled (acc is over honest clients)
        return f"no honest accuracy ({row['replies']} replies)  {row['round_s']:.1f} s"
    acc, worst = row["acc_mean"], row["acc_worst"]
    return f"acc mean {acc:.3f} worst {worst:.3f}  {row['replies']} replies  {row['round_s']:.1f} s"


def per_client(latest: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary's per-client list from each client's last accepted row."""
    keys = ("client", "arch", "acc", "loss", "round")
    return [{k: r[k] for k in keys} for _, r in sorted(latest.items())]


def run_summary(run: dict[str, Any], clients: list[dict[str, Any]], totals: dict[str, int], metrics: dict) -> dict:
    """The summary's fields: ``run`` names the run (strategy, dataset, num_clients, rounds,
    seed, students, student_params, private, clients_per_round), ``clients`` its per-client list, ``totals``
    the summed traffic and replies, ``metrics`` the run metrics (``teacher_acc`` among them)."""
    return {
        **{k: run[k] for k in ("strategy", "dataset", "num_clients", "rounds", "seed")},
        **accuracy_stats([r["acc"] for r in clients]),
        "teacher_acc": metrics.get("teacher_acc"),
        "bytes_up": totals["bytes_up"],
        "bytes_down": totals["bytes_down"],
        "per_client": clients,
        "acc_by_arch": by_arch(clients),
        "rejected_replies": totals["rejected"],
        "accepted_replies": totals["replies"],
        "no_reply_accepted": totals["replies"] == 0,  # then every accuracy above is null
        "bytes_measure": totals["bytes_measure"],
        **{k: run[k] for k in ("students", "student_params", "private", "clients_per_round")},
        **{k: v for k, v in metrics.items() if k != "teacher_acc"},
    }


def by_arch(clients: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Accuracy stats and mean test loss (text: nats per token) of each student architecture's clients."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in clients:
        groups.setdefault(str(r["arch"]), []).append(r)
    return {
        arch: {
            **accuracy_stats([r["acc"] for r in rows]),
            "loss_mean": _mean([r["loss"] for r in rows]),
            "clients": len(rows),
        }
        for arch, rows in sorted(groups.items())
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
