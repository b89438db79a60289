"""Figures of ``peerkd report``: matplotlib ``Figure`` objects built from loaded runs.

Every figure is a grid of small panels, one per grid point of a sweep (one panel for a single
run or a comparison), with one colour per rule throughout. Nothing here writes files:
``simulations.report_io`` writes ``png_bytes(figure)``. ``Figure`` is used without pyplot, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from simulations.report import (
    Point, group_runs, mean_curve, point_label, rule_order, short_names, sort_key, swept_keys,
)

Curve = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, mean, std over seeds
Panel = tuple[str, dict[str, Any]]  # title, {rule: data}
PANEL_W, PANEL_H, DPI = 3.4, 2.6, 80  # inches per panel, and 80 dpi: a 4×4 grid is ~1,100 px wide


def _colors(rules: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {rule: cmap(i % 10) for i, rule in enumerate(rules)}


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    cols = ncols or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _figure(panels: Sequence[Panel], ncols: int | None, title: str, sharey: bool = True) -> tuple[Figure, list]:
    rows, cols = _grid(len(panels), ncols)
    fig = Figure(figsize=(PANEL_W * cols + 0.6, PANEL_H * rows + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (name, _) in zip(axes, panels):
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes[: len(panels)])


def _legend(fig: Figure, axes: list) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=9)


def line_figure(panels: Sequence[Panel], rules: Sequence[str], title: str, xlabel: str, ylabel: str,
                ncols: int | None = None, logx: bool = False,
                xticks: tuple[Sequence[float], Sequence[str]] | None = None) -> Figure:
    """Lines with a ±1 std band per rule in each panel; ``{rule: (x, mean, std)}`` per panel.

    A rule whose x is all zero (it sends nothing) is drawn as a dashed level at its last mean.
    ``xticks`` (positions, labels) replaces the x ticks, e.g. for a swept variable's values.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = _figure(panels, ncols, title)
    colors = _colors(rules)
    for ax, (_, curves) in zip(axes, panels):
        for rule in rules:
            if rule not in curves:
                continue
            x, mean, std = curves[rule]
            if logx and not np.any(x > 0):
                ax.axhline(mean[-1], color=colors[rule], ls="--", lw=1.2, label=f"{rule} (no traffic)")
                continue
            ax.plot(x, mean, color=colors[rule], lw=1.5, marker="o" if len(x) < 8 else None, ms=3, label=rule)
            ax.fill_between(x, mean - std, mean + std, color=colors[rule], alpha=0.2, lw=0)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if xticks:
            ax.set_xticks(*xticks)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    _legend(fig, axes)
    return fig


def box_figure(panels: Sequence[Panel], rules: Sequence[str], title: str, ylabel: str, ncols: int | None = None) -> Figure:
    """Box plots of values per rule (``{rule: [values]}`` per panel) with the points on top."""
    fig, axes = _figure(panels, ncols, title)
    colors = _colors(rules)
    rng = np.random.default_rng(0)  # jitter of the dots only
    for ax, (_, values) in zip(axes, panels):
        present = [r for r in rules if values.get(r)]
        if not present:
            continue
        box = ax.boxplot([values[r] for r in present], widths=0.5, patch_artist=True, showfliers=False)
        ax.set_xticks(range(1, len(present) + 1), present)
        for patch, rule in zip(box["boxes"], present):
            patch.set(facecolor=colors[rule], alpha=0.35)
        for i, rule in enumerate(present, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values[rule])), values[rule], s=6, color=colors[rule], alpha=0.7)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


# --- data for the figures -----------------------------------------------------------------


def _by_rule(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    return {rule: [r for r in runs if r["summary"]["strategy"] == rule] for rule in rules}


def _acc(row: dict[str, Any]) -> float:
    return math.nan if row.get("acc_mean") is None else row["acc_mean"]  # a round nobody answered: a gap


def round_curves(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, Curve]:
    """Per rule: round number, mean and std over seeds of the clients' mean accuracy."""
    out = {}
    for rule, rs in _by_rule(runs, rules).items():
        series = [[_acc(row) for row in r["rounds"]] for r in rs if r["rounds"]]
        if series:
            mean, std = mean_curve(series)
            out[rule] = (np.arange(1, len(mean) + 1), mean, std)
    return out


def bytes_curves(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, Curve]:
    """Per rule: cumulative KB sent and received per client after each round, and accuracy."""
    out = {}
    for rule, rs in _by_rule(runs, rules).items():
        rs = [r for r in rs if r["rounds"]]
        if not rs:
            continue
        kb = [np.cumsum([row.get("bytes_up", 0) + row.get("bytes_down", 0) for row in r["rounds"]])
              / 1000 / r["summary"]["num_clients"] for r in rs]
        x, _ = mean_curve(kb)
        mean, std = mean_curve([[_acc(row) for row in r["rounds"]] for r in rs])
        out[rule] = (x, mean, std)
    return out


def client_accuracies(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, list[float]]:
    """Per rule: every client's final test accuracy, pooled over seeds."""
    return {rule: [c["acc"] for r in rs for c in r["summary"].get("per_client", []) if c.get("acc") is not None]
            for rule, rs in _by_rule(runs, rules).items()}


def variable_curves(groups: dict[Point, list[dict[str, Any]]], key: str, rules: Sequence[str]) -> list[Panel]:
    """Final accuracy against swept ``key``: one panel per combination of the other keys.

    Values that are not numbers (``data=digits,mnist5k``) are placed at 0, 1, ... in sorted order.
    """
    keys = [k for k, _ in next(iter(groups))]
    values = sorted({dict(p)[key] for p in groups}, key=sort_key)
    place = {v: (float(v) if _numeric(values) else float(i)) for i, v in enumerate(values)}
    points: dict[Point, dict[str, list[tuple[float, float, float]]]] = {}
    for point, runs in groups.items():
        rest = tuple(kv for kv in point if kv[0] != key)
        for rule, rs in _by_rule(runs, rules).items():
            accs = [r["summary"]["acc_mean"] for r in rs if r["summary"].get("acc_mean") is not None]
            if accs:
                std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
                points.setdefault(rest, {}).setdefault(rule, []).append((place[dict(point)[key]], float(np.mean(accs)), std))
    names = short_names(keys)
    return [(point_label(rest, names) if len(keys) > 1 else "",
             {rule: tuple(np.array(column) for column in zip(*pts)) for rule, pts in curves.items()})
            for rest, curves in points.items()]


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def report_figures(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, Figure]]:
    """Every figure of the report as (file name, caption, figure)."""
    keys = swept_keys([r["config"] for r in runs])
    groups = group_runs(runs, keys)
    names, rules = short_names(keys), rule_order(r["summary"]["strategy"] for r in runs)
    ncols = len({p[1][1] for p in groups}) if len(keys) == 2 else None  # 2-D grid: one row per first value

    def panels(data) -> list[Panel]:
        return [(point_label(point, names), data(rs, rules)) for point, rs in groups.items()]

    figs = [
        ("accuracy_vs_round.png", "Mean client accuracy per round (line: mean over seeds; band: ±1 std)",
         line_figure(panels(round_curves), rules, "Accuracy vs round", "round", "test accuracy", ncols)),
        ("accuracy_vs_bytes.png", "Mean client accuracy vs cumulative traffic per client (sent + received)",
         line_figure(panels(bytes_curves), rules, "Accuracy vs traffic", "KB per client (log)", "test accuracy", ncols, logx=True)),
        ("client_accuracy.png", "Final accuracy of every client, all seeds pooled",
         box_figure(panels(client_accuracies), rules, "Per-client accuracy", "test accuracy", ncols)),
    ]
    return figs + [_variable_figure(groups, key, names[key], rules) for key in keys]


def _variable_figure(groups: dict[Point, list[dict[str, Any]]], key: str, name: str, rules: Sequence[str]) -> tuple[str, str, Figure]:
    values = sorted({dict(p)[key] for p in groups}, key=sort_key)
    numeric = _numeric(values)
    logx = numeric and min(values) > 0 and max(values) / min(values) >= 4  # 2, 4, 8, 16: even steps
    ticks = ([float(v) for v in values] if numeric else list(range(len(values))), [f"{v:g}" if numeric else str(v) for v in values])
    fig = line_figure(variable_curves(groups, key, rules), rules, f"Accuracy vs {name}", name + (" (log)" if logx else ""),
                      "test accuracy", logx=logx, xticks=ticks)
    return f"accuracy_vs_{name.replace('.', '_')}.png", f"Final mean accuracy vs {name} (±1 std over seeds)", fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as a 256-colour PNG: a third of the RGBA size (a 4×4 grid ~60 KB, not ~215 KB),
    so reports stay light in a repository and on GitHub."""
    import io

    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png")
    image = Image.open(raw).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
