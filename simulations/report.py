"""Tables and statistics from run results: pure functions, no I/O.

``compare_table`` / ``markdown_table`` give the per-rule comparison table. The rest serves
``peerkd report``: which config keys a results directory sweeps, runs grouped by grid
point, and the markdown of ``report.md`` (its statistics, paired differences with t
intervals, are ``simulations.stats``'; its perplexity tables ``simulations.report_text``').
Runs are plain dicts as ``simulations.report_io.load_results`` reads them: ``{"path",
"summary", "config" (flattened), "rounds" (round rows)}``; reading and writing files is
``simulations.report_io``'s job, so everything here can be tested on literals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from simulations.report_defence import DEFENCE_NOTE, defence_tables, is_defence_sweep
from simulations.report_sizes import SIZES_NOTE, has_sizes, size_rows
from simulations.report_text import PPL_NOTE, is_text, perplexity_rows
from simulations.stats import (
    DEFAULT_PAIR,
    Point,
    comparisons,
    fmt_diff,
    fmt_mean_std,
    key_names,
    mean_std,
    paired_by_seed,
    verdict,
)

COLUMNS = (
    "rule",
    "runs",
    "acc_mean",
    "acc_mean_std",
    "acc_worst",
    "acc_worst_std",
    "teacher_acc",
    "kb_up_per_round",
    "kb_down_per_round",
    "wall_s",
)
# Config keys (prefixes) of how a run was made, not of what it computes: where it wrote,
# logging, time limits, resources, the lists and grid of the command that ran it, the report's pair.
RUN_SETTINGS = (
    "out",
    "resume",
    "overwrite",
    "verbose",
    "quiet",
    "round_timeout",
    "resources.",
    "engine.chunk",
    "engine.ray_address",  # where it ran and how it was sharded: the same numbers
    "engine.worker",
    "rules",
    "seeds",
    "grid",
    "parallel",
    "report",
    "pair",
)
NOT_SWEPT = RUN_SETTINGS + ("seed", "strategy.name")  # ... and which run of the grid point it is
RULE_ORDER = ("local", "fedavg", "teacher", "peer")


def compare_table(summaries: list[dict[str, Any]], rules: list[str]) -> list[dict[str, Any]]:
    """One row per rule: mean ± sample std over seeds of mean and worst-client accuracy,
    communication per client per round (KB up and down, from serialised arrays) and wall time."""
    rows = []
    for rule in rules:
        runs = [s for s in summaries if s["strategy"] == rule]
        if not runs:
            continue
        acc, acc_sd = mean_std([s["acc_mean"] for s in runs])
        worst, worst_sd = mean_std([s["acc_worst"] for s in runs])
        per = [s["rounds"] * s["num_clients"] * 1000 for s in runs]
        rows.append(
            {
                "rule": rule,
                "runs": len(runs),
                "acc_mean": acc,
                "acc_mean_std": acc_sd,
                "acc_worst": worst,
                "acc_worst_std": worst_sd,
                "teacher_acc": mean_std([s.get("teacher_acc") for s in runs])[0],
                "kb_up_per_round": float(np.mean([s["bytes_up"] / d for s, d in zip(runs, per)])),
                "kb_down_per_round": float(np.mean([s["bytes_down"] / d for s, d in zip(runs, per)])),
                "wall_s": float(np.mean([s["wall_s"] for s in runs])),
            }
        )
    return rows


def table_cells(row: dict[str, Any]) -> list[str]:
    """Human-readable cells of one compare_table row, in TABLE_HEADER order."""
    teacher = "–" if row["teacher_acc"] is None else f"{row['teacher_acc']:.3f}"
    return [
        row["rule"],
        fmt_mean_std(row["acc_mean"], row["acc_mean_std"]),
        fmt_mean_std(row["acc_worst"], row["acc_worst_std"]),
        teacher,
        f"{row['kb_up_per_round']:.1f} / {row['kb_down_per_round']:.1f}",
        f"{row['wall_s']:.0f}",
    ]


# "teacher model": the central teacher network's own accuracy, not the students of the rule named teacher.
TABLE_HEADER = [
    "rule",
    "accuracy (mean ± std)",
    "worst client",
    "teacher model",
    "KB/round/client up / down",
    "wall s/run",
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-readable markdown table of compare_table rows."""
    return md_table(TABLE_HEADER, [table_cells(r) for r in rows])


def comparison_title(world: Any, rounds: int, seeds: Sequence[int], wall_s: float) -> str:
    """The opening of comparison.md: the world (a ``peerkd.world.build.WorldSpec``), rounds, seeds, wall time."""
    from peerkd.world.data import dataset_name

    alpha = f" (partition.alpha {world.partition_alpha:g})" if world.partition == "dirichlet" else ""
    spread = "mean ± sample std over seeds" if len(set(seeds)) > 1 else "one seed, so no spread (± –)"
    return (
        f"# peerkd comparison\n\n{dataset_name(world.dataset, world.data_path)}, {world.num_clients} clients, "
        f"{world.partition} partition{alpha}, {rounds} rounds, seeds {sorted(set(seeds))}; "
        f'accuracy on the held-out test split, {spread}; "teacher model" is the central teacher network itself; '
        f"total wall time {wall_s:.0f} s.\n\n"
    )


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: a header row, a rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- results directories ----------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict: ``{"a": {"b": 1}} -> {"a.b": 1}``; lists become tuples
    (and mappings inside them tuples of pairs), so every value can key a grid point."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = _frozen(value)
    return flat


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value


def swept_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value differs between runs, in first-seen order.

    Keys that name the run (rule, seed, out) or how it ran (resources, timeouts) are left out,
    and so are keys some configs lack (settings added to peerkd after older runs were made).
    """
    if not configs:
        return []
    common = [k for k in configs[0] if all(k in cfg for cfg in configs) and not k.startswith(NOT_SWEPT)]
    return [k for k in common if len({repr(cfg[k]) for cfg in configs}) > 1]


def sort_key(value: Any) -> tuple:
    """Sort key that puts numbers first, in numeric order, then everything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return (0, float(value), "")
        except OverflowError:  # an integer beyond floats (a hand-edited config): sorted as text
            pass
    return (1, 0.0, str(value))


def group_runs(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[Point, list[dict[str, Any]]]:
    """Runs by grid point (their values of ``keys``), points sorted by value (numbers numerically)."""
    groups: dict[Point, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple((k, run["config"].get(k)) for k in keys), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: [sort_key(v) for _, v in kv[0]]))


def rule_order(rules: Iterable[str]) -> list[str]:
    """The rules present, baselines first (local, fedavg, teacher, peer), the rest by name."""
    present = set(rules)
    return [r for r in RULE_ORDER if r in present] + sorted(present - set(RULE_ORDER))


def headline_pair(runs: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The report's headline ``(a, b)`` for ``a − b``: the ``pair`` most runs' configs name
    (compare and sweep record it in config.yaml), else ``DEFAULT_PAIR``."""
    named = Counter(
        p
        for r in runs
        if isinstance(p := r["config"].get("pair"), tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
    )
    return named.most_common(1)[0][0] if named else DEFAULT_PAIR


# --- report.md -------------------------------------------------------------------------


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def point_label(point: Point, names: dict[str, str]) -> str:
    """``partition.samples_per_client=25, num_clients=2``; ``all runs`` for no keys."""
    return ", ".join(f"{names[k]}={_fmt_value(v)}" for k, v in point) or "all runs"


def overview_rows(
    groups: dict[Point, list[dict[str, Any]]], rules: Sequence[str], pair: Sequence[str] = DEFAULT_PAIR
) -> tuple[list[str], list[list[str]]]:
    """One row per grid point: its values, each rule's accuracy (mean ± std over seeds) and the
    paired differences (``pair``, rule − local) with 95% intervals. Returns header, rows."""
    keys = [k for k, _ in next(iter(groups))]
    names, pairs = key_names(keys), comparisons(rules, pair)
    header = [names[k] for k in keys] + list(rules) + [f"{a} − {b}" for a, b in pairs]
    rows = []
    for point, runs in groups.items():
        accs = {
            r["rule"]: fmt_mean_std(r["acc_mean"], r["acc_mean_std"])
            for r in compare_table([x["summary"] for x in runs], list(rules))
        }
        rows.append(
            [_fmt_value(v) for _, v in point]
            + [accs.get(rule, "–") for rule in rules]
            + [fmt_diff(paired_by_seed(runs, a, b)) for a, b in pairs]
        )
    return header, rows


def detail_rows(groups: dict[Point, list[dict[str, Any]]], rules: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """compare_table rows (accuracy, worst client, teacher, traffic, wall time) for every point."""
    keys = [k for k, _ in next(iter(groups))]
    names = key_names(keys)
    rows = [
        [_fmt_value(v) for _, v in point] + table_cells(row)
        for point, runs in groups.items()
        for row in compare_table([r["summary"] for r in runs], list(rules))
    ]
    return [names[k] for k in keys] + TABLE_HEADER, rows


def paired_rows(
    groups: dict[Point, list[dict[str, Any]]], rules: Sequence[str], pair: Sequence[str] = DEFAULT_PAIR
) -> tuple[list[str], list[list[str]]]:
    """Per point and comparison: seeds paired, mean difference, 95% t interval, verdict."""
    keys = [k for k, _ in next(iter(groups))]
    names = key_names(keys)
    rows = []
    for point, runs in groups.items():
        for a, b in comparisons(rules, pair):
            d = paired_by_seed(runs, a, b)
            ci = "–" if d["lo"] is None else f"[{d['lo']:+.3f}, {d['hi']:+.3f}]"
            mean = "–" if d["mean"] is None else f"{d['mean']:+.3f}"
            rows.append([_fmt_value(v) for _, v in point] + [f"{a} − {b}", str(d["n"]), mean, ci, verdict(d, a, b)])
    return [names[k] for k in keys] + ["comparison", "seeds", "mean difference", "95% interval", "verdict"], rows


def pivot_rows(groups: dict[Point, list[dict[str, Any]]], a: str, b: str) -> tuple[list[str], list[list[str]]]:
    """For a two-key sweep: rows by the first key, columns by the second, cells ``a − b``."""
    (k1, _), (k2, _) = next(iter(groups))
    names = key_names([k1, k2])
    cols = sorted({p[1][1] for p in groups}, key=sort_key)
    cells: dict[Any, dict[Any, str]] = {}
    for point, runs in groups.items():
        cells.setdefault(point[0][1], {})[point[1][1]] = fmt_diff(paired_by_seed(runs, a, b))
    header = [f"{names[k1]} \\ {names[k2]}"] + [_fmt_value(c) for c in cols]
    return header, [[_fmt_value(r)] + [row.get(c, "–") for c in cols] for r, row in cells.items()]


def _values(values: Iterable[Any]) -> str:
    return ", ".join(_fmt_value(v) for v in sorted(set(values), key=sort_key))


def describe(runs: Sequence[dict[str, Any]], keys: Sequence[str], unfinished: int, wall_s: float | None) -> str:
    """The report's opening paragraph: what was run, what was swept, how long it took."""
    s = [r["summary"] for r in runs]
    rules = rule_order(x["strategy"] for x in s)
    shared = {
        "dataset": _values(x["dataset"] for x in s),
        "clients": _values(x["num_clients"] for x in s),
        "partition": _values(r["config"].get("partition.name", "?") for r in runs),
        "rounds": _values(x["rounds"] for x in s),
    }
    text = (
        f"**{len(runs)} finished runs**: rules {', '.join(rules)}; seeds {_values(x['seed'] for x in s)}; "
        + "; ".join(f"{k} {v}" for k, v in shared.items())
        + "."
    )
    private = sorted({x["strategy"] for x in s if x.get("private") is False})
    if private:
        text += f" Not private (they train on data no client may share): {', '.join(private)}."
    if keys:
        names = key_names(keys)
        text += (
            " Swept: "
            + "; ".join(f"`{names[k]}` ∈ {{{_values(r['config'].get(k) for r in runs)}}}" for k in keys)
            + "."
        )
    seen = [(x["strategy"], x["seed"], tuple(r["config"].get(k) for k in keys)) for x, r in zip(s, runs)]
    if len(set(seen)) < len(seen):
        text += f" **{len(seen) - len(set(seen))} runs repeat a (rule, seed, grid point)**; the means count every run."
    if unfinished:
        text += f" {unfinished} unfinished run directories (no summary.json) are left out."
    if wall_s is not None:
        text += f" Wall time of the sweep: {wall_s / 60:.1f} min."
    return text + "\n"


def provenance_text(records: Sequence[dict[str, Any] | None]) -> str:
    """Where the numbers came from: git revisions (with a dirty flag) and package versions."""
    seen = [p for p in records if p]
    if not seen:
        return "Provenance: no provenance.json in these runs.\n"
    revs = sorted(
        {
            f"`{(p.get('git_revision') or 'unknown')[:10]}`" + (" (uncommitted changes)" if p.get("git_dirty") else "")
            for p in seen
        }
    )
    pkgs = {
        name: sorted({str((p.get("packages") or {}).get(name)) for p in seen})
        for name in ("peerkd", "flwr", "torch", "numpy")
    }
    text = (
        f"Provenance ({len(seen)} of {len(records)} runs record it): git {', '.join(revs)}; "
        + ", ".join(f"{k} {'/'.join(v)}" for k, v in pkgs.items())
        + f"; Python {_values(p.get('python') for p in seen)}; {_values(p.get('cpu_count') for p in seen)} CPUs."
    )
    if len(revs) > 1:
        text += " **The runs come from different revisions.**"
    return text + "\n"


def skipped_text(skipped: Sequence[tuple[str, str]]) -> str:
    """The finished runs left out because their files are damaged, one line each with why."""
    lines = [f"- `{path}`: {why}" for path, why in skipped]
    n = len(skipped)
    return f"**{n} damaged run{'s' * (n > 1)} skipped** (in no table or plot):\n\n" + "\n".join(lines) + "\n"


NOTES = """Notes: accuracy is on the held-out test split, averaged over clients, then mean ± sample
std (ddof = 1) over seeds ("± –": one seed, so no spread was measured). A column or row named
after a rule (`teacher`, `peer`, ...) gives that rule's students; "teacher model" is the central
teacher network itself, trained on the server split. A difference `a − b` pairs the two rules'
runs on the same world (same seed, same grid point) and shows the mean of the per-seed
differences with a 95% t interval; "no clear difference" means the interval contains 0. Traffic
counts the bytes of the serialised arrays each client sent and received.
"""


def _folded(table: str, fold: bool) -> str:
    """A long table inside a ``<details>`` block (GitHub shows it folded, one click away)."""
    rows = table.count("\n") - 2
    return f"<details><summary>{rows} rows</summary>\n\n{table}\n</details>\n" if fold else table


def report_markdown(
    runs: Sequence[dict[str, Any]],
    unfinished: int = 0,
    wall_s: float | None = None,
    plots: Sequence[tuple[str, str]] = (),
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    """The whole report.md for finished runs, with links to ``plots`` (file, caption); the runs
    ``skipped`` for damaged files (directory, why) are listed under the opening paragraph."""
    keys = swept_keys([r["config"] for r in runs])
    groups = group_runs(runs, keys)
    rules, (a, b) = rule_order(r["summary"]["strategy"] for r in runs), headline_pair(runs)
    parts = [
        "# peerkd report\n",
        describe(runs, keys, unfinished, wall_s),
        provenance_text([r.get("provenance") for r in runs]),
    ]
    if skipped:
        parts += [skipped_text(skipped)]
    if keys:
        parts += ["## Accuracy by grid point\n", md_table(*overview_rows(groups, rules, (a, b)))]
        if len(keys) == 2 and {a, b} <= set(rules):
            parts += [f"### {a} − {b}\n", md_table(*pivot_rows(groups, a, b))]
    if is_text(runs := list(runs)):  # perplexity where the data is text (simulations.report_text)
        parts += ["## Perplexity by grid point\n", md_table(*perplexity_rows(groups, rules, (a, b))), PPL_NOTE + "\n"]
    if has_sizes(runs):  # students of several sizes (simulations.report_sizes)
        sizes = _folded(md_table(*size_rows(groups, rules)), len(groups) > 4)
        parts += ["## Per student size\n", sizes, SIZES_NOTE + "\n"]
    if is_defence_sweep(keys) and (tables := defence_tables(runs, rules)):  # simulations.report_defence
        parts += ["## Defences\n"] + [f"### {title}\n\n{md_table(h, rows)}" for title, h, rows in tables]
        parts += [DEFENCE_NOTE + "\n"]
    parts += ["## Per rule\n", _folded(md_table(*detail_rows(groups, rules)), len(groups) > 4)]
    if comparisons(rules, (a, b)):
        parts += ["## Paired differences\n", _folded(md_table(*paired_rows(groups, rules, (a, b))), len(groups) > 4)]
    if plots:
        parts += ["## Plots\n"] + [f"![{caption}]({name})\n\n*{caption}*\n" for name, caption in plots]
    return "\n".join(parts + [NOTES])
