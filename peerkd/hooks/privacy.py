"""Differential privacy for what a client sends: clipped rows, Gaussian noise, RDP accounting.

A client's release is the matrix of its outputs on shared inputs (the transfer set, and the
server split's inputs when a rule asks for them). Each row is centred (softmax ignores a shift,
so nothing a receiver reads is lost) and clipped to L2 norm ``clip``; Gaussian noise with standard
deviation ``z · Δ`` is added to every entry before encoding, where ``Δ = 2 · clip · √rows`` is the
release's L2 sensitivity.

The privacy unit is the client's **whole private shard**, not one example: the student was
trained on every example without DP-SGD, so changing one example may move every row of the
release anywhere in its clip ball. Two rows in a ball of radius ``clip`` differ by at most
``2 · clip``, hence Δ. Composition over the run's releases is accounted by Flower's RDP
accountant (``flwr.serverapp.RdpAccountant``, backed by Google's ``dp-accounting``), with no
amplification by client sampling claimed. Probabilities (DS-FL) are the softmax of the noisy
logits: post-processing, at no privacy cost.

``noise="distributed"`` (``peer_sum`` only) splits the noise between the clients whose releases
are summed: each adds ``z / √(n − 1)`` of it, so what any one of them, or the server, learns from
the sum beyond its own release carries ``z`` (``n`` senders). That holds when the sum is computed
under secure aggregation, which peerkd does not run (``strategies.peer_sum``): each release seen
alone carries only ``z / √(n − 1)``, and the summary reports ε under both assumptions.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from peerkd.errors import ConfigError, check_choice, check_range
from peerkd.round.hook import RoundHook, RoundResult, RunRecord
from peerkd.wire import protocol as P

log = logging.getLogger("peerkd")

NOISES = ("client", "distributed")
UNITS = ("client", "example")  # what one unit of privacy is: a client's whole shard, or one example of it
RELEASES = ("logits", "votes")  # what a client releases under client-level DP: clipped logits, or top-1 votes
VOTE_CONFIDENCE = 0.9  # a voted row's target: this much on the noisy argmax, the rest spread (label smoothing)
MAX_NOISE = 1e4  # a budget that needs more noise than this (x the sensitivity) is refused as unreachable
_NOISE_STREAM = 0x5EED_D9  # keeps the noise generator apart from batch order and model init


@dataclass(frozen=True)
class PrivacySpec:
    """The run's privacy target: ``epsilon`` (None: off), ``delta``, the clip bound, who adds the
    noise (``noise`` in ``NOISES``: each client all of it, or shared by summed clients), and the
    ``unit`` protected (``UNITS``). With ``unit="client"`` the released rows are clipped and noised
    (this module), or with ``release="votes"`` replaced by noisy one-hot votes of the top class.
    With ``"example"`` the students train with DP-SGD (``peerkd.student.dpsgd``), clipping each
    example's gradient to ``clip``, and release without further noise."""

    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    noise: str = "client"
    unit: str = "client"
    release: str = "logits"

    def __post_init__(self) -> None:
        check_choice("privacy.noise", self.noise, NOISES)
        check_choice("privacy.unit", self.unit, UNITS)
        check_choice("privacy.release", self.release, RELEASES)
        if self.unit == "example" and self.release != "logits":
            raise ConfigError("privacy.release", "example-level DP releases the DP-trained model's outputs", "logits")
        if self.unit == "example" and self.noise != "client":
            raise ConfigError("privacy.noise", "example-level DP adds its noise to each client's gradients", "client")
        if self.epsilon is not None:
            check_range("privacy.epsilon", self.epsilon, 0.0, low_open=True)
        check_range("privacy.delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
        check_range("privacy.clip", self.clip, 0.0, low_open=True)

    @property
    def enabled(self) -> bool:
        """Whether clients add noise."""
        return self.epsilon is not None


def _accountant(delta: float):
    from flwr.serverapp import PrivacyConfig, RdpAccountant
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

    config = PrivacyConfig(delta, 1, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    return RdpAccountant(config)


def epsilon_spent(noise: float, releases: int, delta: float) -> float:
    """ε at ``delta`` after ``releases`` Gaussian releases of noise multiplier ``noise`` (RDP accountant).

    One release at ``noise`` 1 and δ = 1e-5 over 20 releases gives 30.13 (see the tests for the
    closed form it matches).
    """
    return epsilon_of_events([noise] * releases, delta)


def epsilon_of_events(noises: list[float], delta: float) -> float:
    """ε at ``delta`` after one Gaussian release per entry of ``noises`` (its noise multiplier);
    ``epsilon_of_events([z] * r, d) == epsilon_spent(z, r, d)``."""
    if not noises:
        return 0.0
    from flwr.serverapp import GaussianPrivacyEvent

    accountant = _accountant(delta)
    for z, count in sorted(Counter(noises).items()):
        accountant.compose(GaussianPrivacyEvent(noise_multiplier=float(z), sample_size=1, population_size=1), count)
    return float(accountant.get_epsilon(delta))


def share_of_noise(senders: int) -> float:
    """The part of the noise multiplier each of ``senders`` summed clients adds under distributed
    noise, ``1 / √(senders − 1)``: the others' shares then add up to the whole for any one of them."""
    return 1.0 / math.sqrt(max(senders - 1, 1))


def summed_noise(noise: float, senders: int, summed: int) -> float:
    """The multiplier protecting a client in a sum of ``summed`` releases, each noised at ``noise``
    x ``share_of_noise(senders)``, as another sender sees it after removing its own share:
    ``noise · √((summed − 1) / (senders − 1))``, ``noise`` when all ``senders`` are summed. A lone
    sender's release reaches only non-senders, with its own share: ``noise · share_of_noise(senders)``."""
    return noise * share_of_noise(senders) * math.sqrt(max(summed - 1, 1))


def noise_multiplier(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ``releases`` compose to at most (ε, δ).

    Raises ConfigError, naming ``privacy.epsilon``, when even ``MAX_NOISE`` cannot meet it.
    """
    if epsilon_spent(MAX_NOISE, releases, delta) > epsilon:
        raise ConfigError(
            "privacy.epsilon",
            f"{epsilon:g} cannot be met over {releases} releases at delta {delta:g}, "
            f"even with noise {MAX_NOISE:g}x the sensitivity",
            "a larger privacy.epsilon or privacy.delta, or fewer rounds",
        )
    lo, hi = math.log(1e-3), math.log(MAX_NOISE)  # epsilon falls as the noise grows
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon_spent(math.exp(mid), releases, delta) > epsilon else (lo, mid)
    return math.exp(hi)


def sensitivity(rows: int, clip: float) -> float:
    """L2 sensitivity of ``rows`` released rows, each in a ball of radius ``clip``: ``2 · clip · √rows``."""
    return 2.0 * clip * math.sqrt(rows)


def clip_rows(values: np.ndarray, clip: float) -> np.ndarray:
    """Each row centred (minus its mean), then scaled down to L2 norm at most ``clip``.

    ``clip_rows([[3, -1, 1]], 1)`` centres to ``[2, -2, 0]`` (norm √8) and gives ``[[0.7071, -0.7071, 0]]``.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, clip / np.maximum(norms, 1e-12))


def privatize(
    released: dict[str, np.ndarray], clip: float, noise: float, key: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """The Gaussian mechanism on one release: every matrix row-clipped, then noise of standard
    deviation ``noise · sensitivity(all rows, clip)`` on every entry.

    Parameters
    ----------
    released : dict[str, np.ndarray]
        ``(rows, C)`` matrices by record key, released together (one accounted release).
    clip, noise : float
        Row bound and noise multiplier.
    key : tuple[int, ...]
        Seeds the noise: ``(world seed, round, client)``.
    """
    std = noise * sensitivity(sum(len(v) for v in released.values()), clip)
    rng = np.random.default_rng((*key, _NOISE_STREAM))
    return {
        name: (clip_rows(released[name], clip) + rng.normal(0.0, std, np.shape(released[name]))).astype(np.float32)
        for name in sorted(released)
    }


def vote_sensitivity(rows: int) -> float:
    """L2 sensitivity of ``rows`` one-hot votes: each may move to another class, ``√2`` a row."""
    return math.sqrt(2.0 * rows)


def privatize_votes(released: dict[str, np.ndarray], noise: float, key: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The Gaussian mechanism on a vote release, ``privatize``'s twin: each row of every matrix becomes
    the one-hot of its top class, then every entry gets noise of std ``noise · vote_sensitivity(all
    rows)`` (Scalable PATE's GNMax, with the histogram summed by the receiver). The matrices are one
    accounted release; ``key`` seeds the noise, as ``privatize``'s."""
    std = noise * vote_sensitivity(sum(len(v) for v in released.values()))
    rng = np.random.default_rng((*key, _NOISE_STREAM))
    out = {}
    for name in sorted(released):
        logits = np.asarray(released[name])
        votes = np.eye(logits.shape[1])[logits.argmax(axis=1)]
        out[name] = (votes + rng.normal(0.0, std, votes.shape)).astype(np.float32)
    return out


def vote_targets(histogram: np.ndarray, temperature: float) -> np.ndarray:
    """Target logits from noisy vote counts: ``VOTE_CONFIDENCE`` on each row's noisy argmax (PATE's
    label), the rest spread evenly, as logits whose softmax at ``temperature`` is that distribution.

    ``vote_targets([[0.2, 1.4, -0.3]], 1.0)`` is ``log([0.05, 0.9, 0.05])``."""
    h = np.asarray(histogram, dtype=np.float64)
    c = h.shape[1]
    q = np.full(h.shape, (1.0 - VOTE_CONFIDENCE) / max(c - 1, 1))
    q[np.arange(len(h)), h.argmax(axis=1)] = VOTE_CONFIDENCE
    return (temperature * np.log(q)).astype(np.float32)


def privacy_setup(privacy: PrivacySpec, rounds: int, rule: Any, senders: int = 2) -> dict[str, Any]:
    """The run's noise multiplier for ``privacy`` over one release per round (run metrics), and under
    distributed noise each of ``senders`` clients' share; ConfigError for a budget no noise meets,
    a rule whose clients send what noise cannot cover, or distributed noise on a rule that reads
    releases one by one."""
    if not privacy.enabled:
        return {}
    if not getattr(rule, "dp_supported", False):
        raise ConfigError(
            "privacy.epsilon", f"rule {rule.name!r} sends more than outputs on shared inputs", "null for this rule"
        )
    if privacy.release == "votes" and not getattr(rule, "reads_votes", False):
        raise ConfigError(
            "privacy.release", f"rule {rule.name!r} reads logits, not votes", "logits, or strategy=peer|peer_sum"
        )
    if privacy.noise == "distributed" and not getattr(rule, "sums_releases", False):
        raise ConfigError(
            "privacy.noise",
            f"distributed noise protects only a sum of releases, and rule {rule.name!r} reads each client's",
            "client, or strategy=peer_sum",
        )
    noise = noise_multiplier(privacy.epsilon, privacy.delta, rounds)
    out = {"dp_noise": noise, "dp_epsilon": privacy.epsilon, "dp_delta": privacy.delta, "dp_clip": privacy.clip}
    if privacy.noise == "distributed":
        out["dp_noise_share"] = noise * share_of_noise(senders)
    return out


def releases(messages: list) -> int:
    """1 if a round's messages ask clients for outputs (a private release each), else 0."""
    asks = (P.CFG_REPLY_LOGITS, P.CFG_REPLY_PROBE)
    configs = [m.content[P.KEY_CONFIG] for m in messages if P.KEY_CONFIG in m.content]
    return int(any(bool(c.get(k, False)) for c in configs for k in asks))


class PrivacyHook(RoundHook):
    """Client-level DP: the noise multiplier set up for the budget, sent with every message;
    each round's release counted; the epsilon spent in the summary.

    With distributed noise, ``senders`` (the clients a round asks) share the noise, each round's
    multiplier as the summed releases protect a client is kept (``summed_noise``), and the summary
    adds ``dp_epsilon_spent_clear``: ε if the server read each release alone."""

    reads_messages = True  # counts the releases in the Messages sent and received

    def __init__(self, privacy: PrivacySpec, rounds: int, senders: int = 2):
        self.privacy, self.rounds, self.senders = privacy, rounds, senders
        self.releases, self.noises, self.noise = 0, [], 0.0

    def setup(self, rule: Any, fresh: bool) -> dict[str, Any]:
        metrics = privacy_setup(self.privacy, self.rounds, rule, self.senders)
        self.noise = metrics["dp_noise"]
        if fresh:
            log.info(
                "[%s] privacy: noise multiplier %.3f for (%g, %g) over %d rounds%s",
                rule.name, metrics["dp_noise"], self.privacy.epsilon, self.privacy.delta, self.rounds,
                f", {metrics['dp_noise_share']:.3f} from each of {self.senders} clients" if "dp_noise_share" in metrics
                else "",
            )  # fmt: skip
        return metrics

    def message_config(self, run_metrics: dict[str, Any]) -> dict[str, Any]:
        noise = run_metrics.get("dp_noise_share", run_metrics.get("dp_noise", 0.0))
        if noise <= 0:
            return {}
        votes = {P.CFG_DP_RELEASE: self.privacy.release} if self.privacy.release != "logits" else {}
        return {P.CFG_DP_CLIP: self.privacy.clip, P.CFG_DP_NOISE: noise, **votes}

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        n = releases(result.messages)
        self.releases += n
        if n and self.privacy.noise == "distributed" and result.replies:
            self.noises.append(summed_noise(self.noise, self.senders, len(result.replies)))
        return {"releases": n}

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        noise, delta = record.run_metrics["dp_noise"], self.privacy.delta
        if self.privacy.noise != "distributed":
            return {"dp_epsilon_spent": epsilon_spent(noise, self.releases, delta), "dp_releases": self.releases}
        return {
            "dp_epsilon_spent": epsilon_of_events(self.noises, delta),  # the sum under secure aggregation
            "dp_epsilon_spent_clear": epsilon_spent(record.run_metrics["dp_noise_share"], self.releases, delta),
            "dp_releases": self.releases,
        }

    def state(self) -> dict[str, Any]:
        return {"releases": self.releases, "noises": list(self.noises)}

    def restore(self, state: dict[str, Any]) -> None:
        self.releases = int(state.get("releases", 0))
        self.noises = [float(z) for z in state.get("noises", [])]
