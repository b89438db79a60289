"""peerkd's Flower ClientApp: one student on one private shard.

The student persists across rounds in ``context.state``. The world (data, splits,
partition) is rebuilt from the spec in each message's config and cached per process (and
on disk with ``$PEERKD_WORLD_CACHE``), so nothing but logits (or weights, for fedavg)
crosses the wire. A deployed node whose node config has ``data-path`` trains on that
file alone; the test split and transfer set still come from the world spec. Handlers:

- ``train``: local CE epochs; with weights in the message (fedavg), start from and
  reply with weights.
- ``train.distill``: CE + α·T²·KL toward the targets in the message, then reply with
  fresh logits on the transfer set (one round trip per round).
- ``train.digest``: fit the targets on the transfer set (KD alone), then CE epochs
  (DS-FL, FedMD); reply with logits, or probabilities if asked.
- ``train.fd``: CE + KD toward per-class targets on the private data; reply with
  per-class mean logits and label counts (federated distillation, no transfer set).
- ``query.logits``: logits on the transfer set only.
- ``evaluate``: accuracy and loss on the test split.

With ``P.CFG_CHECKPOINT_DIR`` in the config (Flower's simulation), each training message
also writes the student to that directory, and a fresh context loads it back when the
config names the round a resumed run starts after (``peerkd.round.checkpoint``). A message whose
TTL ran out while it queued (the server abandoned its round) is answered at once with an
error, untrained (``drop_expired``). With ``$PEERKD_TIMING_LOG`` set (``peerkd-deploy bench``),
every message appends one JSON line there: its handler's time and the start-up it waited for
(``record_timing``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

import peerkd  # noqa: F401  (sets the no-telemetry environment)
from peerkd.clock import process_started_at
from peerkd.env import TASK_T0_ENV, TIMING_ENV
from peerkd.round.checkpoint import load_client, save_client
from peerkd.round.results import append_jsonl
from peerkd.student.dpsgd import client_dpsgd, dp_metrics
from peerkd.student.exchange import (
    class_means_record,
    class_targets,
    metrics_record,
    query_records,
    reply,
    reply_records,
    sent_logits,
    student_arch,
    transfer_targets,
)
from peerkd.student.models import build_model
from peerkd.student.prototypes import embedding_width, projection
from peerkd.student.training import (
    class_mean_logits,
    distill_only,
    evaluate,
    pick_device,
    predict_embeddings,
    predict_logits,
    round_seed,
    shared_transfer_seed,
    train_model,
    train_prototypes,
    warm_up,
)
from peerkd.wire import protocol as P
from peerkd.wire.codec import decode_logits, encode_logits
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import World, WorldSpec, build_world, load_node_data


def drop_expired(msg: Message, context: Context, call_next) -> Message:
    """A ClientApp mod: a message past its TTL (its round was abandoned while it queued) gets an
    error reply at once instead of a training run whose reply nobody reads."""
    if time.time() > msg.metadata.created_at + msg.metadata.ttl:
        return Message(Error(ErrorCode.MESSAGE_UNAVAILABLE, "expired before it ran: round abandoned"), reply_to=msg)
    return call_next(msg, context)


_handled = [0]  # messages this process handled


def record_timing(msg: Message, context: Context, call_next) -> Message:
    """A ClientApp mod: with ``$PEERKD_TIMING_LOG`` set, append this message's ``handler_s`` and
    ``startup_s`` (from the task's start in a warm ClientApp, else from this process's start
    for its first message: interpreter, imports, FAB, app load; 0 for a later message)."""
    path = os.environ.get(TIMING_ENV)
    if not path:
        return call_next(msg, context)
    entered = time.time()
    reply = call_next(msg, context)
    done, task_t0 = time.time(), os.environ.get(TASK_T0_ENV)
    _handled[0] += 1
    began = float(task_t0) if task_t0 else process_started_at() if _handled[0] == 1 else None
    config = msg.content.config_records.get(P.KEY_CONFIG, {})
    line = {
        "node": context.node_config.get(P.NODE_PARTITION_ID),
        "round": config.get(P.CFG_ROUND, 0),
        "pid": os.getpid(),
        "entered": entered,
        "startup_s": max(0.0, entered - began) if began is not None else 0.0,
        "handler_s": done - entered,
    }
    append_jsonl(path, line)  # one short line per write: appends from several processes stay whole
    return reply


app = ClientApp(mods=[drop_expired, record_timing])

_STATE_WEIGHTS = "student"
_STATE_META = "student-meta"
_STATE_SENT = "sent-logits"  # the logits last sent (peer_sum subtracts them from the peers' sum)


@dataclass
class Student:
    """This node's view of the run: its world, identity and model."""

    world: World
    client: int
    arch: str
    model: nn.Module
    device: torch.device
    params: RoundParams  # this message's training settings, decoded once
    private: tuple[np.ndarray, np.ndarray]  # this node's training data (inputs, labels)

    @property
    def seed(self) -> int:
        """A per-client, per-round seed for batch order."""
        return round_seed(self.world.spec.seed, self.client, self.params.round)

    @property
    def transfer_seed(self) -> int:
        """The round's transfer-set batch order, the same for every client."""
        return shared_transfer_seed(self.world.spec.seed, self.params.round)


def _load_student(msg: Message, context: Context) -> Student:
    config = dict(msg.content[P.KEY_CONFIG])
    spec, params = WorldSpec.from_config(config), RoundParams.from_config(config)
    world = build_world(spec)
    client = int(context.node_config[P.NODE_PARTITION_ID])
    if not 0 <= client < spec.num_clients:
        raise ValueError(f"node partition-id {client} is outside 0..{spec.num_clients - 1}")
    arch = student_arch(params, client, context.node_config)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: 1 thread per actor is ~7x faster under load
    model = build_model(arch, world.data.input_shape, world.num_classes, seed=spec.seed * 1000 + client)
    meta = context.state.get(_STATE_META)
    if meta is not None and meta["arch"] == arch and _STATE_WEIGHTS in context.state:
        model.load_state_dict(context.state[_STATE_WEIGHTS].to_torch_state_dict())
    elif params.checkpoint_dir and params.resume_round:  # a resumed simulation: fresh contexts
        saved = load_client(params.checkpoint_dir, client, params.resume_round)
        if saved is not None and saved[0] == arch:
            model.load_state_dict(saved[1])
    return Student(world, client, arch, model.to(device), device, params, _private_data(world, client, context))


def _private_data(world: World, client: int, context: Context) -> tuple[np.ndarray, np.ndarray]:
    """The node's own file when its node config names ``data-path``, else its world shard."""
    path = str(context.node_config.get(P.NODE_DATA_PATH, "") or "")
    if not path:
        return world.private(client)
    label = str(context.node_config.get(P.NODE_DATA_LABEL, "label"))
    x, y = load_node_data(path, label, world.data.input_shape, world.num_classes)
    return (
        x if world.scaler is None else world.scaler.apply(x)
    ), y  # the world's inputs are standardised: so are the node's


def _save_student(s: Student, context: Context) -> None:
    context.state[_STATE_WEIGHTS] = ArrayRecord(s.model.state_dict())
    context.state[_STATE_META] = ConfigRecord({"arch": s.arch})
    if s.params.checkpoint_dir:
        save_client(s.params.checkpoint_dir, s.client, s.params.round, s.arch, s.model.state_dict())


def _train(s: Student, targets=None, sample_targets=None, pairs: bool = False) -> tuple[float, dict]:
    """Train for the configured epochs (CE, plus KD toward ``targets`` on the transfer set or
    ``sample_targets`` on the private samples when given); return the train loss and the
    metrics to report (seconds, and DP-SGD's steps under example-level DP). ``pairs``: the
    rule's training pairs private with transfer batches (DP-SGD plans its steps so)."""
    x, y, p = *s.private, s.params
    n_transfer = len(s.world.transfer_x)
    dp = client_dpsgd(p, len(y), n_transfer if pairs else 0, s.seed)
    t0 = time.perf_counter()
    loss = train_model(
        s.model,
        x,
        y,
        epochs=p.epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=s.seed,
        transfer_seed=s.transfer_seed,
        transfer_x=s.world.transfer_x,
        targets=targets,
        alpha=p.alpha,
        temperature=p.temperature,
        device=s.device,
        sample_targets=sample_targets,
        dp=dp,
    )
    paired = n_transfer if targets is not None and p.alpha > 0 else 0  # the transfer inputs it distilled on
    return loss, {P.METRIC_TRAIN_S: time.perf_counter() - t0, **dp_metrics(dp, p, len(y), paired)}


def _metrics(s: Student, **extra: float):
    acc, loss = evaluate(s.model, *s.world.split("test"), device=s.device)
    return metrics_record(s.client, len(s.private[1]), acc, loss, **extra)


def _finish(
    msg: Message, s: Student, context: Context, loss: float, reported: dict, records: dict | None = None
) -> Message:
    """Save the student, evaluate it, and reply with metrics (``reported`` by ``_train``) plus what
    the config asks for."""
    _save_student(s, context)
    metrics = _metrics(s, **{P.METRIC_TRAIN_LOSS: loss, **reported})
    out = reply_records(
        s.params,
        metrics,
        lambda: predict_logits(s.model, s.world.transfer_x, s.device),
        lambda: predict_logits(s.model, s.world.split("server")[0], s.device),
        records,
        world_seed=s.world.spec.seed,
    )
    if s.params.keep_sent and (sent := sent_logits(out, _transfer_shape(s))) is not None:
        context.state[_STATE_SENT] = encode_logits(sent)
    return reply(msg, s.arch, out)


def _transfer_shape(s: Student) -> tuple[int, int]:
    return (s.world.transfer_rows, s.world.num_classes)


def _sent(s: Student, context: Context) -> np.ndarray | None:
    """The logits this node sent last (kept only for rules that ask, ``keep-sent``)."""
    kept = context.state.get(_STATE_SENT)
    return decode_logits(kept, _transfer_shape(s)) if s.params.keep_sent and kept is not None else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local CE epochs; weights in and out when the message carries them (fedavg)."""
    s = _load_student(msg, context)
    weights_in = P.KEY_ARRAYS in msg.content
    if weights_in:
        s.model.load_state_dict(msg.content[P.KEY_ARRAYS].to_torch_state_dict())
    loss, reported = _train(s)
    return _finish(
        msg, s, context, loss, reported, {P.KEY_ARRAYS: ArrayRecord(s.model.state_dict())} if weights_in else None
    )


@app.train("distill")
def distill(msg: Message, context: Context) -> Message:
    """CE + α·T²·KL toward the message's targets; reply with fresh transfer-set logits."""
    s = _load_student(msg, context)
    loss, reported = _train(s, targets=transfer_targets(msg.content, s.world, _sent(s, context), s.params), pairs=True)
    return _finish(msg, s, context, loss, reported)


@app.train("digest")
def digest(msg: Message, context: Context) -> Message:
    """Digest (fit the targets on the transfer set, KD alone), then revisit (CE epochs)."""
    s = _load_student(msg, context)
    targets = transfer_targets(msg.content, s.world, params=s.params)
    p = s.params
    t0 = time.perf_counter()
    if targets is not None and p.digest_epochs > 0:
        distill_only(
            s.model,
            s.world.transfer_x,
            targets,
            epochs=p.digest_epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=s.transfer_seed,  # the transfer set's shared order, as in train's KD batches
            temperature=p.temperature,
            device=s.device,
        )
    loss, reported = _train(s)
    return _finish(msg, s, context, loss, {**reported, P.METRIC_TRAIN_S: time.perf_counter() - t0})


@app.train("fd")
def class_distill(msg: Message, context: Context) -> Message:
    """FD: CE + α·T²·KL toward the per-class targets of each private sample's label;
    reply with this student's per-class mean logits and label counts (C×C + C)."""
    s = _load_student(msg, context)
    c = s.world.num_classes
    x, y = s.private
    sample_targets = None
    if (targets := class_targets(msg.content, c)) is not None:
        table, valid = targets
        table = table.copy()
        table[~valid] = np.nan  # NaN rows: no target for samples of that class
        sample_targets = table[y]
    loss, reported = _train(s, sample_targets=sample_targets)
    means, counts = class_mean_logits(predict_logits(s.model, x, s.device), y, c)
    return _finish(msg, s, context, loss, reported, {P.KEY_LOGITS: class_means_record(means, counts, s.params)})


@app.train("proto")
def prototype_distill(msg: Message, context: Context) -> Message:
    """FedProto / FedTGP: CE + α·distance of each private row's embedding to its class prototype;
    reply with this student's per-class mean embeddings and label counts (C×D + C)."""
    s = _load_student(msg, context)
    c, p = s.world.num_classes, s.params
    x, y = s.private
    proj = projection(embedding_width(s.model), p.proto_dim)
    targets = class_targets(msg.content, c, p.proto_dim)
    t0 = time.perf_counter()
    if targets is None or p.alpha == 0:
        loss, reported = _train(s)
    else:
        loss = train_prototypes(
            s.model,
            x,
            y,
            (*targets, proj),
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=s.seed,
            alpha=p.alpha,
            device=s.device,
        )
        reported = {P.METRIC_TRAIN_S: time.perf_counter() - t0}
    means, counts = class_mean_logits(predict_embeddings(s.model, x, proj, s.device), y.reshape(-1), c)
    return _finish(msg, s, context, loss, reported, {P.KEY_LOGITS: class_means_record(means, counts, s.params)})


@app.query("logits")
def query_logits(msg: Message, context: Context) -> Message:
    """This student's logits on the transfer set."""
    s = _load_student(msg, context)
    return reply(msg, s.arch, query_records(s.client, predict_logits(s.model, s.world.transfer_x, s.device)))


@app.evaluate()
def evaluate_student(msg: Message, context: Context) -> Message:
    """Accuracy and loss of this student on the test split."""
    if msg.content[P.KEY_CONFIG].get(P.CFG_WARM_UP):
        warm_up()
    s = _load_student(msg, context)
    return reply(msg, s.arch, {P.KEY_METRICS: _metrics(s)})
