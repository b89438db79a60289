"""``peerkd sweep``: rules × seeds on every point of a grid of worlds; paired, resumable, parallel.

A grid is a list of Hydra sweep overrides (``num_clients=2,4,8,16``), from the config
(``grid``, e.g. in ``conf/experiment/scarcity.yaml``) or the command line. Every point is
composed like ``peerkd compare``; all rules of one seed at one point share one world. Run
``r`` of point ``p`` lives in ``out/<p>/<rule>-seed<k>/``; a run with a summary.json is
finished and skipped when the sweep is started again, and an unfinished one goes on from
its last checkpointed round, so a stopped sweep loses nothing.

``peerkd compare`` is a sweep with no grid axes (one point, runs in ``out/<rule>-seed<k>/``):
the same planner (``plan``), executor (``run_sweep``) and ``runs.csv`` / ``sweep.json`` writers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerkd.errors import ConfigError, check_choice
from peerkd.round.checkpoint import Checkpoint, CheckpointError
from peerkd.round.results import SUMMARY_FILE, SUMMARY_KEYS
from simulations.progress import Display, RoundBar
from simulations.report_io import (
    RUNS_FILE,
    SWEEP_FILE,
    DamagedRun,
    is_number,
    read_config_tree,
    read_object,
    read_summary,
    write_atomic,
    write_csv,
)
from simulations.resume import config_change

log = logging.getLogger("peerkd.sweep")  # progress stays at INFO while runs log warnings only
AUTO_MAX = 4  # runs at once with parallel=0: each run holds ~2 GB (Ray, driver, client actors)
SWEEP_ONLY = ("rules", "seeds", "grid", "parallel", "report", "skip_unfit")  # left out of each run's config.yaml
# runs.csv columns: the summary's scalar fields, rule and seed first
RUN_FIELDS = ("strategy", "seed", *(k for k in SUMMARY_KEYS if k not in ("strategy", "seed", "per_client")))


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its rule, seed, grid point, validated settings and directory."""

    rule: str
    seed: int
    point: tuple[tuple[str, str], ...]
    spec: Any  # peerkd.round.loop.RunSpec
    strategy: Any  # strategies.base.DistillationStrategy
    out: Path
    config: dict[str, Any] = field(hash=False, compare=False)
    engine: Any = field(default=None, hash=False, compare=False)  # simulations.config.EngineConf

    @property
    def label(self) -> str:
        """``peer seed 1 num_clients=4`` for progress lines."""
        return " ".join([self.rule, f"seed {self.seed}", *(f"{k}={v}" for k, v in self.point)])


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Plain overrides, and sweep axes (``key=a,b``, ``key=range(0,3)``) by key, from a command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain, axes = [], {}
    parser = OverridesParser.create()
    for text in overrides:
        (o,) = parser.parse_overrides([text])
        if o.is_sweep_override():
            axes[o.get_key_element()] = list(dict.fromkeys(o.sweep_string_iterator()))
        else:
            plain.append(text)
    return plain, axes


def seeds_from_seed(overrides: list[str]) -> list[str]:
    """``seed=N`` (or ``seed=0,1,2``, ``seed=range(0,3)``) in compare or sweep, which run a list of
    seeds, becomes ``seeds=[N]``; given together with ``seeds=`` it is refused. Other tokens pass."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out, seed = [], None
    for text in overrides:
        if text.split("=", 1)[0].strip() != "seed" or "=" not in text:
            out.append(text)
            continue
        (o,) = parser.parse_overrides([text])
        seed = _ints("seed", list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()])
        out.append(f"seeds=[{','.join(map(str, seed))}]")
    if seed is not None and any(t.split("=", 1)[0].strip() == "seeds" for t in overrides):
        raise ConfigError(
            "seed", "given with seeds=; compare and sweep run the list in seeds", "one of them, e.g. seeds=[0,1,2]"
        )
    return out


def grid_axes(grid: list[str], cli_axes: dict[str, list[str]], fixed: set[str]) -> dict[str, list[str]]:
    """The sweep's axes: the config's ``grid``, then command-line axes (replacing or adding);
    a key set to one value on the command line (``fixed``) is not swept."""
    plain, axes = split_overrides(list(grid))
    if plain:
        raise ConfigError("grid", f"{plain[0]!r} is not a sweep", "entries key=v1,v2,... (two or more values)")
    axes.update(cli_axes)
    return {k: v for k, v in axes.items() if k not in fixed}


def expand(axes: dict[str, list[str]]) -> list[tuple[tuple[str, str], ...]]:
    """Every grid point, the first axis outermost: ``{a: [1, 2], b: [x]} -> [((a,1),(b,x)), ((a,2),(b,x))]``."""
    keys = list(axes)
    return [tuple(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def point_dir(point: tuple[tuple[str, str], ...]) -> str:
    """Directory name of a grid point: ``partition.samples_per_client=25,num_clients=2``."""
    return ",".join(f"{k}={v}" for k, v in point).replace(os.sep, "_").replace(" ", "_")


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the pace so far (``done`` runs in ``elapsed_s``); None before the first."""
    return None if done == 0 else elapsed_s / done * (total - done)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def check_finished(run: SweepRun) -> dict[str, Any] | None:
    """The summary of a finished run (None if unfinished); refuses one made with other settings.

    A run whose summary.json or config.yaml is damaged is unfinished: the damaged files are moved
    aside (``summary.json.damaged``: kept to look at, never read again) and the run is redone.
    An unfinished run's checkpoint is checked here too, before any run starts: made with other
    settings, refused; beside a damaged config.yaml (its settings unknown), removed.
    """

    checkpoint = Checkpoint(run.out, engine="")
    try:
        old = read_config_tree(run.out)
        summary = read_summary(run.out) if (run.out / SUMMARY_FILE).exists() else None
    except DamagedRun as exc:
        moved = _set_aside(run.out, exc)
        log.warning("redoing %s; set aside as %s", exc, ", ".join(f"{name}.damaged" for name in moved))
        if checkpoint.exists():
            log.warning("removed the checkpoint of %s: its settings cannot be checked", run.out)
            checkpoint.clear()
        return None
    if summary is None and not checkpoint.exists():
        return None
    if change := config_change(old, run.config):
        state = "finished" if summary is not None else "checkpointed"
        raise ConfigError(
            "out",
            f"{run.out} holds a {state} run made with other settings ({change})",
            "a new out directory, or the settings it was made with",
        )
    return summary


def _set_aside(out: Path, exc: DamagedRun) -> list[str]:
    """Rename the run's summary.json (so it is unfinished) and the damaged file to ``*.damaged``; their names."""
    moved = []
    for name in dict.fromkeys([SUMMARY_FILE, exc.file]):
        try:
            if (out / name).exists():
                os.replace(out / name, out / f"{name}.damaged")
                moved.append(name)
        except OSError as err:
            raise ConfigError(
                "out", f"{exc}, and it cannot be set aside: {err.strerror or err}", "remove the damaged file"
            ) from None
    return moved


def plan(
    compose: Callable[[list[str]], Any], overrides: list[str], axes: dict[str, list[str]], out: Path
) -> list[SweepRun]:
    """Compose every grid point and validate every run, before any run starts.

    ``compose(overrides)`` returns a composed sweep (or compare) config; an axis over ``strategy``
    or ``seed`` sets the rules or seeds run at every point instead of adding grid points. With no
    axes there is one point, and its runs live directly in ``out``.
    """
    from omegaconf import OmegaConf

    axes = dict(axes)
    rules_axis, seeds_axis = axes.pop("strategy", None), axes.pop("seed", None)
    runs = []
    for point in expand(axes):
        cfg = OmegaConf.to_object(compose(overrides + [f"{k}={v}" for k, v in point]))  # dataclasses: fast to read
        rules = rules_axis or list(cfg.rules)
        seeds = _ints("seed", seeds_axis) if seeds_axis else list(cfg.seeds)
        _check_lists(rules, seeds, cfg.pair)
        container = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in SWEEP_ONLY}
        where = out / point_dir(point) if point else out
        for seed in seeds:
            for rule in rules:
                if run := _sweep_run(cfg, container, rule, seed, point, where / f"{rule}-seed{seed}"):
                    runs.append(run)
    return runs


def _check_lists(rules: list[str], seeds: list[int], pair: list[str]) -> None:
    """Refuse an empty ``rules`` or ``seeds``, and a ``pair`` that is not two different rules."""
    from strategies import RULES

    if not rules:
        raise ConfigError("rules", "needs at least one rule", RULES)
    if not seeds:
        raise ConfigError("seeds", "needs at least one seed", "a list of integers, e.g. [0,1,2]")
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError("pair", f"{list(pair)} is not two different rules", "[a,b]: the report's headline a − b")
    for rule in pair:
        check_choice("pair", rule, RULES)


def _ints(key: str, values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ConfigError(key, f"{','.join(values)!r} are not all integers", "integers, e.g. seed=0,1,2") from None


def _sweep_run(cfg, container: dict[str, Any], rule: str, seed: int, point, out: Path) -> SweepRun | None:
    """The run of ``rule`` and ``seed`` at ``point``; None when the rule refuses the point's
    students or clients and ``skip_unfit`` is set (logged), else that refusal raised."""
    from simulations.config import check_engine, to_run_spec, to_strategy

    spec, strategy = to_run_spec(cfg, seed), to_strategy(cfg.strategy, rule)
    try:
        strategy.check(spec.students, spec.world.num_clients)
    except ConfigError as exc:
        if not getattr(cfg, "skip_unfit", False):
            raise
        log.warning("skip_unfit: left out %s seed %d at %s: %s", rule, seed, point_dir(point) or "the point", exc)
        return None
    config = {**container, "strategy": {**container["strategy"], "name": rule}, "seed": seed, "out": str(out)}
    return SweepRun(rule, seed, point, spec, strategy, out, config, check_engine(cfg.engine))


def workers(parallel: int) -> int:
    """Runs at once: ``parallel``, or for 0 one per CPU core, at most ``AUTO_MAX``.

    Measured on 2 cores (8 scarcity runs): 1 at a time 147 s, 2 at a time 99 s, 3 at a time
    109 s. A run alone leaves the CPUs idle while Ray and the clients start.
    """
    if parallel < 0:
        raise ConfigError("parallel", f"{parallel} is out of range", "0 (one run per CPU core, at most 4) or more")
    return parallel or max(1, min(os.cpu_count() or 1, AUTO_MAX))


def _child(run: SweepRun, resources: dict[str, float], ray_init: dict[str, Any]) -> dict[str, Any]:
    """A run in a worker process: its own local Ray instance, only warnings logged."""
    import torch

    logging.getLogger("peerkd").setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, ray_init["num_cpus"]))  # the batched engine's share of the cores
    return run_resumed(run, resources, ray_init)


def run_resumed(
    run: SweepRun, resources: dict[str, float], ray_init: dict[str, Any] | None = None, hooks: Sequence = ()
) -> dict[str, Any]:
    """``run`` through ``run_engine``, from its checkpoint if it has one. A checkpoint refused as
    damaged is removed (a warning) and the run started over: one damaged file costs that run's
    rounds, not the sweep."""
    from simulations.runner import run_engine

    def start() -> dict[str, Any]:
        return run_engine(
            run.spec, run.strategy, run.out, run.config, run.engine, resources, ray_init, resume=True, hooks=hooks
        )

    try:
        return start()
    except CheckpointError as exc:  # damaged: start over (one made with other settings: check_finished refused it)
        log.warning("%s: %s; removed its checkpoint, starting it over from round 1", run.out, exc)
        Checkpoint(run.out, engine="").clear()
        return start()


def execute(
    runs: list[SweepRun],
    parallel: int,
    resources: dict[str, float],
    on_done: Callable[[SweepRun, dict[str, Any] | None], None],
    hooks: Sequence = (),
) -> None:
    """Run ``runs``, ``parallel`` at once (1: in this process, with round ``hooks``); ``on_done(run,
    summary)`` after each, with summary None for a run that failed (its error is logged; the others go on)."""
    if parallel <= 1:
        for run in runs:
            try:
                summary = run_resumed(run, resources, hooks=hooks)
            except (RuntimeError, OSError) as exc:
                log.error("%s failed: %s", run.label, exc)
                summary = None
            on_done(run, summary)
        return
    _execute_pool(runs, parallel, resources, on_done)


def _execute_pool(runs, parallel, resources, on_done) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Each run gets its own Ray instance ("local": never join another's) and a share of the CPUs.
    ray_init = {
        "address": "local",
        "num_cpus": max(math.ceil(resources["num_cpus"]), (os.cpu_count() or 1) // parallel),
    }
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and Ray state
    pool = ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_child, run, resources, ray_init): run for run in runs}
        for future in as_completed(futures):
            try:
                summary = future.result()
            except Exception as exc:  # noqa: BLE001  (a crashed worker must not stop the sweep)
                log.error("%s failed: %s", futures[future].label, exc)
                summary = None
            on_done(futures[future], summary)
    except BaseException:  # interrupted: stop the runs in flight (they resume from their checkpoints)
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_children(multiprocessing.active_children())
        raise
    pool.shutdown()


def _stop_children(children: list, grace_s: float = 10.0) -> None:
    """SIGTERM each worker (a Flower run then stops and shuts its Ray down); SIGKILL those left after ``grace_s``."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()


def _exit_with_parent(parent: int) -> None:
    """In a worker: exit as soon as the sweep process is gone, however it ended."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM stops the sweep like Ctrl-C (runs in flight stopped, sweep.json written)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _preflight(runs: list[SweepRun]) -> None:
    """Build every world (and student) the runs need once, so a bad one fails before any run."""
    from simulations.runner import preflight

    seen = set()
    for run in runs:
        if run.spec not in seen:  # one spec: one world, whichever rule runs on it
            seen.add(run.spec)
            preflight(run.spec, run.strategy)


@contextlib.contextmanager
def _quiet_runs(verbose: bool):
    """Hide the runs' per-round lines (warnings stay) unless ``verbose``; progress stays."""
    ours, sweep_level = logging.getLogger("peerkd"), log.level
    level = ours.level
    if not verbose:
        ours.setLevel(logging.WARNING)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        ours.setLevel(level)
        log.setLevel(sweep_level)


class _Progress:
    """Counts finished runs and logs ``[k/N] run: acc (s) | elapsed, time left`` after each."""

    def __init__(self, total: int, done: int, todo: int):
        self.total, self.done, self.todo, self.ran, self.t0 = total, done, todo, 0, time.perf_counter()

    def __call__(self, run: SweepRun, summary: dict[str, Any] | None) -> None:
        self.done, self.ran = self.done + 1, self.ran + 1
        elapsed = time.perf_counter() - self.t0
        result = "FAILED" if summary is None else f"{_acc_text(summary)} ({summary['wall_s']:.0f} s)"
        log.info(
            "[%d/%d] %s: %s | %s elapsed, ~%s left",
            self.done,
            self.total,
            run.label,
            result,
            _hms(elapsed),
            _hms(eta_s(self.ran, self.todo, elapsed)),
        )


def _acc_text(summary: dict[str, Any]) -> str:
    """``acc 0.871``, or what a run where no reply was accepted has instead of an accuracy."""
    return "no reply accepted" if summary["acc_mean"] is None else f"acc {summary['acc_mean']:.3f}"


def run_sweep(
    runs: list[SweepRun],
    out: Path,
    parallel: int,
    resources: dict[str, float],
    meta: dict[str, Any],
    verbose: bool = False,
    display: Display | None = None,
) -> dict[str, Any]:
    """Run the unfinished ``runs`` (skipping those with a summary.json), writing ``runs.csv`` as
    runs finish and ``sweep.json`` (``meta``, counts, wall time of every session) at the end.
    ``display`` draws a bar of the runs (and of the running round, for runs in this process).

    Returns
    -------
    dict
        ``runs``, ``skipped``, ``ran``, ``failed`` (labels), ``wall_s`` of this session,
        ``total_wall_s`` of all sessions, and ``summaries`` of the finished runs in plan order.
    """
    out.mkdir(parents=True, exist_ok=True)
    summaries = {run.out: check_finished(run) for run in runs}
    todo = [run for run in runs if summaries[run.out] is None]
    n = min(workers(parallel), max(1, len(todo)))
    log.info(
        "%d runs, %d finished already, %d to run, %d at a time; results in %s",
        len(runs),
        len(runs) - len(todo),
        len(todo),
        n,
        out,
    )
    _preflight(todo)
    progress, failed = _Progress(len(runs), len(runs) - len(todo), len(todo)), []
    display = display or Display(False)
    bar = display.add("runs", len(runs), progress.done)

    def on_done(run: SweepRun, summary: dict[str, Any] | None) -> None:
        summaries[run.out] = summary
        if summary is None:
            failed.append(run.label)
        progress(run, summary)
        display.update(bar, progress.done)
        _write_runs_csv(out, runs, summaries)

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with _quiet_runs(verbose), sigterm_interrupts():
            execute(todo, n, resources, on_done, hooks=[RoundBar(display)])
    finally:
        display.remove(bar)
        session = {
            "started": started,
            "wall_s": round(time.perf_counter() - progress.t0, 1),
            "ran": progress.ran,
            "skipped": len(runs) - len(todo),
            "failed": failed,
            "parallel": n,
        }
        total = _write_sweep_json(
            out, {**meta, "runs": len(runs), "finished": sum(s is not None for s in summaries.values())}, session
        )
    return {
        "runs": len(runs),
        "skipped": session["skipped"],
        "ran": progress.ran,
        "failed": failed,
        "wall_s": session["wall_s"],
        "total_wall_s": total,
        "summaries": [summaries[run.out] for run in runs if summaries[run.out] is not None],
    }


def _write_runs_csv(out: Path, runs: list[SweepRun], summaries: dict[Path, dict[str, Any] | None]) -> None:
    keys = [k for k in dict.fromkeys(k for run in runs for k, _ in run.point) if k not in RUN_FIELDS]
    write_csv(
        out / RUNS_FILE,
        [*keys, *RUN_FIELDS, "dir"],
        (
            {**dict(run.point), **summaries[run.out], "dir": str(run.out.relative_to(out))}
            for run in runs
            if summaries.get(run.out)
        ),
    )


def _write_sweep_json(out: Path, meta: dict[str, Any], session: dict[str, Any]) -> float:
    """Add this session to ``sweep.json``; return the wall time of all its sessions."""
    sessions = _sessions(out)
    sessions.append(session)
    total = round(sum(s["wall_s"] for s in sessions), 1)
    write_atomic(out / SWEEP_FILE, json.dumps({**meta, "sessions": sessions, "wall_s": total}, indent=2).encode())
    return total


def _sessions(out: Path) -> list[dict[str, Any]]:
    """The sessions sweep.json recorded so far; a damaged sweep.json is set aside (a warning) and they start anew."""
    if not (path := out / SWEEP_FILE).exists():
        return []
    try:
        sessions = read_object(path).get("sessions", [])
        ok = isinstance(sessions, list) and all(isinstance(s, dict) and is_number(s.get("wall_s")) for s in sessions)
        if not ok:
            raise ValueError(f"{SWEEP_FILE}: sessions is not a list of sessions with their wall_s")
    except ValueError as exc:
        log.warning("%s: %s; set aside as %s.damaged, its sessions are not counted", out, exc, SWEEP_FILE)
        os.replace(path, out / f"{SWEEP_FILE}.damaged")
        return []
    return sessions
