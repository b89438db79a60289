"""Figures of ``peerkd report``: matplotlib ``Figure`` objects built from loaded runs.

Every figure is a grid of panels, one per grid point of a sweep (one panel for a single run or
a comparison). A rule has the same colour in every figure of every report (``rule_color``), and
accuracy axes carry a dotted chance level: the share of the commonest class, what always guessing
it scores. Nothing here writes files: ``simulations.report_io`` writes ``png_bytes(figure)``.
``Figure`` is used without pyplot, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from simulations.report import group_runs, point_label, rule_order, sort_key, swept_keys
from simulations.report_text import floor_level, is_text
from simulations.stats import Point, key_names, mean_curve

Curve = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, mean, std over seeds
Panel = tuple[str, dict[str, Any]]  # title, {rule: data}
# Inches per panel at 150 dpi: one panel is 660 × 510 px, text stays legible when a page shrinks it.
PANEL_W, PANEL_H, DPI = 4.4, 3.4, 150
# One colour per rule in every plot (colour-blind-safe Okabe-Ito and tab10 hues); the baseline
# grey, the teacher family in blues, the peer family in oranges and reds.
RULE_COLORS = {
    "local": "#7f7f7f",
    "fedavg": "#009e73",
    "feddf": "#8fbc8f",
    "teacher": "#0072b2",
    "teacher_ensemble": "#56b4e9",
    "oracle": "#17becf",
    "peer": "#d55e00",
    "wml": "#e69f00",
    "fd": "#cc79a7",
    "dsfl": "#9467bd",
    "fedmd": "#8c564b",
}
_EXTRA_COLORS = ("#bcbd22", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#17becf")
CHANCE_STYLE = {"color": "black", "ls": ":", "lw": 1.2, "label": "chance"}


def rule_color(rule: str) -> str:
    """The colour of ``rule`` in every figure; a rule not in ``RULE_COLORS`` gets one fixed by its name."""
    import zlib

    return RULE_COLORS.get(rule) or _EXTRA_COLORS[zlib.crc32(rule.encode()) % len(_EXTRA_COLORS)]


def _chance_line(ax, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE)


def _grid(n: int, ncols: int | None) -> tuple[int, int]:
    cols = ncols or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _figure(panels: Sequence[Panel], ncols: int | None, title: str, sharey: bool = True) -> tuple[Figure, list]:
    rows, cols = _grid(len(panels), ncols)
    fig = Figure(figsize=(PANEL_W * cols + 0.6, PANEL_H * rows + 1.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, _) in zip(axes, panels):
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    return fig, list(axes[: len(panels)])


def _legend(fig: Figure, axes: list) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    per_row = max(3, int(fig.get_figwidth() / 1.2))  # an entry takes about 1.2 inches
    fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="outside lower center",
        ncols=min(len(labels), per_row),
        fontsize=10,
    )


def line_figure(
    panels: Sequence[Panel],
    rules: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    ncols: int | None = None,
    logx: bool = False,
    xticks: tuple[Sequence[float], Sequence[str]] | None = None,
    chance: Sequence[float | None] = (),
    integer_x: bool = False,
    colors: dict[str, str] | None = None,
) -> Figure:
    """Lines with a ±1 std band per rule in each panel; ``{rule: (x, mean, std)}`` per panel.

    A rule whose x is all zero (it sends nothing) is drawn as a dashed level at its last mean.
    ``xticks`` (positions, labels) replaces the x ticks, e.g. for a swept variable's values;
    ``integer_x`` keeps ticks on whole numbers (rounds); ``chance[i]`` draws panel i's chance level;
    ``colors`` replaces the rules' colours (lines that are not rules).
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig, axes = _figure(panels, ncols, title)
    colors = colors or {rule: rule_color(rule) for rule in rules}
    for i, (ax, (_, curves)) in enumerate(zip(axes, panels)):
        _chance_line(ax, chance[i] if i < len(chance) else None)
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
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
    _legend(fig, axes)
    return fig


def box_figure(
    panels: Sequence[Panel],
    rules: Sequence[str],
    title: str,
    ylabel: str,
    ncols: int | None = None,
    chance: Sequence[float | None] = (),
) -> Figure:
    """Box plots of values per rule (``{rule: [values]}`` per panel) with the points on top; the
    median is a black bar over the light box, so it shows whatever the rule's colour."""
    fig, axes = _figure(panels, ncols, title)
    rng = np.random.default_rng(0)  # jitter of the dots only
    for k, (ax, (_, values)) in enumerate(zip(axes, panels)):
        _chance_line(ax, chance[k] if k < len(chance) else None)
        present = [r for r in rules if values.get(r)]
        if not present:
            continue
        box = ax.boxplot(
            [values[r] for r in present],
            widths=0.5,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black", "lw": 2.0},
        )
        ax.set_xticks(range(1, len(present) + 1), present)
        for patch, rule in zip(box["boxes"], present):
            patch.set(facecolor=rule_color(rule), alpha=0.3)
        for i, rule in enumerate(present, start=1):
            ax.scatter(
                i + rng.uniform(-0.15, 0.15, len(values[rule])),
                values[rule],
                s=10,
                color=rule_color(rule),
                alpha=0.8,
                zorder=3,
            )
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
    if any(c is not None for c in chance):
        _legend(fig, axes)
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
        kb = [
            np.cumsum(
                [float(row.get("bytes_up", 0) + row.get("bytes_down", 0)) for row in r["rounds"]]
            )  # floats: no wrap
            / 1000
            / r["summary"]["num_clients"]
            for r in rs
        ]
        x, _ = mean_curve(kb)
        mean, std = mean_curve([[_acc(row) for row in r["rounds"]] for r in rs])
        out[rule] = (x, mean, std)
    return out


def client_accuracies(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, list[float]]:
    """Per rule: every client's final test accuracy, pooled over seeds."""
    return {
        rule: [c["acc"] for r in rs for c in r["summary"].get("per_client", []) if c.get("acc") is not None]
        for rule, rs in _by_rule(runs, rules).items()
    }


def variable_curves(
    groups: dict[Point, list[dict[str, Any]]], key: str, rules: Sequence[str], metric: str = "acc_mean"
) -> list[Panel]:
    """Final accuracy (or another summary ``metric``, e.g. ``ppl_mean``) against swept ``key``: one
    panel per combination of the other keys.

    Values that are not numbers (``data=digits,mnist5k``) are placed at 0, 1, ... in sorted order.
    """
    keys = [k for k, _ in next(iter(groups))]
    values = sorted({dict(p)[key] for p in groups}, key=sort_key)
    place = {v: (float(v) if _numeric(values) else float(i)) for i, v in enumerate(values)}
    points: dict[Point, dict[str, list[tuple[float, float, float]]]] = {}
    for point, runs in groups.items():
        rest = tuple(kv for kv in point if kv[0] != key)
        for rule, rs in _by_rule(runs, rules).items():
            accs = [r["summary"][metric] for r in rs if r["summary"].get(metric) is not None]
            if accs:
                std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
                points.setdefault(rest, {}).setdefault(rule, []).append(
                    (place[dict(point)[key]], float(np.mean(accs)), std)
                )
    names = key_names(keys)
    return [
        (
            point_label(rest, names) if len(keys) > 1 else "",
            {rule: tuple(np.array(column) for column in zip(*pts)) for rule, pts in curves.items()},
        )
        for rest, curves in points.items()
    ]


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def report_figures(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, Figure]]:
    """Every figure of the report as (file name, caption, figure)."""
    keys = swept_keys([r["config"] for r in runs])
    groups = group_runs(runs, keys)
    names, rules = key_names(keys), rule_order(r["summary"]["strategy"] for r in runs)
    ncols = len({p[1][1] for p in groups}) if len(keys) == 2 else None  # 2-D grid: one row per first value

    def panels(data) -> list[Panel]:
        return [(point_label(point, names), data(rs, rules)) for point, rs in groups.items()]

    chance = [panel_chance(rs) for rs in groups.values()]
    figs = [
        (
            "accuracy_vs_round.png",
            "Mean client accuracy per round (line: mean over seeds; band: ±1 std; dotted: chance)",
            line_figure(
                panels(round_curves),
                rules,
                "Accuracy vs round",
                "round",
                "test accuracy",
                ncols,
                chance=chance,
                integer_x=True,
            ),
        ),
        (
            "accuracy_vs_bytes.png",
            "Mean client accuracy vs cumulative traffic per client (sent + received)",
            line_figure(
                panels(bytes_curves),
                rules,
                "Accuracy vs traffic",
                "KB per client (log)",
                "test accuracy",
                ncols,
                logx=True,
                chance=chance,
            ),
        ),
        (
            "client_accuracy.png",
            "Final accuracy of every client, all seeds pooled (black bar: median)",
            box_figure(panels(client_accuracies), rules, "Per-client accuracy", "test accuracy", ncols, chance=chance),
        ),
    ]
    figs += [_variable_figure(groups, key, names, rules) for key in keys] + setting_figures(runs, keys)
    return figs + ([perplexity_figure(groups, key, names, rules) for key in keys] if is_text(runs) else [])


def setting_figures(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[tuple[str, str, Figure]]:
    """For a swept rule setting (``strategy.aggregator``) and another swept key: final accuracy vs
    that key with one line per value of the setting (and rule), e.g. each defence vs attacker share."""
    names = key_names(keys)
    out = []
    for setting in [k for k in keys if k.startswith("strategy.")]:
        for key in [k for k in keys if k != setting]:
            rules = {r["summary"]["strategy"] for r in runs}
            relabelled = [
                {**r, "summary": {**r["summary"], "strategy": _setting_label(r, setting, len(rules) > 1)}} for r in runs
            ]
            labels = sorted({r["summary"]["strategy"] for r in relabelled}, key=sort_key)
            colors = {label: _EXTRA_COLORS[i % len(_EXTRA_COLORS)] for i, label in enumerate(labels)}
            name, caption, fig = _variable_figure(group_runs(relabelled, [key]), key, key_names([key]), labels, colors)
            fig.suptitle(f"Accuracy vs {names[key]} by {names[setting]}", fontsize=12)
            fig.set_size_inches(max(fig.get_figwidth(), 7.5), fig.get_figheight())  # room for the legend
            out.append(
                (
                    name.replace(".png", f"_by_{names[setting].replace('.', '_')}.png"),
                    caption.replace(" (±1", f", one line per {names[setting]} (±1"),
                    fig,
                )
            )
    return out


def _setting_label(run: dict[str, Any], setting: str, with_rule: bool) -> str:
    value = str(run["config"].get(setting))
    return f"{run['summary']['strategy']} {value}" if with_rule else value


def perplexity_figure(
    groups: dict[Point, list[dict[str, Any]]], key: str, names: dict[str, str], rules: Sequence[str]
) -> tuple[str, str, Figure]:
    """Final mean client perplexity against swept ``key``, the floor dotted (text worlds)."""
    name, values = names[key], sorted({dict(p)[key] for p in groups}, key=sort_key)
    numeric = _numeric(values)
    ticks = ([float(v) for v in values] if numeric else list(range(len(values))), [str(v) for v in values])
    panels = variable_curves(groups, key, rules, metric="ppl_mean")
    floor = floor_level([r for rs in groups.values() for r in rs])
    fig = line_figure(
        panels,
        rules,
        f"Perplexity vs {name}",
        name + (" (log)" if numeric and min(values) > 0 else ""),
        "test perplexity (dotted: floor)",
        logx=numeric and min(values) > 0,
        xticks=ticks,
        chance=[floor] * len(panels),
    )
    return f"perplexity_vs_{name.replace('.', '_')}.png", f"Final mean client perplexity vs {name} (±1 std)", fig


def panel_chance(runs: Sequence[dict[str, Any]]) -> float | None:
    """The chance level the runs of one panel share (``run["chance"]``), or None if they differ or lack one."""
    levels = {r.get("chance") for r in runs}
    return levels.pop() if len(levels) == 1 else None


def _variable_figure(
    groups: dict[Point, list[dict[str, Any]]],
    key: str,
    names: dict[str, str],
    rules: Sequence[str],
    colors: dict[str, str] | None = None,
) -> tuple[str, str, Figure]:
    name, values = names[key], sorted({dict(p)[key] for p in groups}, key=sort_key)
    numeric = _numeric(values)
    logx = numeric and min(values) > 0 and max(values) / min(values) >= 4  # 2, 4, 8, 16: even steps
    ticks = (
        [float(v) for v in values] if numeric else list(range(len(values))),
        [f"{v:g}" if numeric else str(v) for v in values],
    )
    by_title: dict[str, list[dict[str, Any]]] = {}  # the runs behind each panel of variable_curves
    for point, rs in groups.items():
        rest = tuple(kv for kv in point if kv[0] != key)
        by_title.setdefault(point_label(rest, names) if len(point) > 1 else "", []).extend(rs)
    panels = variable_curves(groups, key, rules)
    fig = line_figure(
        panels,
        rules,
        f"Accuracy vs {name}",
        name + (" (log)" if logx else ""),
        "test accuracy",
        logx=logx,
        xticks=ticks,
        chance=[panel_chance(by_title.get(title, [])) for title, _ in panels],
        colors=colors,
    )
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
    image.save(out, format="PNG", optimize=True, dpi=(fig.dpi, fig.dpi))  # pHYs: prints at the figure's size
    return out.getvalue()
