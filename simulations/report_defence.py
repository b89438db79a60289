"""Defences in reports of attack sweeps: pure functions over the runs ``simulations.report`` reads.

An attack sweep (``experiment=attacks``) varies ``attack.fraction``, ``attack.kind`` and
``strategy.aggregator``. Every cell here is a paired difference, in points of ``acc_mean`` (the
honest clients' accuracy), from the undefended run without attackers (``strategy.aggregator=mean``,
``attack.fraction=0``) of the same rule and seed, with its 95 % t interval over the seeds. The
"no attacker" column is a defence's own price; at 0 % the attack kind changes nothing, so that
column reads the first kind's runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peerkd.hooks.faults import ATTACKS
from simulations.stats import paired_difference
from strategies.robust import AGGREGATORS

FRACTION, KIND, DEFENCE = "attack.fraction", "attack.kind", "strategy.aggregator"
UNDEFENDED = "mean"
DEFENCE_NOTE = (
    "Each cell: the honest clients' accuracy minus that of the undefended run without attackers "
    "(`strategy.aggregator=mean`, `attack.fraction=0`), same rule and seed, in points, with the 95% t "
    "interval over the seeds. The no-attacker column is the defence's own price."
)


def is_defence_sweep(keys: Sequence[str]) -> bool:
    """Whether a sweep varied the attacker share and the defence (the tables below apply)."""
    return {FRACTION, DEFENCE} <= set(keys)


def _accs(runs: Sequence[dict[str, Any]], rule: str, where: dict[str, Any]) -> dict[int, float]:
    """seed -> acc_mean of ``rule``'s runs whose (dotted) config values match ``where``."""
    return {
        r["summary"]["seed"]: r["summary"]["acc_mean"]
        for r in runs
        if r["summary"]["strategy"] == rule
        and r["summary"].get("acc_mean") is not None
        and all(r["config"].get(k) == v for k, v in where.items())
    }


def _points(acc: dict[int, float], base: dict[int, float]) -> str:
    """``-4.1 [-8.9, +0.6]``: the paired difference in points over the seeds both have ("–": none)."""
    seeds = sorted(set(acc) & set(base))
    d = paired_difference([100 * acc[s] for s in seeds], [100 * base[s] for s in seeds])
    if d["mean"] is None:
        return "–"
    return f"{d['mean']:+.1f}" if d["lo"] is None else f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def _values(runs: Sequence[dict[str, Any]], key: str, order: Sequence[Any] = ()) -> list[Any]:
    """The values of ``key``: those in ``order`` first, in that order, then the rest sorted as text."""
    found = set(r["config"].get(key) for r in runs)
    return [v for v in order if v in found] + sorted((v for v in found if v not in order), key=str)


def defence_rows(
    runs: Sequence[dict[str, Any]], rule: str, fraction: float
) -> tuple[list[str], list[list[str]]] | None:
    """Defence × (no attacker, each attack kind) at ``fraction`` attackers for ``rule``; None without
    the undefended run without attackers to compare with."""
    base = _accs(runs, rule, {DEFENCE: UNDEFENDED, FRACTION: 0})
    if not base:
        return None
    kinds = _values(runs, KIND, ATTACKS)
    header = ["defence", "no attacker", *map(str, kinds)]
    rows = []
    for defence in _values(runs, DEFENCE, AGGREGATORS):
        price = _points(_accs(runs, rule, {DEFENCE: defence, FRACTION: 0, KIND: kinds[0]}), base)
        under = [_points(_accs(runs, rule, {DEFENCE: defence, FRACTION: fraction, KIND: k}), base) for k in kinds]
        rows.append([str(defence), price, *under])
    return header, rows


Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def defence_tables(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> list[Table]:
    """Per rule and attacker share above 0: a title and the ``defence_rows`` table (none where the
    undefended run without attackers is missing)."""
    shares = sorted(f for f in _values(runs, FRACTION) if isinstance(f, (int, float)) and f > 0)
    tables = []
    for rule in rules:
        for fraction in shares:
            if (table := defence_rows(runs, rule, fraction)) is not None:
                title = f"{rule}: {100 * fraction:g} % attackers, points vs undefended without attackers"
                tables.append((title, *table))
    return tables
