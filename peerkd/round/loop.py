"""peerkd's Flower ServerApp: drives rounds through the Grid, validates replies, measures.

Per round: the rule builds one Message per node; replies are screened (client errors,
malformed metrics, wrong-shaped or non-finite logits or weights are rejected and logged,
the round goes on with the rest); the rule aggregates; every client's accuracy, the bytes
of every serialised array sent and received, and the clock go to ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

import peerkd  # noqa: F401  (sets the no-telemetry environment)
from peerkd.errors import ConfigError
from peerkd.hooks.faults import AttackSpec, FaultSpec, inject
from peerkd.hooks.participation import Roster, participation
from peerkd.hooks.privacy import PrivacySpec, epsilon_spent, noise_multiplier
from peerkd.round.checkpoint import Checkpoint, RunInterrupted, RunState, rekey_nodes, rng_state
from peerkd.round.results import RunWriter, accuracy_stats
from peerkd.round.screening import screen_reply
from peerkd.student.placement import KEY_HOST, KEY_IP, KEY_NODE
from peerkd.student.training import pick_device
from peerkd.wire import protocol as P
from peerkd.wire.codec import FP32, Codec, array_bytes
from peerkd.world.build import World, WorldSpec, build_world
from peerkd.world.text import text_summary

log = logging.getLogger("peerkd")
PLACEMENT_KEYS = (KEY_NODE, KEY_HOST, KEY_IP)  # a client row's Ray placement (absent outside Ray)


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


@dataclass(frozen=True)
class ServerContext:
    """What the server knows when a rule is set up."""

    world: World
    students: tuple[str, ...]
    seed: int
    device: torch.device
    epochs: int
    lr: float
    batch_size: int
    measure_agreement: bool = True  # ask clients for transfer-set logits even if the rule needs none
    codec: Codec = FP32  # how the rule packs the targets it sends


class ExchangeRule(Protocol):
    """What the round loop needs of a rule (``strategies.base.DistillationStrategy`` provides it)."""

    name: str
    private: bool

    def setup(self, ctx: ServerContext) -> dict[str, Any]: ...
    def configure_round(
        self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def check_reply(self, content: RecordDict) -> None: ...
    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]: ...
    def client_accuracy(self, metrics: dict[str, Any]) -> tuple[float, float] | None: ...
    def measurement_keys(self) -> set[str]: ...
    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None: ...


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Node ids once ``expected`` have connected; after ``timeout`` go on with those present."""
    deadline = time.monotonic() + timeout
    while len(ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            if not ids:
                raise RuntimeError(f"no node connected within {timeout:g} s (expected {expected})")
            log.warning(
                "only %d of %d nodes connected after %g s; going on with them (with `flwr run`, "
                "pass --federation-config num-supernodes=%d)",
                len(ids),
                expected,
                timeout,
                expected,
            )
            break
        time.sleep(0.1)
    return ids


# Seconds between reply pulls (Flower's Grid.send_and_receive sleeps 3 s between pulls).
POLL_S = float(os.environ.get("PEERKD_GRID_POLL_S", "0.2"))
TTL_MARGIN_S = 2.0  # a message lives this much longer than the wait for its reply


def send_and_receive(
    grid: Grid, messages: list[Message], timeout: float, poll: float = POLL_S, stop: threading.Event | None = None
) -> tuple[list[Message], dict[str, int]]:
    """Push ``messages``, pull replies every ``poll`` s until all came or ``timeout`` s passed.

    Returns the replies and the destination node of each pushed message id (an error reply
    the SuperLink writes for an unavailable node names the SuperLink as its source). Same
    contract as ``Grid.send_and_receive``, whose fixed 3 s pull interval dominated a
    deployed round on loopback. Each message's TTL ends with the wait (plus ``TTL_MARGIN_S``), so one still queued
    when the round is abandoned is dropped (by the SuperLink, or by the ClientApp's
    ``drop_expired``) instead of training for a round nobody reads; late replies are
    never pulled. Raises ``RunInterrupted`` once ``stop`` is set.
    """
    for m in messages:  # + TTL_MARGIN_S: a reply pulled at the deadline is not yet "expired" (it is missing)
        m.metadata.ttl = timeout + TTL_MARGIN_S + max(0.0, time.time() - m.metadata.created_at)
    pending = {mid for mid in grid.push_messages(messages) if mid}  # None: a message the SuperLink refused
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # push sets the ids
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() >= deadline:
            break
        _pause(poll, stop)
    return replies, sent


def _pause(seconds: float, stop: threading.Event | None) -> None:
    """Sleep ``seconds``; raise ``RunInterrupted`` as soon as ``stop`` is set."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise RunInterrupted("stopped while waiting for replies")


def run_federation(
    grid: Grid,
    spec: RunSpec,
    strategy: ExchangeRule,
    writer: RunWriter,
    on_round: Callable[[dict], None] | None = None,
    summary_extra: Callable[[], dict[str, Any]] | None = None,
    checkpoint: Checkpoint | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run all rounds of ``strategy`` on the nodes of ``grid``; write and return the summary.

    ``summary_extra()`` is called after the last round; its entries (e.g. the engine's
    name, device and peak memory) are added to the summary. With ``checkpoint``, the
    state after each round is saved there, and a run whose checkpoint exists resumes
    after its last saved round. Once ``stop`` is set the run raises ``RunInterrupted``
    (within a reply poll) and writes no summary.
    """
    t_start = time.perf_counter()
    state = _start(spec, strategy, writer, checkpoint)
    strategy = state.strategy
    node_ids = wait_for_nodes(grid, spec.world.num_clients, spec.wait_timeout)
    base_config = {
        **spec.world.to_config(),
        P.CFG_STUDENTS: ",".join(spec.students),
        P.CFG_EPOCHS: spec.epochs,
        P.CFG_LR: spec.lr,
        P.CFG_BATCH_SIZE: spec.batch_size,
        **wire_settings(spec, state.run_metrics.get("dp_noise", 0.0)),
        **_checkpoint_config(checkpoint, state.round),
    }
    roster = Roster(spec.world.num_clients, spec.clients_per_round, spec.world.seed)
    _warm_up(grid, spec, roster, node_ids, {**base_config, P.CFG_ROUND: state.round}, stop)
    if state.round:  # a resumed simulation has new node ids: the rule's per-node state follows its clients
        node_now = {c: n for n, c in roster.client_of.items()}
        rekey_nodes(strategy, {n: node_now.get(c) for n, c in state.nodes.items()})
    faulty = inject(
        grid,
        spec.faults,
        spec.attack,
        spec.world.seed,
        spec.world.num_clients,
        spec.round_timeout,
        world_of(spec).num_classes,
    )
    grid = faulty or grid  # after the warm-up: injected faults start with round 1
    for rnd in range(state.round + 1, spec.rounds + 1):
        config = ConfigRecord({**base_config, P.CFG_ROUND: rnd})
        nodes = roster.select(rnd, grid.get_node_ids())
        row, client_rows = _run_round(grid, spec, strategy, rnd, config, nodes, stop)
        writer.log(*client_rows)
        for client_row in client_rows:
            state.latest[client_row["client"]] = client_row
            state.replies[client_row["client"]] += 1
            roster.learn(client_row["node_id"], client_row["client"])
        state.totals.update(
            {k: row[k] for k in ("bytes_up", "bytes_down", "bytes_measure", "rejected", "replies", "releases")}
        )
        row.update(faulty.round_fields(client_rows) if faulty else {})
        row["wall_s"] = state.wall_s + time.perf_counter() - t_start
        writer.log(row)
        log.info("[%s] round %d/%d  %s", strategy.name, rnd, spec.rounds, _round_line(row))
        if checkpoint:
            state.round, state.nodes = rnd, dict(roster.client_of)
            checkpoint.save(_stamped(state, row["wall_s"]))
        if on_round:
            on_round(row)
    if roster.partial:
        final = _final_rows(grid, spec, strategy, {**base_config, P.CFG_ROUND: spec.rounds}, stop)
        writer.log(*final)
        state.latest.update({r["client"]: r for r in final})
    run_metrics = {**state.run_metrics, **_privacy_spent(spec, state.run_metrics, state.totals["releases"])}
    summary = {
        **(summary := _summary(spec, strategy, world_of(spec), state.latest, state.totals, run_metrics)),
        **participation(spec.world.num_clients, spec.rounds, state.latest, state.replies),
        **(faulty.summary_fields(summary["per_client"]) if faulty else {}),
        "wall_s": state.wall_s + time.perf_counter() - t_start,
        **(summary_extra() if summary_extra else {}),
    }
    writer.finish(summary)
    if checkpoint:
        checkpoint.clear()  # finished: summary.json says so, the checkpoint is no longer needed
    return summary


def privacy_setup(spec: RunSpec, strategy: ExchangeRule) -> dict[str, Any]:
    """The run's noise multiplier for its privacy target over one release per round (run metrics);
    ConfigError for a budget no noise meets, or a rule whose clients send what noise cannot cover."""
    p = spec.privacy
    if not p.enabled:
        return {}
    if not getattr(strategy, "dp_supported", False):
        raise ConfigError(
            "privacy.epsilon", f"rule {strategy.name!r} sends more than outputs on shared inputs", "null for this rule"
        )
    noise = noise_multiplier(p.epsilon, p.delta, spec.rounds)
    log.info(
        "[%s] privacy: noise multiplier %.3f for (%g, %g) over %d rounds",
        strategy.name,
        noise,
        p.epsilon,
        p.delta,
        spec.rounds,
    )
    return {"dp_noise": noise, "dp_epsilon": p.epsilon, "dp_delta": p.delta, "dp_clip": p.clip}


def _privacy_spent(spec: RunSpec, run_metrics: dict[str, Any], releases: int) -> dict[str, Any]:
    """The epsilon the run's releases spent, from the accountant (nothing without privacy)."""
    if not spec.privacy.enabled:
        return {}
    return {
        "dp_epsilon_spent": epsilon_spent(run_metrics["dp_noise"], releases, spec.privacy.delta),
        "dp_releases": releases,
    }


def wire_settings(spec: RunSpec, noise: float) -> dict[str, Any]:
    """The codec and privacy settings every message carries."""
    out = {P.CFG_CODEC: spec.codec.name, P.CFG_CODEC_K: spec.codec.k}
    if noise > 0:
        out.update({P.CFG_DP_CLIP: spec.privacy.clip, P.CFG_DP_NOISE: noise})
    return out


def _releases(messages: list[Message]) -> int:
    """1 if this round asks clients for outputs (a private release each), else 0."""
    asks = (P.CFG_REPLY_LOGITS, P.CFG_REPLY_PROBE)
    configs = [m.content[P.KEY_CONFIG] for m in messages if P.KEY_CONFIG in m.content]
    return int(any(bool(c.get(k, False)) for c in configs for k in asks))


def world_of(spec: RunSpec) -> World:
    """The run's world (cached per spec by ``build_world``)."""
    return build_world(spec.world)


def _start(spec: RunSpec, strategy: ExchangeRule, writer: RunWriter, checkpoint: Checkpoint | None) -> RunState:
    """The state to start from: the checkpoint's (metrics past it dropped), or the rule set up afresh."""
    if checkpoint is not None and checkpoint.exists():
        state = checkpoint.load()
        writer.keep_rounds(state.round)
        log.info(
            "[%s] resuming after round %d/%d from %s", state.strategy.name, state.round, spec.rounds, checkpoint.dir
        )
        return state
    t0 = time.perf_counter()
    ctx = ServerContext(
        world_of(spec),
        spec.students,
        spec.world.seed,
        pick_device(),
        spec.epochs,
        spec.lr,
        spec.batch_size,
        spec.measure_agreement,
        spec.codec,
    )
    run_metrics = {**strategy.setup(ctx), **privacy_setup(spec, strategy)}
    writer.log({"type": "setup", **run_metrics, "setup_s": time.perf_counter() - t0})
    engine = checkpoint.engine if checkpoint else ""
    return RunState(0, strategy, run_metrics, {}, Counter(), Counter(), {}, 0.0, engine)


def _stamped(state: RunState, wall_s: float) -> RunState:
    """``state`` as saved: with the run's seconds so far and the RNG states now."""
    return dataclasses.replace(state, wall_s=wall_s, rng=rng_state())


def _checkpoint_config(checkpoint: Checkpoint | None, resumed_after: int) -> dict[str, Any]:
    """Config entries telling clients where to keep their students (and, resuming, which to load)."""
    if checkpoint is None or checkpoint.client_dir is None:
        return {}
    return {P.CFG_CHECKPOINT_DIR: checkpoint.client_dir, P.CFG_RESUME_ROUND: resumed_after}


def _warm_up(
    grid: Grid, spec: RunSpec, roster: Roster, node_ids: list[int], config: dict, stop: threading.Event | None
) -> None:
    """One ``evaluate`` round trip before the first round, timed by ``wait_timeout``: the first
    round's clock starts once the nodes answer (a simulation's Ray start-up is no round's time),
    and each node's client becomes known."""
    evaluated = _evaluate_nodes(grid, node_ids, {**config, P.CFG_WARM_UP: True}, spec.wait_timeout, stop)
    for node, values in evaluated.items():
        roster.learn(node, values[P.METRIC_PARTITION])
    if missing := len(node_ids) - len(evaluated):
        log.warning("%d of %d nodes did not answer before the first round", missing, len(node_ids))


def _round_line(row: dict[str, Any]) -> str:
    """``acc mean 0.862 worst 0.848  10 replies  0.4 s`` for a round's log line."""
    if not row["replies"]:  # a round with no accepted reply has no accuracy to show
        return f"no reply accepted ({row['rejected']} rejected, {len(row['missing'])} missing)  {row['round_s']:.1f} s"
    acc, worst = row["acc_mean"], row["acc_worst"]
    return f"acc mean {acc:.3f} worst {worst:.3f}  {row['replies']} replies  {row['round_s']:.1f} s"


def _summary(
    spec: RunSpec,
    strategy: ExchangeRule,
    world: World,
    latest: dict[int, dict[str, Any]],
    totals: Counter,
    run_metrics: dict[str, Any],
) -> dict[str, Any]:
    """The summary's fields from each client's last accepted row and the run's totals."""
    per_client = [
        {"client": c, "arch": r["arch"], "acc": r["acc"], "loss": r["loss"], "round": r["round"]}
        for c, r in sorted(latest.items())
    ]
    return {
        "strategy": strategy.name,
        "dataset": world.data.name,
        "num_clients": spec.world.num_clients,
        "rounds": spec.rounds,
        "seed": spec.world.seed,
        **accuracy_stats([r["acc"] for r in per_client]),
        "teacher_acc": run_metrics.get("teacher_acc"),
        "bytes_up": totals["bytes_up"],
        "bytes_down": totals["bytes_down"],
        "per_client": per_client,
        "acc_by_arch": _by_arch(per_client),
        "rejected_replies": totals["rejected"],
        "accepted_replies": totals["replies"],
        "no_reply_accepted": totals["replies"] == 0,  # then every accuracy above is null
        "bytes_measure": totals["bytes_measure"],
        "students": list(spec.students),
        "private": strategy.private,
        "clients_per_round": spec.clients_per_round or spec.world.num_clients,
        "clients_per_node": clients_per_node(latest.values()),
        **(text_summary(world.data.name, *world.split("test"), per_client) if world.data.text else {}),
        **{k: v for k, v in run_metrics.items() if k != "teacher_acc"},
    }


def _evaluate_nodes(
    grid: Grid, node_ids: list[int], config: dict[str, Any], timeout: float, stop: threading.Event | None = None
) -> dict[int, dict[str, Any]]:
    """One ``evaluate`` round trip (no arrays either way): each answering node's metrics, by node."""
    record = ConfigRecord(config)
    messages = [
        Message(RecordDict({P.KEY_CONFIG: record}), dst_node_id=n, message_type=P.MSG_EVALUATE) for n in node_ids
    ]
    replies, sent = send_and_receive(grid, messages, timeout, stop=stop)
    out = {}
    for reply in replies:
        metrics = None if reply.has_error() else reply.content.get(P.KEY_METRICS)
        values = dict(metrics) if isinstance(metrics, MetricRecord) else {}
        if isinstance(values.get(P.METRIC_PARTITION), int) and isinstance(values.get(P.METRIC_TEST_ACC), float):
            out[sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)] = {
                **values,
                "arch": _arch(reply),
                **_placement(reply),
            }
    return out


def _final_rows(
    grid: Grid, spec: RunSpec, strategy: ExchangeRule, config: dict[str, Any], stop: threading.Event | None = None
) -> list[dict[str, Any]]:
    """With partial participation, every client's accuracy after the last round (one evaluate round trip)."""
    rows = []
    for node, values in _evaluate_nodes(grid, sorted(grid.get_node_ids()), config, spec.round_timeout, stop).items():
        client = values[P.METRIC_PARTITION]
        if 0 <= client < spec.world.num_clients:
            acc, loss = strategy.client_accuracy(values) or (values[P.METRIC_TEST_ACC], values.get(P.METRIC_TEST_LOSS))
            rows.append(
                {
                    "type": "client",
                    "round": spec.rounds,
                    "client": client,
                    "node_id": node,
                    "arch": values["arch"],
                    "acc": acc,
                    "loss": loss,
                    "final_evaluation": True,
                    **{k: values[k] for k in PLACEMENT_KEYS if k in values},
                }
            )
    return rows


def _run_round(
    grid: Grid,
    spec: RunSpec,
    strategy: ExchangeRule,
    rnd: int,
    config: ConfigRecord,
    node_ids: list[int],
    stop: threading.Event | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One round on ``node_ids``: messages out, replies screened and aggregated.

    Returns the round's row (accuracy stats, replies, rejections, bytes, rule metrics) and
    one row per accepted client; the caller writes them.
    """
    t0 = time.perf_counter()
    messages = list(strategy.configure_round(rnd, node_ids, config, grid))
    down = {m.metadata.dst_node_id: array_bytes(m.content) for m in messages}
    if stop is not None and stop.is_set():
        raise RunInterrupted(f"stopped before round {rnd}")
    replies, sent = send_and_receive(grid, messages, spec.round_timeout, stop=stop)
    accepted, rejected, seen = [], [], set()
    measure_keys = strategy.measurement_keys()
    for reply in replies:
        node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        up, measure = _reply_bytes(reply, measure_keys)
        values, reason = screen_reply(reply, strategy, spec.world.num_clients)
        if values is not None and values[P.METRIC_PARTITION] in seen:
            values, reason = None, f"duplicate {P.METRIC_PARTITION} {values[P.METRIC_PARTITION]}"
        if values is None:
            log.warning("[%s] round %d: rejected reply from node %d: %s", strategy.name, rnd, node, reason)
            rejected.append({"node_id": node, "reason": reason, "bytes_up": up})
            continue
        seen.add(values[P.METRIC_PARTITION])
        accepted.append((reply, values, up, measure))
    accepted_msgs = [r for r, _, _, _ in accepted]
    round_metrics = strategy.aggregate_round(rnd, accepted_msgs)
    if spec.measure_agreement:
        round_metrics.update(_agreement(strategy.agreement_logits(accepted_msgs)))
    rows = []
    for reply, values, up, measure in accepted:
        node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        acc, loss = strategy.client_accuracy(values) or (values[P.METRIC_TEST_ACC], values[P.METRIC_TEST_LOSS])
        row = {
            "type": "client",
            "round": rnd,
            "client": values[P.METRIC_PARTITION],
            "node_id": node,
            "arch": _arch(reply),
            "acc": acc,
            "loss": loss,
            "train_loss": values.get(P.METRIC_TRAIN_LOSS),
            "train_s": values.get(P.METRIC_TRAIN_S),
            "num_examples": values.get(P.METRIC_NUM_EXAMPLES),
            "bytes_up": up,
            "bytes_down": down.get(node, 0),
            "bytes_measure": measure,
            **_placement(reply),
        }
        rows.append(row)
    answered = {sent.get(r.metadata.reply_to_message_id, r.metadata.src_node_id) for r in replies}
    round_row = {
        "type": "round",
        "round": rnd,
        **accuracy_stats([r["acc"] for r in rows]),
        "replies": len(rows),
        "no_reply_accepted": not rows,  # the rule aggregated nothing this round
        "rejected": len(rejected),
        "rejections": rejected,
        "missing": sorted(set(down) - answered),
        "bytes_up": sum(r["bytes_up"] for r in rows) + sum(r["bytes_up"] for r in rejected),
        "bytes_down": sum(down.values()),
        "bytes_measure": sum(r["bytes_measure"] for r in rows),
        "releases": _releases(messages),
        "round_s": time.perf_counter() - t0,
        **round_metrics,
    }
    return round_row, rows


def _arch(reply: Message) -> str | None:
    """The student architecture a reply names in its info record, if any."""
    info = reply.content.get(P.KEY_INFO)
    return str(info["arch"]) if isinstance(info, ConfigRecord) and "arch" in info else None


def _placement(reply: Message) -> dict[str, str]:
    """The Ray node, host and IP a reply's student ran on (empty outside Ray)."""
    info = reply.content.get(P.KEY_INFO)
    return {k: str(info[k]) for k in PLACEMENT_KEYS if k in info} if isinstance(info, ConfigRecord) else {}


def clients_per_node(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{ray node id: {host, ip, clients}}`` of client rows that name a Ray node (``{}`` outside Ray)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if KEY_NODE in r:
            entry = out.setdefault(r[KEY_NODE], {KEY_HOST: r.get(KEY_HOST), KEY_IP: r.get(KEY_IP), "clients": 0})
            entry["clients"] += 1
    return dict(sorted(out.items()))


def _reply_bytes(reply: Message, measure_keys: set[str]) -> tuple[int, int]:
    """Serialised array bytes of a reply: (the rule's traffic, measurement-only traffic)."""
    if reply.has_error():
        return 0, 0
    total = array_bytes(reply.content)
    measure = sum(
        len(a.data) for k, rec in reply.content.array_records.items() if k in measure_keys for a in rec.values()
    )
    return total - measure, measure


def _agreement(logits) -> dict[str, float]:
    """Peer-agreement metrics of the students' transfer-set logits (empty without them)."""
    if logits is None:
        return {}
    from peerkd.hooks.agreement import kl_to_consensus, pairwise_agreement

    return {"agreement": pairwise_agreement(logits), "kl_to_consensus": kl_to_consensus(logits)}


def _by_arch(per_client: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    groups: dict[str, list[float]] = {}
    for r in per_client:
        groups.setdefault(str(r["arch"]), []).append(r["acc"])
    return {arch: {**accuracy_stats(accs), "clients": len(accs)} for arch, accs in sorted(groups.items())}


def make_server_app(
    spec: RunSpec,
    strategy: ExchangeRule,
    out_dir: str,
    config: dict[str, Any],
    on_round=None,
    summary_extra: Callable[[], dict[str, Any]] | None = None,
    checkpoint: Checkpoint | None = None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp bound to one run's settings (Flower's simulation engine and the tests);
    ``checkpoint`` and ``stop`` as in ``run_federation``."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        writer = RunWriter(out_dir, config, resume=checkpoint is not None and checkpoint.exists())
        try:
            run_federation(grid, spec, strategy, writer, on_round, summary_extra, checkpoint, stop)
        except RunInterrupted as exc:  # not an error: the caller set ``stop`` and knows
            log.warning("[%s] run stopped (%s); no summary written", strategy.name, exc)

    return server
