"""Injected faults and attackers, the same on every engine: a ``Grid`` wrapper.

Both engines serve the round loop a flwr ``Grid``; ``FaultyGrid`` (installed by ``FaultsHook``) sits
between the round loop and that grid and decides every event from ``(seed, round, client)``
alone, so a fault schedule is the same for every rule and engine of a seed:

- **crash** (``faults.crash_prob``, per client per round): the message is not delivered and
  its reply is an error reply, as Flower's is for a ClientApp that raised; the client does not
  train that round (a crashed ClientApp's context is not saved).
- **stragglers** (``faults.straggler_prob`` per client per round, delay drawn from
  ``faults.delay`` with mean ``faults.delay_mean`` s): the client trains and replies, its reply
  arrives late. ``faults.delays=real`` holds the reply back for the delay in wall-clock time, so
  the server's own ``round_timeout`` decides (the default on the flower engine, whose clients
  run concurrently anyway); ``simulated`` (the default on the batched engine, which answers
  synchronously) compares the delay with ``round_timeout`` instead of sleeping: a reply later
  than the timeout is discarded, as the server would discard it, and the run stays deterministic.
- **permanent dropout** (``faults.dropout_prob``, per client per round): from its first
  dropout draw on, a client's messages get the error reply of an unavailable node, for good.
- **late joiners** (``faults.late_fraction`` of the clients, a seeded choice): each joins at a
  seeded round in ``2..faults.late_round``; before it, its messages get that error reply too.
- **attackers** (``attack.fraction`` of the clients, a seeded choice): what an attacker sends
  (its logits, probabilities or per-class means) is replaced by ``attack.kind``'s forgery
  (``attack_array``) after it trained honestly.

To learn which node holds which client before sending (Flower's simulation numbers nodes at
random), the wrapper sends one ``evaluate`` message to every node it does not know yet, the
first time it needs to (crashes, dropouts and late joiners; attacks and delays read the
client from the reply).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from peerkd.errors import ConfigError, check_choice, check_range
from peerkd.hooks.forgery import FORGERIES, forge, inside
from peerkd.round.hook import RoundHook, RoundResult, RunRecord
from peerkd.round.results import accuracy_stats
from peerkd.wire import protocol as P
from peerkd.wire.codec import Codec, CodecError, array_record, decode_logits, encode_arrays
from peerkd.wire.grid_io import evaluate_messages, send_and_receive

log = logging.getLogger("peerkd")

DELAYS = ("exponential", "uniform", "constant")
DELAY_MODES = ("auto", "real", "simulated")
ATTACKS = ("wrong", "sign_flip", "random", "huge", "colluding", *FORGERIES, "inside", "silent")
WRONG_MARGIN = 10.0  # wrong / colluding: logit added to the pushed class (the "+10 on a wrong class")
HUGE_SCALE = 1e6  # huge: what an attacker multiplies its outputs by
# Independent random streams of one seed (numpy SeedSequence entropy: [seed, stream, ...]).
_CRASH, _STRAGGLE, _DELAY, _DROPOUT, _LATE, _ATTACKERS, _FORGERY = range(1, 8)


@dataclass(frozen=True)
class FaultSpec:
    """Injected faults (``faults.*`` in the run config; all off by default)."""

    crash_prob: float = 0.0  # per client per round: the client crashes (its reply is an error reply)
    straggler_prob: float = 0.0  # per client per round: its reply is late by a delay drawn from `delay`
    delay: str = "exponential"  # exponential | uniform (0..2*mean) | constant
    delay_mean: float = 0.0  # seconds
    delays: str = "auto"  # real (sleep) | simulated (against round_timeout) | auto (simulated on batched)
    dropout_prob: float = 0.0  # per client per round: it leaves the federation for good
    late_fraction: float = 0.0  # share of clients that join late
    late_round: int = 2  # a late joiner joins at a seeded round in 2..late_round

    def __post_init__(self) -> None:
        for name in ("crash_prob", "straggler_prob", "dropout_prob", "late_fraction"):
            check_range(f"faults.{name}", getattr(self, name), 0.0, 1.0)
        check_choice("faults.delay", self.delay, DELAYS)
        check_choice("faults.delays", self.delays, DELAY_MODES)
        check_range("faults.delay_mean", self.delay_mean, 0.0)
        check_range("faults.late_round", self.late_round, 2)

    @property
    def needs_roster(self) -> bool:
        """True if some fault is decided before a message is sent (so each node's client must be known)."""
        return self.crash_prob > 0 or self.dropout_prob > 0 or self.late_fraction > 0

    @property
    def active(self) -> bool:
        return self.needs_roster or (self.straggler_prob > 0 and self.delay_mean > 0)


@dataclass(frozen=True)
class AttackSpec:
    """Attacking clients (``attack.*`` in the run config; none by default)."""

    fraction: float = 0.0  # share of clients that attack (a seeded choice, rounded to whole clients)
    kind: str = "wrong"  # wrong | sign_flip | random | huge | colluding | lma | cpa | rank_shift | inside | silent

    def __post_init__(self) -> None:
        # Below 1: accuracy is measured over honest clients, and a fleet of attackers has none.
        check_range("attack.fraction", self.fraction, 0.0, 1.0, high_open=True)
        check_choice("attack.kind", self.kind, ATTACKS)

    def check_fleet(self, num_clients: int) -> None:
        """ConfigError unless ``fraction`` of ``num_clients``, rounded, leaves an honest client."""
        if self.fraction > 0 and round(self.fraction * num_clients) >= num_clients:
            raise ConfigError(
                "attack.fraction",
                f"{self.fraction:g} of {num_clients} clients rounds to {num_clients} attackers and no honest client",
                f"at most {(num_clients - 1) / num_clients:g}",
            )


def _uniform(seed: int, stream: int, *keys: int) -> float:
    return float(np.random.default_rng([seed, stream, *keys]).random())


def _chosen(seed: int, stream: int, num_clients: int, fraction: float) -> list[int]:
    """A seeded choice of ``round(fraction * num_clients)`` clients, sorted."""
    k = round(fraction * num_clients)
    return sorted(np.random.default_rng([seed, stream]).choice(num_clients, size=k, replace=False).tolist())


@dataclass(frozen=True)
class FaultPlan:
    """Every injected event as a pure function of ``(seed, round, client)``."""

    faults: FaultSpec
    attack: AttackSpec
    seed: int
    num_clients: int
    num_classes: int = 0  # columns of what clients send (0: read from an unpacked array's shape)

    def crashed(self, rnd: int, client: int) -> bool:
        """True if ``client`` crashes in round ``rnd``."""
        return _uniform(self.seed, _CRASH, rnd, client) < self.faults.crash_prob

    def delay(self, rnd: int, client: int) -> float:
        """Seconds ``client``'s reply of round ``rnd`` is late (0: on time)."""
        f = self.faults
        if f.delay_mean <= 0 or _uniform(self.seed, _STRAGGLE, rnd, client) >= f.straggler_prob:
            return 0.0
        rng = np.random.default_rng([self.seed, _DELAY, rnd, client])
        if f.delay == "exponential":
            return float(rng.exponential(f.delay_mean))
        return float(rng.uniform(0, 2 * f.delay_mean)) if f.delay == "uniform" else f.delay_mean

    def left_in(self, rnd: int, client: int) -> int | None:
        """The round ``client`` left the federation in, if it had by round ``rnd``."""
        p = self.faults.dropout_prob
        return next((r for r in range(1, rnd + 1) if p and _uniform(self.seed, _DROPOUT, r, client) < p), None)

    def join_rounds(self) -> dict[int, int]:
        """The late joiners and the round each joins in."""
        late = _chosen(self.seed, _LATE, self.num_clients, self.faults.late_fraction)
        rng = np.random.default_rng([self.seed, _LATE, 1])
        return {c: int(rng.integers(2, self.faults.late_round + 1)) for c in late}

    def attackers(self) -> list[int]:
        """The attacking clients."""
        return _chosen(self.seed, _ATTACKERS, self.num_clients, self.attack.fraction)

    def forgery_rng(self, rnd: int, client: int) -> np.random.Generator:
        """The random source of ``client``'s forgery in round ``rnd``."""
        return np.random.default_rng([self.seed, _FORGERY, rnd, client])

    def colluding_class(self, num_classes: int) -> int:
        """The wrong class all colluding attackers push."""
        return int(np.random.default_rng([self.seed, _FORGERY]).integers(num_classes))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attack_array(
    values: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    push_class: int = 0,
    probabilities: bool = False,
    center: np.ndarray | None = None,
) -> np.ndarray:
    """An attacker's forgery of ``(rows, C)`` outputs it would honestly send.

    - ``wrong``: +``WRONG_MARGIN`` on a random class other than each row's top class;
    - ``colluding``: +``WRONG_MARGIN`` on ``push_class`` in every row (all attackers agree on it);
    - ``sign_flip``: the logits negated; ``random``: Gaussian logits of the same spread;
    - ``huge``: everything times ``HUGE_SCALE``;
    - ``lma``, ``cpa``, ``rank_shift``: built from the row's own values (``peerkd.hooks.forgery``);
    - ``inside``: ``center`` (the target the attacker was sent, same shape; None: none yet) moved
      toward its LMA forgery by most of the attacker's own distance from it (``forgery.inside``).

    ``probabilities``: ``values`` are softmax outputs (DS-FL); the forgery is made on their logs
    and sent as probabilities again (``huge`` scales the probabilities themselves).
    """
    values = np.asarray(values, dtype=np.float64)
    if kind == "huge":
        return (values * HUGE_SCALE).astype(np.float32)
    z = np.log(np.clip(values, 1e-12, None)) if probabilities else values
    rows, classes = z.shape
    if kind == "sign_flip":
        z = -z
    elif kind == "random":
        z = rng.normal(0.0, float(z.std()) or 1.0, z.shape)
    elif kind in FORGERIES:
        z = forge(z, kind)
    elif kind == "inside":
        c = None if center is None else np.asarray(center, dtype=np.float64)
        z = inside(z, None if c is None else np.log(np.clip(c, 1e-12, None)) if probabilities else c)
    else:
        if kind == "colluding":
            pushed = np.full(rows, push_class)
        else:  # wrong: any class but the row's top one
            pushed = (z.argmax(axis=1) + rng.integers(1, max(classes, 2), rows)) % classes
        z = z.copy()
        z[np.arange(rows), pushed] += WRONG_MARGIN
    return (_softmax(z) if probabilities else z).astype(np.float32)


def _sent_target(msg: Message, shape: tuple[int, ...], probabilities: bool) -> np.ndarray | None:
    """The target a request carried for its node, decoded to ``shape`` (None: none, a peers' sum, or not
    decodable to that shape): what an aggregator-aware attacker knows of the consensus."""
    record = msg.content.get(P.KEY_TARGETS)
    if not isinstance(record, ArrayRecord) or P.ARRAY_LOGITS not in record or P.ARRAY_PEERS in record:
        return None
    try:
        return decode_logits(record, shape, probabilities)
    except (CodecError, IndexError, ValueError):
        return None


def _round_of(msg: Message) -> int:
    config = msg.content.get(P.KEY_CONFIG)
    return int(config.get(P.CFG_ROUND, 0)) if isinstance(config, ConfigRecord) else 0


def _client_of(reply: Message) -> int | None:
    metrics = None if reply.has_error() else reply.content.get(P.KEY_METRICS)
    client = metrics.get(P.METRIC_PARTITION) if isinstance(metrics, MetricRecord) else None
    return client if isinstance(client, int) else None


@dataclass
class _Sent:
    message: Message
    round: int
    pushed_at: float
    probabilities: bool
    codec: Codec  # how the client packs what it sends: a forgery travels packed the same way


class FaultyGrid(Grid):
    """A Grid that injects ``plan``'s faults and attacks into the messages of the Grid it wraps.

    Parameters
    ----------
    grid : Grid
        The engine's grid.
    plan : FaultPlan
        What happens to whom, when.
    round_timeout : float
        The server's round timeout (simulated delays beyond it lose the reply).
    """

    def __init__(self, grid: Grid, plan: FaultPlan, round_timeout: float):
        self.inner, self.plan, self.round_timeout = grid, plan, round_timeout
        mode = plan.faults.delays
        self.real_delays = mode == "real" or (mode == "auto" and not getattr(grid, "answers_at_once", False))
        self.client: dict[int, int] = {}  # node id -> client (partition) id
        self._asked: set[int] = set()  # nodes sent a discovery message (once each: a dead node costs one wait)
        self.events: Counter = Counter()
        self.attackers = set(plan.attackers())
        self.joins = plan.join_rounds()
        self.left: dict[int, int] = {}  # client -> round it left in
        self._sent: dict[str, _Sent] = {}
        self._ready: dict[str, Message] = {}  # replies made here (errors), or due now
        self._held: dict[str, tuple[float, int, Message]] = {}  # real delays: due at, round, reply

    # The Grid interface: run information and node ids come from the wrapped grid.
    def set_run(self, run_id: int) -> None:
        self.inner.set_run(run_id)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return send_and_receive(self, list(messages), self.round_timeout if timeout is None else timeout)[0]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver the messages no injected fault stops; answer the others with error replies."""
        messages = list(messages)
        rounds = [_round_of(m) for m in messages]
        if self.plan.faults.needs_roster and max(rounds, default=0) >= 1:
            known = self.client.keys() | self._asked
            self._discover([m for m in messages if m.metadata.dst_node_id not in known])
        self._held = {k: v for k, v in self._held.items() if v[1] >= max(rounds, default=0)}  # abandoned rounds
        deliver = []
        for msg, rnd in zip(messages, rounds):
            reason = self._stopped(msg.metadata.dst_node_id, rnd)
            if reason is None:
                deliver.append(msg)
                continue
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's in-memory grid does
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION if reason.startswith("crash") else ErrorCode.NODE_UNAVAILABLE
            self._ready[msg.metadata.message_id] = Message(Error(code=code, reason=reason), reply_to=msg)
        ids = dict(zip((id(m) for m in deliver), self.inner.push_messages(deliver)))
        now = time.monotonic()
        for msg, rnd in zip(messages, rounds):
            if id(msg) in ids and ids[id(msg)]:
                config = msg.content.get(P.KEY_CONFIG)
                config = config if isinstance(config, ConfigRecord) else {}
                probs = bool(config.get(P.CFG_REPLY_PROBS, False))
                codec = Codec(str(config.get(P.CFG_CODEC, "fp32")), int(config.get(P.CFG_CODEC_K, 3)))
                self._sent[ids[id(msg)]] = _Sent(msg, rnd, now, probs, codec)
        return [ids.get(id(m), m.metadata.message_id) for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies to ``message_ids``: attackers' forged, late ones held back or discarded."""
        message_ids = list(message_ids)
        for reply in self.inner.pull_messages([i for i in message_ids if i in self._sent]):
            self._arrived(reply)
        now = time.monotonic()
        for mid, (due, _, reply) in list(self._held.items()):
            if due <= now:
                self._ready[mid] = reply
                del self._held[mid]
        return [self._ready.pop(i) for i in message_ids if i in self._ready]

    def _stopped(self, node: int, rnd: int) -> str | None:
        """Why a message of round ``rnd`` to ``node`` is not delivered (None: it is)."""
        client = self.client.get(node)
        if client is None or rnd < 1:
            return None
        if self.joins.get(client, 1) > rnd:
            self.events["not_joined"] += 1
            return f"node unavailable: client {client} joins in round {self.joins[client]} (injected late joiner)"
        if (left := self.plan.left_in(rnd, client)) is not None:
            self.left.setdefault(client, left)
            self.events["gone"] += 1
            return f"node unavailable: client {client} left in round {left} (injected dropout)"
        if self.plan.crashed(rnd, client):
            self.events["crashed"] += 1
            return f"crashed: client {client}'s ClientApp crashed in round {rnd} (injected)"
        return None

    def _arrived(self, reply: Message) -> None:
        """File a reply from the wrapped grid: forge it if an attacker sent it, delay it if late."""
        mid = reply.metadata.reply_to_message_id
        sent, client = self._sent.pop(mid), _client_of(reply)
        if client is not None:
            self.client.setdefault(reply.metadata.src_node_id, client)
        if client in self.attackers and sent.round >= 1 and self.plan.attack.kind == "silent":
            self.events["silenced"] += 1  # the reference a defence is measured against: attackers who only leave
            reason = f"attacker: client {client} sends nothing in round {sent.round} (injected silent attacker)"
            reply = Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason), reply_to=sent.message)
        elif client in self.attackers and sent.round >= 1:
            self._forge(reply, sent, client)
        delay = 0.0 if client is None else self.plan.delay(sent.round, client)
        if delay and self.real_delays:
            self.events["delayed"] += 1
            self._held[mid] = (sent.pushed_at + delay, sent.round, reply)
        elif delay > self.round_timeout:  # what the server would see after waiting round_timeout, without the wait
            self.events["timed_out"] += 1
            reason = f"timed out: no reply within round_timeout {self.round_timeout:g} s (injected delay {delay:.1f} s)"
            self._ready[mid] = Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason), reply_to=sent.message)
        else:
            self.events["delayed"] += bool(delay)
            self._ready[mid] = reply

    def _forge(self, reply: Message, sent: _Sent, client: int) -> None:
        """Replace the outputs an attacker sends (logits, probabilities, class means) by its forgery."""
        rng = self.plan.forgery_rng(sent.round, client)
        for key in (P.KEY_LOGITS, P.KEY_PROBE):
            record = reply.content.get(key)
            if not isinstance(record, ArrayRecord) or P.ARRAY_LOGITS not in record:
                continue
            probs = sent.probabilities and key == P.KEY_LOGITS
            try:  # the honest outputs, in whatever codec they travel (a reply that does not decode is left as is)
                shape = record[P.ARRAY_LOGITS].shape
                honest = decode_logits(record, (shape[0], self.plan.num_classes or shape[-1]), probs)
            except (CodecError, IndexError):
                continue
            push = self.plan.colluding_class(honest.shape[1])
            center = _sent_target(sent.message, honest.shape, probs) if key == P.KEY_LOGITS else None
            forged = attack_array(honest, self.plan.attack.kind, rng, push, probs, center)
            rest = {k: v for k, v in record.items() if k != P.ARRAY_LOGITS and not k.startswith(f"{P.ARRAY_LOGITS}.")}
            reply.content[key] = array_record({**rest, **encode_arrays(P.ARRAY_LOGITS, forged, sent.codec, probs)})
        self.events["forged"] += 1

    def _discover(self, messages: list[Message]) -> None:
        """Learn the client of each node these messages go to (one ``evaluate`` round trip)."""
        nodes = sorted({m.metadata.dst_node_id for m in messages})
        if not nodes:
            return
        self._asked.update(nodes)
        config = ConfigRecord({**messages[0].content[P.KEY_CONFIG], P.CFG_ROUND: 0})
        replies, sent = send_and_receive(self.inner, evaluate_messages(nodes, config), self.round_timeout)
        for reply in replies:
            if (client := _client_of(reply)) is not None:
                self.client[sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)] = client
        log.info("fault injection: %d of %d nodes told their client id", len(replies), len(nodes))

    def round_fields(self, client_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """A round row's accuracy over honest clients (with attackers: everyone's mean apart)."""
        if not self.attackers:
            return {}
        honest = [r["acc"] for r in client_rows if r["client"] not in self.attackers]
        return {**accuracy_stats(honest), "acc_mean_all": accuracy_stats([r["acc"] for r in client_rows])["acc_mean"]}

    def summary_fields(self, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        """What the summary adds: the injected faults, the attackers, accuracy over honest clients."""
        out: dict[str, Any] = {
            "faults": {
                **{k: int(v) for k, v in sorted(self.events.items())},
                "late_joiners": {str(c): r for c, r in sorted(self.joins.items())},
                "left": {str(c): r for c, r in sorted(self.left.items())},
                "delays": "real" if self.real_delays else "simulated",
            }
        }
        if self.attackers or self.plan.attack.fraction > 0:
            for row in per_client:
                row["attacker"] = row["client"] in self.attackers
            honest = [r["acc"] for r in per_client if not r["attacker"]]
            out.update(
                attackers=sorted(self.attackers),
                attack_kind=self.plan.attack.kind,
                acc_mean_all=accuracy_stats([r["acc"] for r in per_client])["acc_mean"],
                **accuracy_stats(honest),
            )
        return out


def inject(
    grid: Grid,
    faults: FaultSpec,
    attack: AttackSpec,
    seed: int,
    num_clients: int,
    round_timeout: float,
    num_classes: int = 0,
):
    """``grid`` wrapped in a ``FaultyGrid`` if any fault or attack is asked for, else None."""
    if not faults.active and attack.fraction == 0:
        return None
    return FaultyGrid(grid, FaultPlan(faults, attack, seed, num_clients, num_classes), round_timeout)


class FaultsHook(RoundHook):
    """Injected faults and attackers: the grid wrapped after the warm-up (``inject``), each
    round's accuracy over honest clients, the faults and attackers in the summary."""

    def __init__(self, faults: FaultSpec, attack: AttackSpec, seed: int, num_clients: int, round_timeout: float,
                 num_classes: int = 0):  # fmt: skip
        self.args = (faults, attack, seed, num_clients, round_timeout, num_classes)
        self.faulty: FaultyGrid | None = None

    def wrap_grid(self, grid: Grid) -> Grid:
        self.faulty = inject(grid, *self.args)
        return self.faulty or grid

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        return self.faulty.round_fields(result.client_rows) if self.faulty else {}

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        return self.faulty.summary_fields(per_client) if self.faulty else {}
