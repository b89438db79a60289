"""Perplexity in reports of text runs: pure functions over the runs ``simulations.report`` groups
(and shows in ``report.md``), on the statistics of ``simulations.stats``.

A text run's summary carries ``ppl_mean`` (mean over clients of ``exp(test loss)``), the
teacher model's ``teacher_ppl`` (teacher rules) and, on ``synthtext``, ``floor_ppl``: the
perplexity of the Bayes-optimal predictor on the same test text, below which no model can go.
Lower is better, so a paired difference ``peer − teacher`` below 0 favours the peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simulations.stats import Point, comparisons, fmt_diff, fmt_mean_std, key_names, mean_std, paired_by_seed

PPL_NOTE = (
    "Perplexity is `exp` of the mean next-token cross-entropy on the held-out text (lower is better; "
    "a uniform guess over V tokens scores V). The floor is the Bayes-optimal predictor's perplexity on "
    "the same text (it knows the language, not the document's style). Differences: paired by seed, 95% t interval."
)


def is_text(runs: Sequence[dict[str, Any]]) -> bool:
    """Whether the runs report perplexity (a text world)."""
    return any(r["summary"].get("ppl_mean") is not None for r in runs)


def _cell(runs: Sequence[dict[str, Any]], key: str) -> str:
    mean, std = mean_std([r["summary"].get(key) for r in runs])
    return fmt_mean_std(mean, std)


def perplexity_rows(
    groups: dict[Point, list[dict[str, Any]]], rules: Sequence[str], pair: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """Per grid point: each rule's mean client perplexity (mean ± std over seeds), the teacher
    model's, the floor, and the paired perplexity differences (``pair``, rule − local)."""
    keys = [k for k, _ in next(iter(groups))]
    names, pairs = key_names(keys), comparisons(rules, pair)
    header = [names[k] for k in keys] + list(rules) + ["teacher model", "floor"] + [f"{a} − {b}" for a, b in pairs]
    rows = []
    for point, runs in groups.items():
        by_rule = {rule: [r for r in runs if r["summary"]["strategy"] == rule] for rule in rules}
        teachers = [r for r in runs if r["summary"].get("teacher_ppl") is not None]
        rows.append(
            [str(v) for _, v in point]
            + [_cell(by_rule[rule], "ppl_mean") if by_rule[rule] else "–" for rule in rules]
            + [_cell(teachers, "teacher_ppl") if teachers else "–", _cell(runs, "floor_ppl")]
            + [fmt_diff(paired_by_seed(runs, a, b, metric="ppl_mean")) for a, b in pairs]
        )
    return header, rows


def floor_level(runs: Sequence[dict[str, Any]]) -> float | None:
    """The mean perplexity floor of the runs (each seed's test text has its own), or None without one."""
    levels = [r["summary"]["floor_ppl"] for r in runs if r["summary"].get("floor_ppl") is not None]
    return float(sum(levels) / len(levels)) if levels else None
