"""The engine runner: one run of one rule on one world, in the batched engine or Flower's.

Lists of runs (``peerkd compare`` and ``peerkd sweep``) are planned and executed by
``simulations.sweep``; results directories are read and reported by ``simulations.report_io``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peerkd.batched import run_batched
from peerkd.cluster import cluster_args
from peerkd.errors import RunInterrupted
from peerkd.round.checkpoint import Checkpoint
from peerkd.round.hook import RoundHook, SummaryFields
from peerkd.round.results import check_out_dir, hold_run_dir
from peerkd.round.run import run_on, server_app
from peerkd.round.spec import RunSpec
from simulations.config import EngineConf
from simulations.interrupts import graceful_stop
from simulations.preflight import preflight
from simulations.resume import prepare


def run_engine(
    spec: RunSpec,
    strategy,
    out_dir: str | Path,
    config: dict[str, Any],
    engine: EngineConf,
    resources: dict[str, float],
    ray_init: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    hooks: Sequence[RoundHook] = (),
) -> dict[str, Any]:
    """Run one rule on one world in ``engine`` (validated by ``check_engine``); return its summary.

    ``batched`` trains every student of an architecture as one vmapped model in this process
    (``engine.device``, ``engine.chunk``), or sharded over ``engine.workers`` Ray actors;
    ``flower`` is Flower's simulation engine, one Ray actor per client slot with ``resources``
    (``run_one``). Both use the Ray cluster at ``engine.ray_address`` if set, else a private
    local Ray. With ``resume``, a run killed in ``out_dir`` goes on from its last checkpointed
    round (``simulations.resume.prepare``; not the sharded batched engine). A finished run in
    ``out_dir`` made with other settings is replaced only with ``overwrite``. ``out_dir`` is held
    (``hold_run_dir``) from before ``prepare`` looks into it until the run ends.
    """
    check_out_dir(out_dir)
    preflight(spec, strategy, engine, resources)
    with hold_run_dir(out_dir):  # another run there is refused before it touches a file or starts an engine
        if (finished := prepare(out_dir, config, resume, overwrite)) is not None:
            return finished
        if engine.name == "flower":
            ray_init = cluster_args(engine.ray_address, ray_init or {})
            return _run_flower(spec, strategy, out_dir, config, resources, None, ray_init, resume, hooks)
        cluster = None
        if engine.workers:
            cluster = {
                "address": engine.ray_address,
                "workers": engine.workers,
                "num_cpus": engine.worker_cpus,
                "num_gpus": engine.worker_gpus,
            }
        settings = {"device": engine.device, "chunk": engine.chunk, "store": engine.store, "cluster": cluster,
                    "resume": resume, "stacked": engine.stacked}  # fmt: skip
        return run_batched(spec, strategy, out_dir, config, **settings, hooks=hooks)


class FlowerEngine:
    """Flower's simulation engine (``peerkd.round.run.Engine``): one ClientApp per virtual
    SuperNode, Ray actors with ``resources`` each, stopped cleanly on Ctrl-C or SIGTERM."""

    def __init__(self, num_clients: int, resources: dict[str, float], init_args: dict[str, Any], client_app):
        self.num_clients, self.resources, self.init_args, self.client_app = (
            num_clients,
            resources,
            init_args,
            client_app,
        )

    def serve(self, main, stop: threading.Event) -> None:
        """Run the simulation with ``main`` as its ServerApp's body."""
        from flwr.simulation import run_simulation

        with graceful_stop(stop):  # Ctrl-C, SIGTERM: the ServerApp stops, then Flower stops Ray
            try:
                run_simulation(
                    server_app=server_app(main),
                    client_app=self.client_app,
                    num_supernodes=self.num_clients,
                    backend_config={
                        "client_resources": self.resources,
                        "init_args": {"logging_level": "ERROR", "log_to_driver": False, **self.init_args},
                    },
                )
            except RunInterrupted:
                pass  # graceful_stop raises KeyboardInterrupt on leaving
            except BaseException:  # a second signal: don't leave the ServerApp thread running
                stop.set()
                raise

    def checkpoint(self, out_dir: Path, grid) -> Checkpoint:
        """The rule's state; each client writes its own student (``Checkpoint.client_dir``)."""
        return Checkpoint(out_dir, "flower")

    def hooks(self, grid) -> list[RoundHook]:
        """The summary's engine fields: engine, client resources, Ray address."""
        fields = {
            "engine": "flower",
            "client_resources": dict(self.resources),
            "ray_address": self.init_args["address"],
        }
        return [SummaryFields(lambda: fields)]


def run_one(
    spec: RunSpec,
    strategy,
    out_dir: str | Path,
    config: dict[str, Any],
    resources: dict[str, float],
    client_app=None,
    ray_init: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run one rule on one world in Flower's simulation engine; return its summary.

    Parameters
    ----------
    spec, strategy, out_dir, config
        The run's settings, rule, results directory and resolved config (``peerkd.round.run.run_on``).
    resources : dict
        Client resources for the Ray backend (``num_cpus``, ``num_gpus``).
    client_app : flwr.clientapp.ClientApp | None
        The clients' app (default: peerkd's); tests pass faulty ones.
    ray_init : dict | None
        Extra ``ray.init`` arguments (a sweep running runs side by side gives each its own
        local Ray instance and a share of the CPUs; ``address``: a Ray cluster, default a
        private local instance).
    resume : bool
        Go on from the checkpoint in ``out_dir`` if there is one (else it is removed).
    """
    check_out_dir(out_dir)  # before Ray starts
    preflight(spec, strategy, EngineConf(name="flower", ray_address=(ray_init or {}).get("address")), resources)
    return _run_flower(spec, strategy, out_dir, config, resources, client_app, ray_init, resume)


def _run_flower(spec, strategy, out_dir, config, resources, client_app, ray_init, resume, hooks=()) -> dict[str, Any]:
    """``run_one`` once its checks passed."""
    if client_app is None:
        from peerkd.student.client_app import app as client_app

    engine = FlowerEngine(spec.world.num_clients, resources, cluster_args(None, ray_init or {}), client_app)
    return run_on(engine, spec, strategy, out_dir, config, resume=resume, hooks=hooks)
