"""``peerkd bench``: one world, three ways to run it, timed side by side (a benchmark, not a test).

For each fleet size N the same world, rule and rounds run as
- ``loop``: a plain single-process loop of ``peerkd.student.training.train_model`` per client (peer
  mutual learning written out by hand: the reference an engine must not be much slower than);
- ``flower``: Flower's simulation engine (Ray, one actor per client slot);
- ``batched``: the batched engine (every student of an architecture in one vmapped model).

Each variant runs in a fresh process, so its peak RSS is its own (for ``flower`` that is
the driver's; Ray's actors are separate processes). Writes ``bench.csv``, ``bench.md`` and
``bench.png``; ratios are to the loop of the same size in the same session.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from peerkd.clock import SECTIONS
from peerkd.round.checkpoint import BACKGROUND_CPU
from peerkd.wire import protocol as P

log = logging.getLogger("peerkd")

VARIANTS = ("loop", "flower", "batched")
SECTION_FIELDS = tuple(f"time_{name}_s" for name in SECTIONS)
BACKGROUND_FIELD = f"time_{BACKGROUND_CPU}_s"  # the checkpoint writer's CPU seconds, beside the round
FIELDS = (
    "clients",
    "variant",
    "wall_s",
    "round_s_first",
    "round_s_median",
    "peak_rss_mb",
    "peak_gpu_mb",
    "acc_mean",
    "ratio_to_loop",
    "device",
    "gflop_round",  # a round's FLOPs (simulations.floor.round_flops): the algorithm's, every variant's
    "gflops",  # achieved: gflop_round / round_s_median
    "gemm_gflops",  # the GEMM rate measured in the variant's process
    "pct_of_gemm",
    *SECTION_FIELDS,  # median seconds per round by section (the engines' runs)
    BACKGROUND_FIELD,
)


def world_for(spec, clients: int, auto_size: bool):
    """``spec`` with ``clients`` clients; a generated dataset (``auto_size``) grows to keep ≥ 24
    private samples per client."""
    world = dataclasses.replace(spec.world, num_clients=clients)
    if auto_size:
        pool = 1.0 - world.test_frac - world.public_frac - world.server_frac
        world = dataclasses.replace(world, data_size=max(20_000, math.ceil(24 * clients / pool)))
    return dataclasses.replace(spec, world=world)


def plain_loop(spec, alpha: float, temperature: float) -> dict[str, Any]:
    """Peer mutual learning as a plain loop: each round every client trains (CE + KD toward the
    leave-one-out mean of the others' last logits), replies with logits and is evaluated, exactly
    as the ClientApp does (same models, seeds and batches). Returns ``acc_mean`` and ``round_s``."""
    import numpy as np
    import torch

    from peerkd.student.models import build_model
    from peerkd.student.training import evaluate, predict_logits, round_seed, shared_transfer_seed, train_model
    from peerkd.world.build import build_world
    from strategies.aggregation import peer_targets

    torch.set_num_threads(1)  # as each Flower client actor does
    world, w = build_world(spec.world), spec.world
    clients = range(w.num_clients)
    models = [
        build_model(
            spec.students[c % len(spec.students)], world.data.input_shape, world.num_classes, seed=w.seed * 1000 + c
        )
        for c in clients
    ]
    logits: dict[int, np.ndarray] = {}
    round_s, accs = [], []
    for rnd in range(1, spec.rounds + 1):
        t0 = time.perf_counter()
        targets = peer_targets(logits, list(clients))
        for c in clients:
            train_model(
                models[c],
                *world.private(c),
                epochs=spec.epochs,
                lr=spec.lr,
                batch_size=spec.batch_size,
                seed=round_seed(w.seed, c, rnd),
                transfer_seed=shared_transfer_seed(w.seed, rnd),
                transfer_x=world.transfer_x,
                targets=targets[c],
                alpha=alpha,
                temperature=temperature,
            )
        logits = {c: predict_logits(models[c], world.transfer_x) for c in clients}
        accs = [evaluate(models[c], *world.split("test"))[0] for c in clients]
        round_s.append(time.perf_counter() - t0)
    return {"acc_mean": float(np.mean(accs)), "round_s": round_s}


def run_variant(variant: str, spec, strategy, engine, out: Path) -> dict[str, Any]:
    """One variant of one size, in this process; its timings, memory, accuracy, the round's time by
    section (``peerkd.clock``; the engines' runs only) and the GEMM rate measured here afterwards
    (with the thread setting the variant ran with)."""
    from peerkd.batched.memory import peak_rss_mb
    from peerkd.round.results import METRICS_FILE, read_jsonl
    from peerkd.world.build import build_world
    from simulations.floor import gemm_rate
    from simulations.runner import preflight, run_engine
    from strategies.base import default_temperature

    t0 = time.perf_counter()
    if variant == "loop":
        preflight(spec, strategy)  # builds the world, as each engine's run does
        text = build_world(spec.world).data.text
        res = plain_loop(spec, strategy.alpha, strategy.temperature or default_temperature(text))
        wall = time.perf_counter() - t0
        return {**res, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": None, "device": "cpu",
                "sections": {}, "gemm_gflops": gemm_rate("cpu")}  # fmt: skip
    engine = dataclasses.replace(engine, name=variant)
    summary = run_engine(spec, strategy, out, {"bench": variant}, engine, {"num_cpus": 1.0, "num_gpus": 0.0})
    wall = time.perf_counter() - t0
    rows = [r for r in read_jsonl(out / METRICS_FILE) if r.get("type") == "round"]
    device = summary.get("device") or "cpu"
    return {
        "acc_mean": summary["acc_mean"],
        "round_s": [r["round_s"] for r in rows],
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": summary.get("peak_gpu_mb"),
        "device": device,
        "sections": {k: [r[k] for r in rows if k in r] for k in (*SECTION_FIELDS, BACKGROUND_FIELD)},
        "gemm_gflops": gemm_rate(device),
    }


def _in_child(variant: str, spec, strategy, engine, out: Path) -> dict[str, Any]:
    logging.getLogger("peerkd").setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    return run_variant(variant, spec, strategy, engine, out)


def run_bench(
    spec, strategy, engine, sizes: list[int], variants: list[str], out: Path, auto_size: bool
) -> list[dict[str, Any]]:
    """Every (size, variant) in a fresh process; rows as ``FIELDS``, written as they finish."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from simulations.runner import preflight

    for n in sizes:  # refuse a world that cannot be made (one clear line) before any variant runs
        preflight(world_for(spec, n, auto_size), strategy)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    from simulations.floor import round_flops

    for n in sizes:
        sized = world_for(spec, n, auto_size)
        flops = round_flops(sized, getattr(strategy, "message_type", None) in (P.MSG_DISTILL, P.MSG_DIGEST))
        for variant in variants:
            log.info("bench: %d clients, %s ...", n, variant)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                res = pool.submit(_in_child, variant, sized, strategy, engine, out / f"{variant}-{n}").result()
            rows.append(_row(n, variant, res, rows, flops))
            log.info("bench: %d clients, %s: %.1f s, acc %.4f", n, variant, res["wall_s"], res["acc_mean"])
            write_bench(out, rows)
    return rows


def _row(n: int, variant: str, res: dict[str, Any], rows: list[dict[str, Any]], flops: float) -> dict[str, Any]:
    import numpy as np

    loop = (
        res["wall_s"]
        if variant == "loop"
        else next((r["wall_s"] for r in rows if r["clients"] == n and r["variant"] == "loop"), None)
    )
    median = float(np.median(res["round_s"]))
    achieved = flops / median / 1e9 if median > 0 else None
    return {
        "clients": n,
        "variant": variant,
        "wall_s": res["wall_s"],
        "round_s_first": res["round_s"][0],
        "round_s_median": median,
        "peak_rss_mb": res["peak_rss_mb"],
        "peak_gpu_mb": res["peak_gpu_mb"],
        "acc_mean": res["acc_mean"],
        "ratio_to_loop": None if loop is None else res["wall_s"] / loop,
        "device": res["device"],
        "gflop_round": flops / 1e9,
        "gflops": achieved,
        "gemm_gflops": res["gemm_gflops"],
        "pct_of_gemm": None if achieved is None else 100 * achieved / res["gemm_gflops"],
        **{
            k: float(np.median(res["sections"][k])) if res["sections"].get(k) else None
            for k in (*SECTION_FIELDS, BACKGROUND_FIELD)
        },
    }


def bench_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the bench table."""

    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    header = [
        "clients",
        "variant",
        "wall s",
        "round 1 s",
        "median round s",
        "peak RSS MB",
        "peak GPU MB",
        "accuracy",
        "× loop",
        "device",
        "GFLOP a round",
        "GFLOP/s",
        "GEMM GFLOP/s",
        "% of GEMM",
    ]
    cells = [
        [
            str(r["clients"]),
            r["variant"],
            num(r["wall_s"], ".1f"),
            num(r["round_s_first"], ".2f"),
            num(r["round_s_median"], ".2f"),
            num(r["peak_rss_mb"], ".0f"),
            num(r["peak_gpu_mb"], ".0f"),
            num(r["acc_mean"], ".4f"),
            num(r["ratio_to_loop"], ".2f"),
            r["device"],
            num(r["gflop_round"], ".1f"),
            num(r["gflops"], ".1f"),
            num(r["gemm_gflops"], ".0f"),
            num(r["pct_of_gemm"], ".0f"),
        ]
        for r in rows
    ]
    return header, cells


def sections_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of where a round's time goes: median seconds per section (engines only)."""
    timed = [r for r in rows if r.get("time_compute_s") is not None]
    header = ["clients", "variant", "median round s", *SECTIONS, "other", "checkpoint CPU"]
    cells = []
    for r in timed:
        parts = [r[f"time_{name}_s"] or 0.0 for name in SECTIONS]
        other = r["round_s_median"] - sum(parts) + (r["time_io_s"] or 0.0)  # io falls outside round_s
        background = "–" if r.get(BACKGROUND_FIELD) is None else f"{r[BACKGROUND_FIELD]:.2f}"
        cells.append([str(r["clients"]), r["variant"], f"{r['round_s_median']:.2f}", *(f"{p:.2f}" for p in parts),
                      f"{max(other, 0.0):.2f}", background])  # fmt: skip
    return header, cells


def write_bench(out: Path, rows: list[dict[str, Any]]) -> None:
    """bench.csv, bench.md and bench.png (wall time against fleet size, one line per variant)."""
    from simulations.plots import png_bytes
    from simulations.report import md_table

    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    text = md_table(*bench_table(rows))
    if any(r.get("time_compute_s") is not None for r in rows):
        text += "\n\nWhere a round's time goes (median seconds; `wait` is the grid's push and pull beyond\n"
        text += "the sections inside it, with Flower's engine the clients' own work; `checkpoint CPU` is the\n"
        text += "CPU time of the thread that writes the previous round's checkpoint while this one runs, on top):\n\n"
        text += md_table(*sections_table(rows))
    (out / "bench.md").write_text(text)
    (out / "bench.png").write_bytes(png_bytes(_figure(rows)))


def _figure(rows: list[dict[str, Any]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=150)
    ax = fig.add_subplot()
    for variant in VARIANTS:
        pts = sorted((r["clients"], r["wall_s"]) for r in rows if r["variant"] == variant)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=variant)
    ax.set(xscale="log", yscale="log", xlabel="clients (students)", ylabel="wall time, s", title="peerkd bench")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
