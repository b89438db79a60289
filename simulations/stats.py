"""Statistics over seeds that every report table shares: pure functions, no I/O.

Mean ± sample std over seeds, paired differences between two rules' runs on the same worlds
with t intervals, per-round mean curves, and the short text each is written as. A grid point
(``Point``) is a run's values of the swept config keys, named as a user types them
(``key_names``). ``simulations.report`` (accuracy) and ``simulations.report_text``
(perplexity) build their tables on these; runs are the plain dicts
``simulations.report_io.load_results`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_PAIR = ("peer", "teacher")  # the headline a − b of a run dir without ``pair`` (made by ``peerkd run``)
Point = tuple[tuple[str, Any], ...]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the values given; the std is None for one value (there is no spread to show)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def fmt_mean_std(mean: float | None, std: float | None, no_spread: str = " ± –") -> str:
    """``0.870 ± 0.003``; ``–`` for no mean. A std of None (one seed: no spread measured, not a
    spread of 0) writes the mean then ``no_spread``: ``0.870 ± –``, or ``0.870`` with ``no_spread=""``."""
    if mean is None:
        return "–"
    return f"{mean:.3f}{no_spread}" if std is None else f"{mean:.3f} ± {std:.3f}"


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of the paired differences ``a[i] - b[i]`` and its two-sided t interval.

    ``paired_difference([0.8, 0.9, 0.7], [0.7, 0.85, 0.7])``: differences 0.1, 0.05, 0; mean 0.05,
    sample std 0.05, interval 0.05 ± t(0.975, 2) · 0.05 / √3 = [-0.0742, 0.1742].

    Returns
    -------
    dict
        ``n``, ``mean``, ``std`` (sample, ddof=1), ``lo``, ``hi``; the interval is None for n < 2.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        return {"n": 0, "mean": None, "std": None, "lo": None, "hi": None}
    mean = float(d.mean())
    if len(d) < 2:
        return {"n": 1, "mean": mean, "std": None, "lo": None, "hi": None}
    from scipy import stats

    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * std / math.sqrt(len(d))
    return {"n": len(d), "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def verdict(diff: dict[str, Any], a: str, b: str) -> str:
    """Words for a paired difference: which rule is better, or that the interval covers 0."""
    if diff["lo"] is None:
        return "one seed: no interval" if diff["n"] == 1 else "no paired runs"
    if diff["lo"] > 0:
        return f"{a} better"
    if diff["hi"] < 0:
        return f"{b} better"
    return "no clear difference"


def fmt_diff(diff: dict[str, Any]) -> str:
    """``+0.012 [-0.018, +0.042]``: a paired mean difference and its interval (– if none)."""
    if diff["mean"] is None:
        return "–"
    if diff["lo"] is None:
        return f"{diff['mean']:+.3f} (1 seed)"
    return f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"


def mean_curve(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-index mean and sample std over several curves, cut to the shortest (std 0 for one)."""
    n = min(len(s) for s in series)
    arr = np.asarray([list(s)[:n] for s in series], dtype=np.float64)
    std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(n)
    return arr.mean(axis=0), std


def comparisons(rules: Sequence[str], pair: Sequence[str] = DEFAULT_PAIR) -> list[tuple[str, str]]:
    """The paired differences a report shows: ``pair`` (a − b, if both rules ran), and every rule − local."""
    pairs = [(pair[0], pair[1])] if set(pair) <= set(rules) else []
    pairs += [(r, "local") for r in rules if r != "local"] if "local" in rules else []
    return list(dict.fromkeys(pairs))  # a pair (x, local) shows once


def paired_by_seed(runs: Sequence[dict[str, Any]], a: str, b: str, metric: str = "acc_mean") -> dict[str, Any]:
    """Paired difference of ``metric`` between rules ``a`` and ``b`` over the seeds both ran."""
    by = {
        rule: {r["summary"]["seed"]: r["summary"].get(metric) for r in runs if r["summary"]["strategy"] == rule}
        for rule in (a, b)
    }
    seeds = sorted(s for s in set(by[a]) & set(by[b]) if by[a][s] is not None and by[b][s] is not None)
    return {**paired_difference([by[a][s] for s in seeds], [by[b][s] for s in seeds]), "seeds": seeds}


def key_names(keys: Sequence[str]) -> dict[str, str]:
    """Each flattened key as a user types it on the command line: ``partition.alpha`` stays whole
    (``alpha`` alone reads as the KD weight ``strategy.alpha``); ``data.name`` is the group ``data``."""
    return {k: k.removesuffix(".name") for k in keys}
