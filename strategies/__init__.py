"""Exchange rules, one per file. ``RULES`` maps a config name to its class."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from peerkd.errors import ConfigError, check_choice
from strategies.base import DistillationStrategy
from strategies.dsfl import DSFL
from strategies.fd import FederatedDistillation
from strategies.fedavg import FederatedAveraging
from strategies.feddf import FedDF
from strategies.fedmd import FedMD
from strategies.fedproto import FedProto
from strategies.fedtgp import FedTGP
from strategies.local import LocalOnly
from strategies.oracle import OracleTeacher
from strategies.peer import PeerMutualLearning
from strategies.peer_sum import PeerSumLearning
from strategies.teacher import TeacherDistillation
from strategies.teacher_ensemble import EnsembleTeacher
from strategies.teacher_pool import PoolTeacher
from strategies.wml import WeightedMutualLearning

RULES: dict[str, type[DistillationStrategy]] = {
    cls.name: cls
    for cls in (
        LocalOnly,
        FederatedAveraging,
        TeacherDistillation,
        PeerMutualLearning,
        PeerSumLearning,
        WeightedMutualLearning,
        FederatedDistillation,
        DSFL,
        FedMD,
        FedDF,
        FedProto,
        FedTGP,
        OracleTeacher,
        EnsembleTeacher,
        PoolTeacher,
    )
}


def rule_settings(name: str) -> dict[str, tuple[type, Any]]:
    """The settings rule ``name`` takes: ``{key: (type, default)}``, read from its constructor,
    the one source of its defaults."""
    cls = RULES[check_choice("strategy", name, RULES)]
    hints = typing.get_type_hints(cls.__init__)
    return {k: (hints[k], p.default) for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def build_strategy(name: str, **settings: Any) -> DistillationStrategy:
    """Instantiate rule ``name``; a setting it does not take is refused, naming the keys it takes."""
    takes = rule_settings(name)
    for key in settings:
        if key not in takes:
            raise ConfigError(
                f"strategy.{key}",
                f"not a setting of rule {name!r}",
                ", ".join(takes) if takes else f"none; {name} takes no settings",
            )
    return RULES[name](**settings)
