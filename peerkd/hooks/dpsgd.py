"""Example-level DP on the server's side: the budget sent with every message, each client's
DP-SGD steps counted from its replies, and the ε each client spent in the summary.

The clients calibrate their own noise (``peerkd.student.dpsgd.client_dpsgd``): each knows its
shard, hence its sampling rate and the steps the run plans for it. Each reply reports the steps
taken, their noise multiplier and rate, so the spent ε is accounted from what happened. The
summary records the worst client's ε. Rules whose clients release statistics of their raw shard
are refused: FD (per-class means and label counts), and the oracle (pooled raw data).
"""

from __future__ import annotations

import logging
from typing import Any

from peerkd.errors import ConfigError
from peerkd.hooks.privacy import PrivacySpec
from peerkd.round.hook import RoundHook, RoundResult, RunRecord
from peerkd.student.dpsgd import dpsgd_epsilon, dpsgd_noise, sample_rate, steps_planned
from peerkd.wire import protocol as P
from peerkd.world.build import World

log = logging.getLogger("peerkd")


def check_example_rule(rule: Any) -> None:
    """ConfigError naming ``privacy.unit`` for a rule whose clients release more than functions of their model."""
    if not getattr(rule, "private", True) or not getattr(rule, "example_dp", True):
        raise ConfigError(
            "privacy.unit",
            f"rule {rule.name!r} releases statistics of the private data itself, which DP-SGD does not cover",
            "client (if the rule supports it), or another rule",
        )


def check_example_budget(privacy: PrivacySpec, rounds: int, rule: Any, world: World, epochs: int, batch: int) -> None:
    """Before a run: ConfigError for a rule DP-SGD does not cover, or for a budget that the
    smallest or the largest shard of ``world`` cannot meet with any noise (``dpsgd_noise``)."""
    check_example_rule(rule)
    n_t = len(world.transfer_x) if getattr(rule, "message_type", None) == P.MSG_DISTILL else 0
    sizes = [len(part) for part in world.partitions]
    for n in {min(sizes), max(sizes)}:
        steps = steps_planned(n, n_t, batch, epochs, rounds)
        dpsgd_noise(float(privacy.epsilon), privacy.delta, sample_rate(n, batch), steps)


class ExampleDPHook(RoundHook):
    """DP-SGD's budget in every message; per client, the steps taken, their noise and rate."""

    reads_messages = True  # counts the releases in the Messages sent and received

    def __init__(self, privacy: PrivacySpec, rounds: int):
        self.privacy, self.rounds = privacy, rounds
        self.steps: dict[int, int] = {}
        self.noise: dict[int, tuple[float, float]] = {}  # client -> (noise multiplier, sampling rate)

    def setup(self, rule: Any, fresh: bool) -> dict[str, Any]:
        check_example_rule(rule)
        if fresh:
            log.info(
                "[%s] privacy: DP-SGD, each example's gradient clipped to %g, (%g, %g) over %d rounds",
                rule.name, self.privacy.clip, self.privacy.epsilon, self.privacy.delta, self.rounds,
            )  # fmt: skip
        return {"dp_unit": "example", "dp_epsilon": self.privacy.epsilon, "dp_delta": self.privacy.delta,
                "dp_clip": self.privacy.clip}  # fmt: skip

    def message_config(self, run_metrics: dict[str, Any]) -> dict[str, Any]:
        p = self.privacy
        return {P.CFG_DPSGD_EPSILON: float(p.epsilon), P.CFG_DP_DELTA: p.delta, P.CFG_DP_CLIP: p.clip,
                P.CFG_DP_ROUNDS: self.rounds}  # fmt: skip

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        taken = 0
        for reply in result.replies:
            m = reply.content[P.KEY_METRICS]
            if P.METRIC_DP_STEPS in m:
                client = int(m[P.METRIC_PARTITION])
                self.steps[client] = self.steps.get(client, 0) + int(m[P.METRIC_DP_STEPS])
                self.noise[client] = (float(m[P.METRIC_DP_NOISE]), float(m[P.METRIC_DP_RATE]))
                taken += int(m[P.METRIC_DP_STEPS])
        return {"dp_steps": taken}

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        spent = {c: dpsgd_epsilon(*self.noise[c], n, self.privacy.delta) for c, n in self.steps.items()}
        noises = [z for z, _ in self.noise.values()]
        return {
            "dp_epsilon_spent": max(spent.values(), default=0.0),  # the worst client's
            "dp_epsilon_spent_mean": sum(spent.values()) / len(spent) if spent else 0.0,
            "dp_sgd_noise_min": min(noises, default=0.0),
            "dp_sgd_noise_max": max(noises, default=0.0),
            "dp_sgd_steps_max": max(self.steps.values(), default=0),
        }

    def state(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "noise": {c: list(v) for c, v in self.noise.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = {int(c): int(n) for c, n in state.get("steps", {}).items()}
        self.noise = {int(c): (float(v[0]), float(v[1])) for c, v in state.get("noise", {}).items()}
