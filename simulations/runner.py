"""The engine runner: one run of one rule on one world, in the batched engine or Flower's.

Lists of runs (``peerkd compare`` and ``peerkd sweep``) are planned and executed by
``simulations.sweep``; results directories are read and reported by ``simulations.report_io``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from peerkd.errors import ConfigError
from peerkd.round.checkpoint import Checkpoint, RunInterrupted
from peerkd.round.loop import RunSpec, make_server_app, privacy_setup
from peerkd.round.results import SUMMARY_FILE, check_out_dir
from peerkd.student.models import build_model, check_modality
from peerkd.world.build import build_world
from simulations.config import EngineConf
from simulations.interrupts import graceful_stop


def preflight(spec: RunSpec, strategy) -> None:
    """Fail fast, before Ray starts, on anything the world or the rule would refuse."""
    world = build_world(spec.world)
    for name in sorted(set(spec.students)):
        check_modality(name, world.data.text)
        build_model(name, world.data.input_shape, world.num_classes, seed=0)
    strategy.check(spec.students, spec.world.num_clients)
    privacy_setup(spec, strategy)  # refuses a budget no noise meets, or a rule noise cannot cover
    check_attack(spec, strategy)
    strategy.check_data(world.data.text)


def check_attack(spec: RunSpec, strategy) -> None:
    """Refuse attackers with a rule whose clients send weights: the attack forges what a client
    sends of logits, probabilities or class means, so there it would change nothing."""
    from strategies.base import LogitDistillation

    if spec.attack.fraction > 0 and not isinstance(strategy, LogitDistillation):
        raise ConfigError(
            "attack.fraction",
            f"{strategy.name}'s clients send weights, and attacks forge logits",
            "0 with this rule, or a logit rule (peer, wml, fd, dsfl, fedmd, teacher, local)",
        )


def run_engine(
    spec: RunSpec,
    strategy,
    out_dir: str | Path,
    config: dict[str, Any],
    engine: EngineConf,
    resources: dict[str, float],
    ray_init: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run one rule on one world in ``engine`` (validated by ``check_engine``); return its summary.

    ``batched`` trains every student of an architecture as one vmapped model in this process
    (``engine.device``, ``engine.chunk``), or sharded over ``engine.workers`` Ray actors;
    ``flower`` is Flower's simulation engine, one Ray actor per client slot with ``resources``
    (``run_one``). Both use the Ray cluster at ``engine.ray_address`` if set, else a private
    local Ray. With ``resume``, a run killed in ``out_dir`` goes on from its last checkpointed
    round (``simulations.resume.prepare``; not the sharded batched engine).
    """
    from peerkd.batched.sharded import cluster_args
    from simulations.resume import prepare

    if (finished := prepare(out_dir, config, resume)) is not None:
        return finished
    if engine.name == "flower":
        return run_one(
            spec,
            strategy,
            out_dir,
            config,
            resources,
            ray_init=cluster_args(engine.ray_address, ray_init or {}),
            resume=resume,
        )
    from peerkd.batched import run_batched

    check_out_dir(out_dir)
    preflight(spec, strategy)
    cluster = None
    if engine.workers:
        cluster = {
            "address": engine.ray_address,
            "workers": engine.workers,
            "num_cpus": engine.worker_cpus,
            "num_gpus": engine.worker_gpus,
        }
    return run_batched(
        spec, strategy, out_dir, config, device=engine.device, chunk=engine.chunk, cluster=cluster, resume=resume
    )


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
    spec : RunSpec
        World and training settings.
    strategy : DistillationStrategy
        The exchange rule.
    out_dir : str | Path
        Results directory (config.yaml, metrics.jsonl, summary.json).
    config : dict
        The resolved config, written as config.yaml.
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
    from flwr.simulation import run_simulation

    from peerkd.batched.sharded import cluster_args

    if client_app is None:
        from peerkd.student.client_app import app as client_app

    check_out_dir(out_dir)  # before Ray starts
    preflight(spec, strategy)
    init_args = cluster_args(None, ray_init or {})
    engine = {"engine": "flower", "client_resources": dict(resources), "ray_address": init_args["address"]}
    checkpoint, stop = Checkpoint(out_dir, "flower"), threading.Event()
    if not resume:
        checkpoint.clear()
    server = make_server_app(
        spec, strategy, str(out_dir), config, summary_extra=lambda: engine, checkpoint=checkpoint, stop=stop
    )
    with graceful_stop(stop):  # Ctrl-C, SIGTERM: the ServerApp stops, then Flower stops Ray
        try:
            run_simulation(
                server_app=server,
                client_app=client_app,
                num_supernodes=spec.world.num_clients,
                backend_config={
                    "client_resources": resources,
                    "init_args": {"logging_level": "ERROR", "log_to_driver": False, **init_args},
                },
            )
        except RunInterrupted:
            pass  # graceful_stop raises KeyboardInterrupt on leaving
        except BaseException:  # a second signal: don't leave the ServerApp thread running
            stop.set()
            raise
    summary_path = Path(out_dir) / SUMMARY_FILE
    if not summary_path.is_file():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    return json.loads(summary_path.read_text())
