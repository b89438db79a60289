"""One run's settings below the rule (``RunSpec``): the world, the clients' training and the
extras the standard hooks are built from (``peerkd.hooks.standard_hooks``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peerkd.hooks.faults import AttackSpec, FaultSpec
from peerkd.hooks.privacy import PrivacySpec
from peerkd.wire.codec import FP32, Codec
from peerkd.world.build import WorldSpec


@dataclass(frozen=True)
class RunSpec:
    """One run's settings below the strategy: the world and the clients' training."""

    world: WorldSpec = field(default_factory=WorldSpec)
    rounds: int = 20
    students: tuple[str, ...] = ("mlp64",)
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    round_timeout: float = 600.0  # seconds to wait for a round's replies
    wait_timeout: float = 120.0  # seconds to wait for nodes to connect at start
    measure_agreement: bool = True  # peer-agreement metrics (may ask clients for measurement-only logits)
    clients_per_round: int = 0  # partial participation: a seeded sample of this many clients per round (0: all)
    codec: Codec = FP32  # how logits, probabilities and targets travel, both ways
    privacy: PrivacySpec = field(default_factory=PrivacySpec)  # clients' noise (epsilon None: off)
    faults: FaultSpec = field(default_factory=FaultSpec)  # injected crashes, stragglers, dropouts, late joiners
    attack: AttackSpec = field(default_factory=AttackSpec)  # attacking clients
