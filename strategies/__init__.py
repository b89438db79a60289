"""Exchange rules, one per file. ``RULES`` maps a config name to its class."""

from __future__ import annotations

from typing import Any

from peerkd.errors import ConfigError
from strategies.base import DistillationStrategy
from strategies.fedavg import FederatedAveraging
from strategies.local import LocalOnly
from strategies.peer import PeerMutualLearning
from strategies.teacher import TeacherDistillation

RULES: dict[str, type[DistillationStrategy]] = {
    cls.name: cls for cls in (LocalOnly, FederatedAveraging, TeacherDistillation, PeerMutualLearning)
}


def build_strategy(name: str, **params: Any) -> DistillationStrategy:
    """Instantiate rule ``name`` with the parameters its constructor takes (others are ignored)."""
    import inspect

    if name not in RULES:
        raise ConfigError("strategy", f"unknown rule {name!r}", RULES)
    cls = RULES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})
