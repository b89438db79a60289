"""Exchange rules, one per file. ``RULES`` maps a config name to its class."""

from __future__ import annotations

from typing import Any

from peerkd.errors import ConfigError
from strategies.base import DistillationStrategy
from strategies.dsfl import DSFL
from strategies.fd import FederatedDistillation
from strategies.feddf import FedDF
from strategies.fedavg import FederatedAveraging
from strategies.fedmd import FedMD
from strategies.local import LocalOnly
from strategies.oracle import OracleTeacher
from strategies.peer import PeerMutualLearning
from strategies.teacher import TeacherDistillation
from strategies.teacher_ensemble import EnsembleTeacher
from strategies.wml import WeightedMutualLearning

RULES: dict[str, type[DistillationStrategy]] = {
    cls.name: cls
    for cls in (
        LocalOnly, FederatedAveraging, TeacherDistillation, PeerMutualLearning, WeightedMutualLearning,
        FederatedDistillation, DSFL, FedMD, FedDF, OracleTeacher, EnsembleTeacher,
    )
}


def build_strategy(name: str, **params: Any) -> DistillationStrategy:
    """Instantiate rule ``name`` with the parameters its constructor takes (others are ignored)."""
    import inspect

    if name not in RULES:
        raise ConfigError("strategy", f"unknown rule {name!r}", RULES)
    cls = RULES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})
