"""The ``peerkd`` command: ``peerkd run|compare|sweep key=value ...`` (Hydra overrides), ``peerkd report DIR``.

Errors a user can fix print one line, ``peerkd: error: <field>: <problem> (allowed: ...)``,
and exit with status 2; no traceback. A file that cannot be read or written (a full disk, a
read-only directory) prints one line too, ``peerkd: error: <file>: <reason>``, status 1.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from pathlib import Path

import peerkd  # noqa: F401  (sets the no-telemetry environment first)

CONF_DIR = Path(__file__).parent / "conf"
USAGE = """usage: peerkd run|compare|sweep|bench [key=value ...]
       peerkd report DIR

commands:
  run      one exchange rule on one world, e.g.
           peerkd run strategy=peer data=digits num_clients=10 rounds=20 seed=0 out=runs/peer
           (--check: validate the config, the data and out= as a run would, then stop)
           (after Ctrl-C or a kill, add resume=true to go on from the last finished round)
  compare  several rules on the same worlds over seeds (default: local, fedavg, teacher, peer
           on mnist5k, 10 clients, Dirichlet alpha 0.3, seeds 0,1,2), e.g.
           peerkd compare data=mnist5k seeds=[0,1,2] out=runs/cmp
  sweep    rules x seeds on every point of a grid (key=v1,v2,... sweeps a key); a named study
           with experiment=scarcity|heterogeneity; run it again with the same out= to resume, e.g.
           peerkd sweep experiment=scarcity out=runs/scarcity
           peerkd sweep rules=[teacher,peer] partition.alpha=0.1,1,10 num_clients=4,8 seed=0,1,2
           (parallel=N runs N at once, 0 = one per CPU core up to 4; report=false skips report.md)
  bench    one world on a plain train_model loop, Flower's engine and the batched engine, per fleet
           size, timed (a benchmark), e.g.
           peerkd bench sizes=[10,100,1000] rounds=20
           peerkd bench sizes=[10000] variants=[batched] engine.device=cuda
  report   report.md and PNG plots of any results directory (run, compare or sweep), e.g.
           peerkd report runs/scarcity

Config keys and defaults: simulations/config.py, or `peerkd run --cfg job`.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``peerkd`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if {"-h", "--help"} & set(args):
        print(USAGE)
        return 0
    if command not in COMMANDS:
        return _fail(f"command: unknown value {command!r} (allowed: {', '.join(COMMANDS)})")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from peerkd.errors import ConfigError
    from simulations.sweep import sigterm_interrupts

    try:
        with sigterm_interrupts():
            return COMMANDS[command](args)
    except ConfigError as exc:
        return _fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        return _fail(_hydra_message(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or command}: {exc.strerror or exc}", code=1)
    except KeyboardInterrupt:
        return _fail(
            "interrupted; finished runs and rounds are on disk: to go on, run the same command again "
            "(with resume=true for peerkd run)",
            code=130,
        )


def _load(command: str, args: list[str]):
    """The composed config of ``command`` (logging set up), or None once ``--cfg job`` printed it."""
    from omegaconf import OmegaConf

    overrides = [o for o in args if o not in ("--cfg", "job")]
    cfg = _compose(command, overrides)
    if "--cfg" in args:
        print(OmegaConf.to_yaml(cfg))
        return None
    _setup_logging(cfg.verbose)
    return cfg


def _compose(command: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from simulations.config import check_overrides

    _register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=command, overrides=overrides)
    check_overrides(cfg, overrides)
    return cfg


@functools.cache
def _register() -> None:
    """Schemas and group options into Hydra's ConfigStore, once per process."""
    from simulations.config import register

    register()


def _run(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from simulations.config import check_engine, check_resources, to_run_spec, to_strategy
    from simulations.progress import Display, RoundBar, wanted
    from simulations.runner import run_engine

    check_only = CHECK_FLAG in args
    if (cfg := _load("run", [a for a in args if a != CHECK_FLAG])) is None:
        return 0
    spec, strategy = to_run_spec(cfg), to_strategy(cfg.strategy)
    resources, engine = check_resources(cfg.resources), check_engine(cfg.engine)
    _print_splits([spec.world])
    out = cfg.out or f"runs/run-{strategy.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if check_only:
        return _check_run(spec, strategy, out, engine, resources)
    config = OmegaConf.to_container(cfg, resolve=True)
    display = Display(wanted(cfg.quiet))
    try:
        summary = run_engine(
            spec, strategy, out, config, engine, resources, resume=cfg.resume, overwrite=cfg.overwrite,
            hooks=[RoundBar(display)],
        )  # fmt: skip
    finally:
        display.close()
    teacher = "" if summary["teacher_acc"] is None else f"  teacher model {summary['teacher_acc']:.3f}"
    if summary["acc_mean"] is None:
        print(
            f"{summary['strategy']}: no client reply was accepted in any round ({summary['rejected_replies']} "
            f"rejected; metrics.jsonl lists why)\nresults: {out}"
        )
        return 1
    print(
        f"{summary['strategy']}: accuracy mean {summary['acc_mean']:.3f}  worst {summary['acc_worst']:.3f}  "
        f"std {summary['acc_std']:.3f}{teacher}  bytes up {summary['bytes_up']:,} down {summary['bytes_down']:,}  "
        f"{summary['wall_s']:.0f} s\nresults: {out}"
    )
    return 0


CHECK_FLAG = "--check"  # peerkd run ... --check: validate everything a run would, then stop


def _check_run(spec, strategy, out: str, engine, resources: dict[str, float]) -> int:
    """Everything ``run`` checks before an engine starts (config, data, world, rule, memory, Ray
    address, ``out``); no run."""
    from peerkd.round.results import check_out_dir
    from simulations.preflight import preflight

    check_out_dir(out)
    preflight(spec, strategy, engine, resources)
    world = spec.world
    print(f"ok: {strategy.name} on {world.dataset}, {world.num_clients} clients, {spec.rounds} rounds; out {out}")
    return 0


def _compare(args: list[str]) -> int:
    from simulations.report import TABLE_HEADER, comparison_title, table_cells
    from simulations.report_io import write_comparison, write_report
    from simulations.sweep import seeds_from_seed

    args = seeds_from_seed(args)  # compare runs a list of seeds: seed=N means seeds=[N]
    if (cfg := _load("compare", args)) is None:
        return 0
    # A sweep with no grid; one run at a time in this process, each run's rounds shown, as always.
    out, runs, result = _plan_and_run("compare", cfg, args, args, {}, parallel=1, verbose=True)
    if result["summaries"]:
        title = comparison_title(
            runs[0].spec.world, runs[0].spec.rounds, [r.seed for r in runs], result["total_wall_s"]
        )
        rows = write_comparison(out, result["summaries"], list(cfg.rules), title)
        write_report(out)
        _print_table(TABLE_HEADER, [table_cells(r) for r in rows])
    skipped = f" ({result['skipped']} already finished)" if result["skipped"] else ""
    print(
        f"{result['runs']} runs in {result['wall_s']:.0f} s{skipped}{_failed_note(result)}; "
        f"results: {out} (comparison.md, comparison.csv, runs.csv, report.md)"
    )
    return 1 if result["failed"] else 0


def _sweep(args: list[str]) -> int:
    from peerkd.errors import ConfigError
    from simulations.sweep import grid_axes, seeds_from_seed, split_overrides

    args = seeds_from_seed(args)  # a sweep runs a list of seeds at every point: seed=N means seeds=[N]
    flags = [a for a in args if a in ("--cfg", "job")]
    plain, cli_axes = split_overrides([a for a in args if a not in flags])
    cfg = _load("sweep", plain + flags) or _compose("sweep", plain)
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in plain}
    swept = set(cli_axes) | (set(split_overrides(list(cfg.grid))[1]) if "grid" in fixed else set())
    if both := sorted(swept & fixed):  # one value on the command line fixes an experiment's axis, not its own sweep
        raise ConfigError(both[0], "given both as a sweep (a,b,... or in grid=) and as one value", "one of the two")
    axes = grid_axes(list(cfg.grid), cli_axes, fixed)
    if flags:
        print(
            f"# grid axes after the command line: {axes}; "
            f"at every point: rules {list(cfg.rules)} × seeds {list(cfg.seeds)}"
        )
        return 0
    out, _, result = _plan_and_run("sweep", cfg, args, plain, axes, cfg.parallel, cfg.verbose)
    if cfg.report:
        _print_overview(out)
    print(
        f"{result['runs']} runs ({result['skipped']} already finished, {result['ran']} run now) in "
        f"{result['wall_s'] / 60:.1f} min{_failed_note(result)}; results: {out}"
        + (" (report.md)" if cfg.report else "")
    )
    return 1 if result["failed"] else 0


def _plan_and_run(
    command: str, cfg, args: list[str], overrides: list[str], axes: dict[str, list[str]], parallel: int, verbose: bool
) -> tuple[Path, list, dict]:
    """Plan every run of ``command`` (all validated before any starts), then run the unfinished
    ones; return the results directory, the planned runs and ``run_sweep``'s result."""
    from peerkd.errors import ConfigError
    from peerkd.round.results import check_out_dir, hold_run_dir
    from simulations.config import check_resources
    from simulations.progress import Display, wanted
    from simulations.sweep import plan, run_sweep

    if cfg.overwrite:  # a sweep refuses runs made with other settings: it never replaces one
        raise ConfigError("overwrite", f"peerkd {command} never replaces finished runs", "false (or another out=)")
    out = Path(cfg.out or f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(out)
    runs = plan(lambda o: _compose(command, o), overrides, axes, out)
    resources = check_resources(cfg.resources)
    _print_splits([r.spec.world for r in runs])
    meta = {"command": f"peerkd {command} " + " ".join(args), "grid": axes, "points": len({r.point for r in runs})}
    display, created = Display(wanted(cfg.quiet)), not out.exists()
    try:
        with hold_run_dir(out):  # one sweep at a time in out= (each run also holds its own directory)
            try:
                return out, runs, run_sweep(runs, out, parallel, resources, meta, verbose, display)
            finally:
                display.close()
    except ConfigError:  # refused before any run started: leave no empty results folder behind
        if created:
            _remove_if_empty(out)
        raise


def _remove_if_empty(out: Path) -> None:
    """Remove ``out`` if it holds nothing but a released lock file."""
    from peerkd.round.results import LOCK_FILE

    if out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
        (out / LOCK_FILE).unlink(missing_ok=True)
        out.rmdir()


def _print_splits(worlds: list) -> None:
    """For worlds built from a user file: what became of its rows (one block per world, the
    first seed's; other seeds differ by rounding), and a warning for each split too small."""
    import dataclasses

    from peerkd.world.build import build_world, split_report, split_warnings
    from simulations.preflight import check_load

    seen = set()
    for spec in worlds:
        if spec.dataset != "file" or (key := dataclasses.replace(spec, seed=0)) in seen:
            continue
        seen.add(key)
        check_load(spec)  # a file too large to load is one line, not an allocation
        world = build_world(spec)
        print("\n".join(split_report(world)))
        for warning in split_warnings(world):
            print(f"peerkd: warning: {warning}", file=sys.stderr)


def _failed_note(result: dict) -> str:
    n = len(result["failed"])
    return f"; {n} FAILED (run the same command again to retry them)" if n else ""


def _print_overview(out: Path) -> None:
    from simulations.report import group_runs, headline_pair, overview_rows, rule_order, swept_keys
    from simulations.report_io import load_results, write_report

    results = load_results(out)
    write_report(out, results)
    runs = results.runs
    groups = group_runs(runs, swept_keys([r["config"] for r in runs]))
    _print_table(*overview_rows(groups, rule_order(r["summary"]["strategy"] for r in runs), headline_pair(runs)))


def _bench(args: list[str]) -> int:
    from peerkd.errors import ConfigError, check_choice
    from simulations.bench import VARIANTS, bench_table, run_bench
    from simulations.config import check_engine, to_run_spec, to_strategy

    if (cfg := _load("bench", args)) is None:
        return 0
    variants = [check_choice("variants", v, VARIANTS) for v in cfg.variants]
    if not cfg.sizes or min(cfg.sizes) < 2:
        raise ConfigError("sizes", f"{list(cfg.sizes)}", "a non-empty list of fleet sizes >= 2")
    spec, strategy, engine = to_run_spec(cfg), to_strategy(cfg.strategy), check_engine(cfg.engine)
    if "loop" in variants and strategy.name != "peer":
        raise ConfigError("strategy", f"the loop variant is written for peer, not {strategy.name}", "peer")
    out = Path(cfg.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    auto = cfg.data.name == "synth" and cfg.data.size == 0
    rows = run_bench(spec, strategy, engine, list(cfg.sizes), variants, out, auto)
    _print_table(*bench_table(rows))
    print(f"results: {out} (bench.csv, bench.md, bench.png)")
    return 0


def _report(args: list[str]) -> int:
    from peerkd.errors import ConfigError
    from simulations.report_io import write_report

    if len(args) != 1:
        raise ConfigError(
            "dir", f"expected one results directory, got {' '.join(args) or 'nothing'}", "peerkd report DIR"
        )
    # A damaged run is skipped with a warning: one ``peerkd: warning: ...`` line each, as other commands write.
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("peerkd: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    ours = logging.getLogger("peerkd")
    handlers, ours.handlers = ours.handlers, [handler]  # these lines alone, whatever ran before in this process
    try:
        print(f"report: {write_report(args[0])}")
    finally:
        ours.handlers = handlers
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:  # logs and CI: don't wrap the table at 80 columns
        console = Console(width=160)
    console.print(table)


COMMANDS = {"run": _run, "compare": _compare, "sweep": _sweep, "bench": _bench, "report": _report}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now: under a progress bar that is rich's proxy, which
    prints the line above the bar instead of through it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """peerkd's lines to stderr with the time (one handler however often ``main`` runs in a process)."""
    ours = logging.getLogger("peerkd")
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    # Flower logs a deprecation notice and per-round chatter; keep its errors only.
    logging.getLogger("flwr").setLevel(logging.DEBUG if verbose else logging.ERROR)


def _hydra_message(exc: Exception) -> str:
    """One line from a Hydra/OmegaConf error, naming the field and the allowed values."""
    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        key = exc.override.split("=", 1)[0]
        return f"{key}: cannot parse {exc.override!r} (allowed: Hydra override syntax; quote values with = or , inside)"
    text = str(exc) + ("\n" + str(exc.__cause__) if exc.__cause__ else "")
    if m := re.search(r"Could not find '([\w.]+)/([^']*)'", text):
        group, value = m.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}: unknown value {value!r} (allowed: {', '.join(options)})"
    if m := re.search(r"Key '\w+' not in '(\w+)'\s*\n\s*full_key: ([\w.]+)", text):
        schema, key = m.groups()
        from simulations.config import RULE_NODES

        rule = next((name for name, node in RULE_NODES.items() if node.__name__ == schema), None)
        if rule is not None:  # one rule's node: its own keys, from its constructor
            keys = [k for k in _schema_fields(schema) if k != "name"]
            return f"{key}: not a setting of rule {rule!r} (allowed: {', '.join(keys) or 'none'})"
        return f"{key}: unknown setting (allowed: {', '.join(_schema_fields(schema))})"
    if m := re.search(r"^(.*)\n\s*full_key: ([\w.\[\]]+)", str(exc.__cause__ or exc), flags=re.M):
        return f"{m.group(2)}: {m.group(1).strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _schema_fields(schema: str) -> list[str]:
    from simulations.config import schema_fields

    return schema_fields(schema)


def _fail(message: str, code: int = 2) -> int:
    print(f"peerkd: error: {message}", file=sys.stderr)
    return code


def console() -> None:
    """The console script: ``main``, then exit without tearing the interpreter down.

    Everything is written by then (results files closed or fsynced, logs flushed here, Ray
    shut down by Flower). Module teardown is a full garbage collection over torch, Ray and
    Flower objects: measured ~5 s after a Flower run on a loaded 2-core machine, longer
    than stopping the run took after Ctrl-C.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
