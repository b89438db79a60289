"""What logits cost and what they leak, across results directories: accuracy against bytes per
round (one point per rule and codec) and against the privacy budget ε.

``python -m simulations.frontier OUT DIR...`` reads every finished run under the ``DIR``s (sweeps
and comparisons of one world; a ``runs.csv`` given instead of a directory adds the rules the
directories lack, as float32 runs without privacy) and writes ``OUT/frontier.md`` with
``accuracy_vs_bytes_per_round.png`` and, when runs set ``privacy.epsilon``,
``accuracy_vs_epsilon.png``. The maths are pure functions of loaded runs (``simulations.report_io.load_run``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulations.report import md_table
from simulations.stats import fmt_mean_std

BASE = ("peer", "fp32")  # the codec frontier's baseline: float32 peer
TARGET_RATIO, TARGET_DROP = 20.0, 0.005  # the target: >= 20x fewer bytes than fedavg, <= 0.5 points below


def point(run: dict[str, Any]) -> tuple[str, str, float, str]:
    """A run's (rule, codec with its k for top-k, ε (inf when off), privacy unit and release: ``client``,
    ``client votes``, ``example``; "–" when off)."""
    c, s = run["config"], run["summary"]
    codec = str(c.get("codec.name", "fp32"))
    codec = f"topk{c.get('codec.k')}" if codec == "topk" else codec
    eps = c.get("privacy.epsilon")
    if eps is None:
        return s["strategy"], codec, math.inf, "–"
    release = " votes" if c.get("privacy.release", "logits") == "votes" else ""
    return s["strategy"], codec, float(eps), f"{c.get('privacy.unit', 'client')}{release}"


def frontier_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (rule, codec, ε): accuracy mean and std over seeds, bytes per client per round
    (up + down), the ε spent, and the seeds.

    Two seeds of peer at 0.8 and 0.9 accuracy, 2 clients, 2 rounds and 400 B up + 400 B down
    give acc 0.85, std 0.0707, bytes_round 200.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(point(run), []).append(run["summary"])
    rows = []
    for (rule, codec, eps, unit), group in sorted(groups.items()):
        accs = np.array([s["acc_mean"] for s in group], dtype=float)
        per = [(s["bytes_up"] + s["bytes_down"]) / (s["rounds"] * s["num_clients"]) for s in group]
        spent = [s.get("dp_epsilon_spent") for s in group if s.get("dp_epsilon_spent") is not None]
        rows.append(
            {
                "rule": rule,
                "codec": codec,
                "epsilon": eps,
                "unit": unit,
                "acc": float(accs.mean()),
                "acc_std": float(accs.std(ddof=1)) if len(accs) > 1 else None,
                "bytes_round": float(np.mean(per)),
                "epsilon_spent": float(np.mean(spent)) if spent else None,
                "seeds": len(group),
            }
        )
    return rows


def _find(rows: Sequence[dict[str, Any]], rule: str, codec: str | None = None) -> dict[str, Any] | None:
    """The first non-private row of ``rule`` (and ``codec``): a reference is never a run with privacy on."""
    picks = (r for r in rows if r["rule"] == rule and (codec is None or r["codec"] == codec))
    return next((r for r in picks if r["epsilon"] == math.inf), None)


def codec_table(rows: Sequence[dict[str, Any]]) -> str:
    """The frontier as markdown: each non-private row against fedavg's bytes and float32 peer's accuracy."""
    ref, base = _find(rows, "fedavg"), _find(rows, *BASE)
    lines = []
    for r in (r for r in rows if r["epsilon"] == math.inf):
        ratio = ref["bytes_round"] / r["bytes_round"] if ref and r["bytes_round"] else None
        drop = base["acc"] - r["acc"] if base else None
        meets = ratio is not None and drop is not None and ratio >= TARGET_RATIO and drop <= TARGET_DROP
        lines.append(
            [
                r["rule"],
                r["codec"],
                fmt_mean_std(r["acc"], r["acc_std"], no_spread=""),
                f"{r['bytes_round'] / 1000:.1f}",
                "–" if ratio is None else f"{ratio:.1f}×",
                "–" if drop is None else f"{(r['acc'] - base['acc']) * 100:+.1f}",
                "yes" if meets else "no",
            ]
        )
    header = [
        "rule",
        "codec",
        "accuracy",
        "KB/round/client (up+down)",
        "fewer bytes than fedavg",
        "vs fp32 peer (points)",
    ]
    return md_table([*header, "meets ≥20× and ≥ −0.5"], lines)


def epsilon_table(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy by rule, privacy unit and ε (target and spent), against local-only without privacy
    (it releases nothing) and, where local-only also ran under the unit (DP-SGD), at the same ε."""
    local = _find(rows, "local")
    same = {(r["unit"], r["epsilon"]): r for r in rows if r["rule"] == "local" and r["epsilon"] != math.inf}
    lines = [
        [
            r["rule"],
            r["unit"],
            "∞" if r["epsilon"] == math.inf else f"{r['epsilon']:g}",
            "–" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.3f}",
            fmt_mean_std(r["acc"], r["acc_std"], no_spread=""),
            "–" if local is None else f"{(r['acc'] - local['acc']) * 100:+.1f}",
            "–" if (at := same.get((r["unit"], r["epsilon"]))) is None else f"{(r['acc'] - at['acc']) * 100:+.1f}",
        ]
        for r in rows
        if _shown(r, same)
    ]
    header = ["rule", "unit", "ε target", "ε spent", "accuracy", "points vs local (no DP)", "vs local at this ε"]
    return md_table(header, lines)


def _shown(r: dict[str, Any], same: dict) -> bool:
    """Rows of the ε table: fp32 rows of the rules that release something, and under a unit
    local-only also ran with (DP-SGD) every rule at every ε."""
    if r["epsilon"] != math.inf and (r["unit"], r["epsilon"]) in same:
        return True
    return r["rule"] not in ("local", "fedavg") and (r["epsilon"] != math.inf or r["codec"] == "fp32")


def frontier_figure(rows: Sequence[dict[str, Any]]):
    """Accuracy against bytes per client per round (log scale), one marker per rule, codecs labelled."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = [r for r in rows if r["epsilon"] == math.inf and r["bytes_round"] > 0]  # log scale: local has none
    for rule in dict.fromkeys(r["rule"] for r in shown):
        pts = sorted((r for r in shown if r["rule"] == rule), key=lambda r: r["bytes_round"])
        ax.errorbar(
            [p["bytes_round"] / 1000 for p in pts],
            [p["acc"] for p in pts],
            yerr=[p["acc_std"] or 0 for p in pts],
            fmt="o-" if len(pts) > 1 else "s",
            label=rule,
            capsize=3,
        )
        for p in pts:
            ax.annotate(p["codec"], (p["bytes_round"] / 1000, p["acc"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xscale="log", xlabel="KB per client per round (up + down)", ylabel="test accuracy (mean over clients)")
    ax.set_title("Accuracy against bytes per round, by codec")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def epsilon_figure(rows: Sequence[dict[str, Any]]):
    """Accuracy against ε (∞ drawn at the right end), one line per rule and privacy unit (each with
    the rule's run without privacy), local-only without privacy as a floor."""
    import matplotlib.pyplot as plt

    finite = sorted({r["epsilon"] for r in rows if r["epsilon"] != math.inf})
    where = {**{e: i for i, e in enumerate(finite)}, math.inf: len(finite)}
    fp32 = [r for r in rows if r["codec"] == "fp32"]
    lines = dict.fromkeys((r["rule"], r["unit"]) for r in fp32 if r["epsilon"] != math.inf)
    units = {u for _, u in lines}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for rule, unit in lines:
        pts = [r for r in fp32 if r["rule"] == rule and r["unit"] in (unit, "–")]
        pts.sort(key=lambda r: where[r["epsilon"]])
        ax.errorbar(
            [where[p["epsilon"]] for p in pts],
            [p["acc"] for p in pts],
            yerr=[p["acc_std"] or 0 for p in pts],
            fmt="o-",
            label=rule if len(units) == 1 else f"{rule} ({unit})",
            capsize=3,
        )
    if (local := _find(rows, "local")) is not None:
        ax.axhline(local["acc"], color="grey", ls="--", label="local only, no DP")
    ax.set_xticks(range(len(where)), [*(f"{e:g}" for e in finite), "∞"])
    ax.set(xlabel="ε (δ = 1e-5, whole run)", ylabel="test accuracy (mean over clients)")
    ax.set_title("Accuracy against the privacy budget")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def csv_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of a ``runs.csv`` (one row per run) as loaded runs with a float32, non-private config."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {"acc_mean": float, "bytes_up": int, "bytes_down": int, "rounds": int, "num_clients": int, "seed": int}
    return [{"config": {}, "summary": {**r, **{k: cast(r[k]) for k, cast in keys.items()}}} for r in rows]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simulations.frontier OUT DIR...``: write OUT/frontier.md and its plots."""
    from simulations.plots import png_bytes
    from simulations.report_io import load_run

    out, *dirs = argv if argv is not None else sys.argv[1:]
    runs = [load_run(p.parent) for d in dirs if Path(d).is_dir() for p in sorted(Path(d).rglob("summary.json"))]
    have = {r["summary"]["strategy"] for r in runs}
    for table in (Path(d) for d in dirs if Path(d).is_file()):
        runs += [r for r in csv_runs(table) if r["summary"]["strategy"] not in have]
    rows = frontier_rows(runs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = [f"# Frontier ({len(runs)} runs)", "", "## Bytes", "", codec_table(rows)]
    (out_dir / "accuracy_vs_bytes_per_round.png").write_bytes(png_bytes(frontier_figure(rows)))
    if any(r["epsilon"] != math.inf for r in rows):
        text += ["", "## Privacy", "", epsilon_table(rows)]
        (out_dir / "accuracy_vs_epsilon.png").write_bytes(png_bytes(epsilon_figure(rows)))
    (out_dir / "frontier.md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
