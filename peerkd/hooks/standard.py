"""The hooks every run gets from its settings: ``standard_hooks(spec)``."""

from __future__ import annotations

from peerkd.hooks.agreement import AgreementHook
from peerkd.hooks.dpsgd import ExampleDPHook
from peerkd.hooks.faults import FaultsHook
from peerkd.hooks.participation import ParticipationHook
from peerkd.hooks.placement import PlacementHook
from peerkd.hooks.privacy import PrivacyHook
from peerkd.hooks.text import TextHook
from peerkd.hooks.timing import TimeBreakdown
from peerkd.round.hook import RoundHook
from peerkd.round.spec import RunSpec
from peerkd.world.build import build_world


def standard_hooks(spec: RunSpec) -> list[RoundHook]:
    """The round hooks ``spec`` asks for, in the order their summary fields apply: placement,
    text measures (a text world), peer agreement (``measure_agreement``), privacy (a budget set),
    participation, faults and attacks (any set); last, each round's time by section."""
    world = build_world(spec.world)
    hooks: list[RoundHook] = [PlacementHook()]
    if world.data.text:
        hooks.append(TextHook(world.data.name, *world.split("test")))
    if spec.measure_agreement:
        hooks.append(AgreementHook())
    if spec.privacy.enabled and spec.privacy.unit == "example":
        hooks.append(ExampleDPHook(spec.privacy, spec.rounds))
    elif spec.privacy.enabled:
        hooks.append(PrivacyHook(spec.privacy, spec.rounds, spec.clients_per_round or spec.world.num_clients))
    hooks.append(ParticipationHook(spec.world.num_clients, spec.clients_per_round, spec.world.seed, spec.round_timeout))
    if spec.faults.active or spec.attack.fraction > 0:
        w = spec.world
        hooks.append(FaultsHook(spec.faults, spec.attack, w.seed, w.num_clients, spec.round_timeout, world.num_classes))
    hooks.append(TimeBreakdown())
    return hooks
