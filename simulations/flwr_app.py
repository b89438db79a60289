"""The ServerApp of ``flwr run .``: the repo root is a Flower app (pyproject ``[tool.flwr.app]``).

Its flat run config (``--run-config "strategy='teacher' rounds=5"``) maps onto the same
structured config as ``peerkd run`` and is validated by the same functions. The run config's
defaults in pyproject.toml are ``peerkd run``'s (tests/test_layers.py checks they agree); a
rule setting left at ``""`` keeps the rule's own default, and one the rule does not take is
refused.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

import peerkd  # noqa: F401  (sets the no-telemetry environment)
from peerkd.errors import ConfigError, check_choice
from peerkd.hooks.standard import standard_hooks
from peerkd.round.loop import run_federation
from peerkd.round.results import RunWriter, check_out_dir, hold_run_dir
from peerkd.wire.fastpull import quick_pulls
from simulations.config import RULE_NODES, RunConf, SharedRuleConf, to_run_spec, to_strategy
from strategies import RULES

log = logging.getLogger("peerkd")

UNSET = ""  # a rule setting's run-config default: the rule's own default
_RUN_KEYS = {
    "strategy": "strategy.name",
    "data": "data.name",
    "data-path": "data.path",
    "data-label": "data.label",
    "data-size": "data.size",
    "transfer": "data.transfer",
    "transfer-size": "data.transfer_size",
    "standardize": "data.standardize",
    "test-frac": "data.test_frac",
    "public-frac": "data.public_frac",
    "server-frac": "data.server_frac",
    "partition": "partition.name",
    "partition-alpha": "partition.alpha",
    "classes-per-client": "partition.classes_per_client",
    "min-size": "partition.min_size",
    "samples-per-client": "partition.samples_per_client",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch-size": "train.batch_size",
    "num-clients": "num_clients",
    "rounds": "rounds",
    "seed": "seed",
    "students": "students",
    "out": "out",
    "round-timeout": "round_timeout",
}
_RULE_KEYS = {f.name.replace("_", "-"): f"strategy.{f.name}" for f in dataclasses.fields(SharedRuleConf)}
RUN_CONFIG_KEYS: dict[str, str] = {**_RUN_KEYS, **_RULE_KEYS}  # flat run-config key -> structured key


def config_from_run_config(run_config: dict[str, Any]):
    """The validated structured config (``simulations.config.RunConf``) for a flat run config."""
    from omegaconf import OmegaConf

    for key in run_config:
        if key not in RUN_CONFIG_KEYS:
            raise ConfigError(key, "unknown run-config key", RUN_CONFIG_KEYS)
    rule = check_choice("strategy", str(run_config.get("strategy", "peer")), RULES)
    cfg = OmegaConf.structured(RunConf(strategy=RULE_NODES[rule]()))
    for key, value in run_config.items():
        if key in _RULE_KEYS and value == UNSET:
            continue
        if key == "students":
            value = [s.strip() for s in str(value).split(",") if s.strip()]
        OmegaConf.update(cfg, RUN_CONFIG_KEYS[key], value, merge=False)
    return cfg


def run_config_defaults() -> dict[str, Any]:
    """The flat run config equal to ``peerkd run``'s defaults (what pyproject.toml declares)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(RunConf(strategy=RULE_NODES["peer"]()))
    flat = {key: OmegaConf.select(cfg, path) for key, path in _RUN_KEYS.items()}
    flat["students"] = ",".join(flat["students"])
    return {**{k: ("" if v is None else v) for k, v in flat.items()}, **dict.fromkeys(_RULE_KEYS, UNSET)}


app = ServerApp()


@app.main()
def flower_main(grid: Grid, context: Context) -> None:
    """ServerApp for `flwr run .`: settings from the run config, results under ``out``."""
    from flwr.superlink.grid import http_grid  # the deployment Grid (a simulation uses its own)
    from omegaconf import OmegaConf

    logging.getLogger("peerkd").setLevel(logging.INFO)
    quick_pulls(http_grid)  # a reply pulled before its objects are in: asked again after 0.02 s, not 1 s
    cfg = config_from_run_config(dict(context.run_config))
    spec, strategy = to_run_spec(cfg), to_strategy(cfg.strategy)
    out = check_out_dir(Path(cfg.out or f"runs/flwr-{context.run_id}").resolve())
    log.info(
        "peerkd: %s on %s, %d clients, %d rounds; results in %s",
        strategy.name,
        spec.world.dataset,
        spec.world.num_clients,
        spec.rounds,
        out,
    )
    with hold_run_dir(out):  # a second `flwr run` into the same out= is refused, not interleaved
        run_federation(grid, spec, strategy, RunWriter(out, OmegaConf.to_container(cfg)), standard_hooks(spec))
