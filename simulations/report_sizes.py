"""Results per student size in reports of runs with several architectures (size families,
``students=[family:tlm:4]``; mixed zoos): pure functions over the runs ``simulations.report``
groups, from each summary's ``acc_by_arch`` and ``student_params``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from simulations.stats import Point, fmt_mean_std, key_names, mean_std

SIZES_NOTE = (
    "Each architecture's clients, mean ± std over seeds of their mean accuracy; perplexity is `exp` of their mean "
    "test loss (text). Family members are named `<kind>@<reference>:<d>`: about 1/d of the reference's parameters."
)


def has_sizes(runs: Sequence[dict[str, Any]]) -> bool:
    """Whether any run had students of more than one architecture."""
    return any(len(r["summary"].get("acc_by_arch") or {}) > 1 for r in runs)


def size_rows(groups: dict[Point, list[dict[str, Any]]], rules: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Per grid point, rule and architecture (largest first): parameters, accuracy, perplexity."""
    keys = [k for k, _ in next(iter(groups))]
    names = key_names(keys)
    header = [names[k] for k in keys] + ["rule", "student", "parameters", "accuracy", "perplexity"]
    rows = []
    for point, runs in groups.items():
        for rule in rules:
            mine = [r["summary"] for r in runs if r["summary"]["strategy"] == rule]
            params = {a: n for s in mine for a, n in (s.get("student_params") or {}).items()}
            for arch in sorted({a for s in mine for a in s.get("acc_by_arch") or {}}, key=lambda a: -params.get(a, 0)):
                stats = [s["acc_by_arch"][arch] for s in mine if arch in s.get("acc_by_arch", {})]
                acc = mean_std([x.get("acc_mean") for x in stats])
                losses = [x.get("loss_mean") for x in stats if x.get("loss_mean") is not None]
                ppl = mean_std([math.exp(v) for v in losses]) if mine and mine[0].get("ppl_mean") else (None, None)
                rows.append(
                    [str(v) for _, v in point]
                    + [rule, arch, f"{params[arch]:,}" if arch in params else "–", fmt_mean_std(*acc)]
                    + [fmt_mean_std(*ppl) if ppl[0] is not None else "–"]
                )
    return header, rows
