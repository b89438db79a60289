"""Comparison tables from run summaries: pure functions, no I/O."""

from __future__ import annotations

from typing import Any

import numpy as np

COLUMNS = ("rule", "runs", "acc_mean", "acc_mean_std", "acc_worst", "acc_worst_std", "teacher_acc",
           "kb_up_per_round", "kb_down_per_round", "wall_s")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def compare_table(summaries: list[dict[str, Any]], rules: list[str]) -> list[dict[str, Any]]:
    """One row per rule: mean ± sample std over seeds of mean and worst-client accuracy,
    communication per client per round (KB up and down, from serialised arrays) and wall time."""
    rows = []
    for rule in rules:
        runs = [s for s in summaries if s["strategy"] == rule]
        if not runs:
            continue
        acc, acc_sd = _mean_std([s["acc_mean"] for s in runs])
        worst, worst_sd = _mean_std([s["acc_worst"] for s in runs])
        per = [s["rounds"] * s["num_clients"] * 1000 for s in runs]
        rows.append({
            "rule": rule, "runs": len(runs), "acc_mean": acc, "acc_mean_std": acc_sd,
            "acc_worst": worst, "acc_worst_std": worst_sd,
            "teacher_acc": _mean_std([s.get("teacher_acc") for s in runs])[0],
            "kb_up_per_round": float(np.mean([s["bytes_up"] / d for s, d in zip(runs, per)])),
            "kb_down_per_round": float(np.mean([s["bytes_down"] / d for s, d in zip(runs, per)])),
            "wall_s": float(np.mean([s["wall_s"] for s in runs])),
        })
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f} ± {std:.3f}"


def table_cells(row: dict[str, Any]) -> list[str]:
    """Human-readable cells of one compare_table row, in TABLE_HEADER order."""
    teacher = "–" if row["teacher_acc"] is None else f"{row['teacher_acc']:.3f}"
    return [row["rule"], _pm(row["acc_mean"], row["acc_mean_std"]), _pm(row["acc_worst"], row["acc_worst_std"]),
            teacher, f"{row['kb_up_per_round']:.1f} / {row['kb_down_per_round']:.1f}", f"{row['wall_s']:.0f}"]


TABLE_HEADER = ["rule", "accuracy (mean ± std)", "worst client", "teacher", "KB/round/client up / down", "wall s/run"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-readable markdown table of compare_table rows."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
