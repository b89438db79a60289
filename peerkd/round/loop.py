"""peerkd's round loop: select nodes, send, receive, screen, aggregate, record.

Per round: the rule builds one Message per node; replies are screened (client errors, malformed
metrics, wrong-shaped or non-finite arrays are rejected and logged, the round goes on); the rule
aggregates; each client's accuracy, the bytes of every serialised array and the clock go to
``metrics.jsonl``. Everything else (privacy, faults and attacks, participation, placement, text
measures, peer agreement, the engine's own fields) is a ``RoundHook`` (``peerkd.round.hook``).
Where the grid, the rule and every hook allow it (the batched engine, nothing reading the
Messages), a round is sent and answered as arrays instead (``peerkd.round.stacked``), with the
same rows, bytes and rejections.

The checkpoint stays in the loop: it saves and restores the loop's own state (round reached,
clients' last rows, totals, the rule); a hook for it would have to reach into the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from peerkd.clock import section
from peerkd.errors import RunInterrupted
from peerkd.round import record
from peerkd.round.checkpoint import Checkpoint, RunState, rekey_nodes, rng_state
from peerkd.round.contract import ExchangeRule, ServerContext
from peerkd.round.hook import RoundHook, RoundResult, RunRecord, hook_states, restore_hooks
from peerkd.round.results import RunWriter
from peerkd.round.screening import screen_reply
from peerkd.round.spec import RunSpec
from peerkd.round.stacked import StackedRequest, screen_stacked
from peerkd.round.stacked import client_rows as stacked_rows
from peerkd.student.models import model_size
from peerkd.student.training import pick_device
from peerkd.wire import protocol as P
from peerkd.wire.codec import array_bytes
from peerkd.wire.grid_io import evaluate_nodes, reply_bytes, reply_info, send_and_receive, sender, wait_for_nodes
from peerkd.world.build import build_world

log = logging.getLogger("peerkd")


def run_federation(
    grid: Grid,
    spec: RunSpec,
    rule: ExchangeRule,
    writer: RunWriter,
    hooks: Sequence[RoundHook] = (),
    checkpoint: Checkpoint | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run all rounds of ``rule`` on the nodes of ``grid`` with ``hooks``; write and return the summary.

    With ``checkpoint``, each round's state is saved there, and a run whose checkpoint exists resumes
    after its last round. Once ``stop`` is set the run raises ``RunInterrupted`` and writes no summary.
    """
    t_start = time.perf_counter()
    state = _start(spec, rule, hooks, writer, checkpoint)
    base = _base_config(spec, state, hooks, checkpoint)
    client_of = _warm_up(grid, spec, state, {**base, P.CFG_ROUND: state.round}, stop)
    for hook in hooks:  # after the warm-up: injected faults start with round 1
        grid = hook.wrap_grid(grid)
    try:
        for rnd in range(state.round + 1, spec.rounds + 1):
            nodes = _select(hooks, rnd, sorted(grid.get_node_ids()), client_of)
            config = {**base, P.CFG_ROUND: rnd}
            row, client_rows = run_round(grid, spec, state.strategy, hooks, rnd, config, nodes, stop)
            _record(state, rnd, client_of, client_rows, row)
            row["wall_s"] = state.wall_s + time.perf_counter() - t_start
            with section("io"):
                writer.log(*client_rows, row)
            log.info("[%s] round %d/%d  %s", state.strategy.name, rnd, spec.rounds, record.round_line(row))
            if checkpoint:
                saved = dataclasses.replace(state, hooks=hook_states(hooks), wall_s=row["wall_s"], rng=rng_state())
                with section("io"):
                    checkpoint.save(saved, background=True)  # written while the next round runs
    except BaseException:
        if checkpoint:
            checkpoint.close()  # a stop or an error: the round written last stays resumable
        raise
    for hook in hooks:  # e.g. every client evaluated once more after partial participation
        final = hook.finish(grid, {**base, P.CFG_ROUND: spec.rounds}, stop)
        writer.log(*final)
        state.latest.update({r["client"]: r for r in final})
    summary = {**_summary(spec, state, hooks), "wall_s": state.wall_s + time.perf_counter() - t_start}
    writer.finish(summary)
    if checkpoint:
        checkpoint.clear()  # finished: summary.json says so, the checkpoint is no longer needed
    return summary


def run_round(
    grid: Grid,
    spec: RunSpec,
    rule: ExchangeRule,
    hooks: Sequence[RoundHook],
    rnd: int,
    config: dict[str, Any],
    node_ids: list[int],
    stop: threading.Event | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One round on ``node_ids``: messages out, replies screened and aggregated; a stacked round
    (arrays, no Message per node) where the grid, the rule and every hook allow it.

    Returns the round's row (accuracy stats, replies, rejections, bytes, rule and hook
    metrics) and one row per accepted client; the caller writes them.
    """
    t0 = time.perf_counter()
    plan = _stacked_plan(grid, rule, hooks, config)
    exchange = _message_exchange if plan is None else functools.partial(_stacked_exchange, plan)
    row, round_metrics, result = exchange(grid, spec, rule, hooks, rnd, config, node_ids, stop)
    row.update(round_s=time.perf_counter() - t0, **round_metrics)
    for hook in hooks:
        row.update(hook.after_round(result))
    return row, result.client_rows


def _message_exchange(grid, spec: RunSpec, rule: ExchangeRule, hooks, rnd: int, config: dict, node_ids, stop):
    """A round through Messages: the round row, the rule's round metrics and the ``RoundResult``."""
    with section("rule"):
        messages = list(rule.configure_round(rnd, node_ids, ConfigRecord(config), grid))
    down = {m.metadata.dst_node_id: array_bytes(m.content) for m in messages}
    _check_stop(stop, rnd)
    heard = functools.partial(_heard, hooks, rnd, expected=len(messages))
    heard(0)
    with section("wait"):
        replies, sent = send_and_receive(grid, messages, spec.round_timeout, stop=stop, on_pull=heard)
    measure_keys = rule.measurement_keys()
    with section("screening"):
        accepted, rejected = _screen(replies, sent, rule, measure_keys, spec.world.num_clients, rnd)
    with section("rule"):
        round_metrics = rule.aggregate_round(rnd, [reply for reply, _ in accepted])
    rows = []
    for reply, values in accepted:
        node = sender(reply, sent)
        up, measure = reply_bytes(reply, measure_keys)
        accuracy = rule.client_accuracy(values) or (values[P.METRIC_TEST_ACC], values[P.METRIC_TEST_LOSS])
        rows.append(record.client_row(rnd, node, values, reply_info(reply), accuracy, (up, down.get(node, 0), measure)))
    row = record.round_row(rnd, rows, rejected, down, {sender(r, sent) for r in replies})
    return row, round_metrics, RoundResult(rnd, messages, [reply for reply, _ in accepted], rows)


def _stacked_plan(grid: Grid, rule: ExchangeRule, hooks: Sequence[RoundHook], config: dict) -> tuple | None:
    """The message type and config of a stacked round, or None for Messages: the grid must offer
    stacked rounds (``stacks``: the batched engine) for the rule's request, the rule must have one
    (``stacked_round``), and no hook may read the round's Messages (``reads_messages``)."""
    if not hasattr(grid, "answer_stacked") or any(hook.reads_messages for hook in hooks):
        return None
    plan = rule.stacked_round(ConfigRecord(config))
    return plan if plan is not None and grid.stacks(*plan) else None


def _stacked_exchange(plan: tuple, grid, spec: RunSpec, rule: ExchangeRule, hooks, rnd: int, config, node_ids, stop):
    """``_message_exchange`` as arrays (``peerkd.round.stacked``): the rule's targets as one stack,
    the grid's replies as columns, screening by vectorised checks, the same rows and bytes."""
    with section("rule"):
        request = StackedRequest(*plan, node_ids, *rule.stacked_targets(node_ids))
    down = {node: request.bytes_down if h else 0 for node, h in zip(node_ids, request.has_target.tolist())}
    _check_stop(stop, rnd)
    _heard(hooks, rnd, 0, len(node_ids))
    with section("wait"):
        replies = grid.answer_stacked(request)
    _heard(hooks, rnd, len(replies.nodes) + len(replies.failed), len(node_ids))
    with section("screening"):
        keep, rejections = screen_stacked(replies, rule, spec.world.num_clients)
        accepted = replies.take(keep)
    measured = P.KEY_LOGITS in rule.measurement_keys()
    rejected = []
    position = {node: k for k, node in enumerate(node_ids)}
    for node, reason in sorted(rejections, key=lambda nr: position.get(nr[0], len(position))):
        log.warning("[%s] round %d: rejected reply from node %d: %s", rule.name, rnd, node, reason)
        up = 0 if node in replies.failed else replies.traffic(measured)[0]
        rejected.append({"node_id": node, "reason": reason, "bytes_up": up})
    with section("rule"):
        round_metrics = rule.aggregate_stacked(rnd, accepted)
    rows = stacked_rows(rnd, accepted, rule, down)
    row = record.round_row(rnd, rows, rejected, down, set(node_ids))  # every node answered (an error is an answer)
    return row, round_metrics, RoundResult(rnd, [], [], rows, accepted)


def _check_stop(stop: threading.Event | None, rnd: int) -> None:
    if stop is not None and stop.is_set():
        raise RunInterrupted(f"stopped before round {rnd}")


def _heard(hooks: Sequence[RoundHook], rnd: int, received: int, expected: int) -> None:
    """Tell every hook that ``received`` of the round's ``expected`` replies are in."""
    for hook in hooks:
        hook.on_replies(rnd, received, expected)


def _screen(replies: list[Message], sent: dict[str, int], rule: ExchangeRule, measure_keys: set[str], num_clients, rnd):
    """The accepted ``(reply, metrics)`` pairs and the rejections (node, reason, bytes up) of a
    round; a second reply for the same client is rejected as a duplicate."""
    accepted, rejected, seen = [], [], set()
    for reply in replies:
        values, reason = screen_reply(reply, rule, num_clients)
        if values is not None and values[P.METRIC_PARTITION] in seen:
            values, reason = None, f"duplicate {P.METRIC_PARTITION} {values[P.METRIC_PARTITION]}"
        if values is None:
            node = sender(reply, sent)
            log.warning("[%s] round %d: rejected reply from node %d: %s", rule.name, rnd, node, reason)
            rejected.append({"node_id": node, "reason": reason, "bytes_up": reply_bytes(reply, measure_keys)[0]})
            continue
        seen.add(values[P.METRIC_PARTITION])
        accepted.append((reply, values))
    return accepted, rejected


def _start(
    spec: RunSpec, rule: ExchangeRule, hooks: Sequence[RoundHook], writer: RunWriter, checkpoint: Checkpoint | None
) -> RunState:
    """The state to start from: the checkpoint's, resumed into ``rule`` (metrics past it dropped), or
    the rule set up afresh."""
    t0 = time.perf_counter()
    ctx = ServerContext(
        build_world(spec.world), spec.students, spec.world.seed, pick_device(), spec.epochs, spec.lr, spec.batch_size,
        spec.measure_agreement, spec.codec,
    )  # fmt: skip
    if checkpoint is not None and checkpoint.exists():
        state = checkpoint.load(rule, ctx)
        writer.keep_rounds(state.round)
        log.info(
            "[%s] resuming after round %d/%d from %s", state.strategy.name, state.round, spec.rounds, checkpoint.dir
        )
        for hook in hooks:
            hook.setup(state.strategy, fresh=False)
        restore_hooks(hooks, state.hooks)
        return state
    run_metrics = rule.setup(ctx)
    for hook in hooks:
        run_metrics.update(hook.setup(rule, fresh=True))
    writer.log({"type": "setup", **run_metrics, "setup_s": time.perf_counter() - t0})
    engine = checkpoint.engine if checkpoint else ""
    return RunState(0, rule, run_metrics, {}, Counter(), Counter(), {}, 0.0, engine, world=spec.world.to_config())


def _base_config(
    spec: RunSpec, state: RunState, hooks: Sequence[RoundHook], checkpoint: Checkpoint | None
) -> dict[str, Any]:
    """The config entries every message of the run carries (the round is added per message)."""
    out = {
        **spec.world.to_config(),
        P.CFG_STUDENTS: ",".join(spec.students),
        P.CFG_EPOCHS: spec.epochs,
        P.CFG_LR: spec.lr,
        P.CFG_BATCH_SIZE: spec.batch_size,
        P.CFG_CODEC: spec.codec.name,
        P.CFG_CODEC_K: spec.codec.k,
    }
    for hook in hooks:
        out.update(hook.message_config(state.run_metrics))
    if checkpoint is not None and checkpoint.client_dir is not None:  # where clients keep their students
        out.update({P.CFG_CHECKPOINT_DIR: checkpoint.client_dir, P.CFG_RESUME_ROUND: state.round})
    return out


def _warm_up(grid: Grid, spec: RunSpec, state: RunState, config: dict, stop: threading.Event | None) -> dict[int, int]:
    """Wait for the nodes, then one ``evaluate`` round trip before the first round, timed by
    ``wait_timeout``: the first round's clock starts once the nodes answer (a simulation's Ray
    start-up is no round's time). Returns each answering node's client; a resumed run's
    rule state keyed by the old node ids follows its clients to the new ones."""
    node_ids = wait_for_nodes(grid, spec.world.num_clients, spec.wait_timeout)
    evaluated = evaluate_nodes(grid, node_ids, {**config, P.CFG_WARM_UP: True}, spec.wait_timeout, stop)
    client_of = {node: values[P.METRIC_PARTITION] for node, values in evaluated.items()}
    if missing := len(node_ids) - len(evaluated):
        log.warning("%d of %d nodes did not answer before the first round", missing, len(node_ids))
    if state.round:  # a resumed simulation has new node ids
        node_now = {c: n for n, c in client_of.items()}
        rekey_nodes(state.strategy, {n: node_now.get(c) for n, c in state.nodes.items()})
    return client_of


def _select(hooks: Sequence[RoundHook], rnd: int, nodes: list[int], client_of: dict[int, int]) -> list[int]:
    """The round's nodes: all connected ones, as each hook in turn narrows them."""
    for hook in hooks:
        nodes = hook.select(rnd, nodes, client_of)
    return nodes


def _record(state: RunState, rnd: int, client_of: dict[int, int], client_rows: list[dict], row: dict) -> None:
    """A finished round in the run's state: each client's last row, replies and node, the totals."""
    state.round = rnd
    for client_row in client_rows:
        state.latest[client_row["client"]] = client_row
        state.replies[client_row["client"]] += 1
        client_of[client_row["node_id"]] = client_row["client"]
    state.totals.update({k: row[k] for k in record.TOTALS})
    state.nodes = dict(client_of)


def _summary(spec: RunSpec, state: RunState, hooks: Sequence[RoundHook]) -> dict[str, Any]:
    """The summary: the run's own fields, then each hook's."""
    data = build_world(spec.world).data
    run = {
        "strategy": state.strategy.name,
        "dataset": data.name,
        "num_clients": spec.world.num_clients,
        "rounds": spec.rounds,
        "seed": spec.world.seed,
        "students": list(spec.students),
        "student_params": {s: model_size(s, data.input_shape, data.num_classes) for s in sorted(set(spec.students))},
        "private": state.strategy.private,
        "clients_per_round": spec.clients_per_round or spec.world.num_clients,
    }
    clients = record.per_client(state.latest)
    summary = record.run_summary(run, clients, state.totals, state.run_metrics)
    done = RunRecord(spec.rounds, state.latest, state.replies, state.run_metrics)
    for hook in hooks:
        summary.update(hook.summary(done, clients))
    return summary
