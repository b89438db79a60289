"""The ClientApp's handlers (``peerkd.student.client_app``), for a cohort of students at once.

A request is decoded per message (``decode_request``: the same decoders as the ClientApp,
so a malformed message fails alone); a handler then answers a cohort's requests with one
batched computation and returns each student's reply records, built by
``peerkd.student.exchange`` as the ClientApp builds them.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Message
from torch import nn

from peerkd.batched.cohort import Cohort
from peerkd.batched.stacked import Params
from peerkd.student.dpsgd import dp_metrics
from peerkd.student.exchange import (
    class_means_record,
    class_targets,
    metrics_record,
    query_records,
    reply_records,
    student_arch,
    transfer_targets,
)
from peerkd.student.models import build_model
from peerkd.student.prototypes import embedding_width, projection
from peerkd.wire import protocol as P
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import WorldSpec, build_world


@dataclass(frozen=True)
class Request:
    """One message, decoded: who answers it, under which settings, with which inputs."""

    msg: Message
    client: int
    arch: str
    spec: WorldSpec
    params: RoundParams
    inputs: Any = None  # targets, FD (table, valid), or a weights state dict (fedavg)

    @property
    def group(self) -> tuple:
        """Requests with equal groups are answered by one cohort."""
        return (self.msg.metadata.message_type, self.arch, self.spec, self.params)


def decode_request(msg: Message, client: int, sent=None) -> Request:
    """Decode ``msg`` for ``client``'s student; raise as the ClientApp would on a bad message.
    ``sent``: the logits this student sent last (a peers' sum becomes its leave-one-out mean)."""
    kind = msg.metadata.message_type
    if kind not in HANDLERS:
        raise ValueError(f"no handler for message type {kind!r}")
    spec, params = settings_of(msg.content[P.KEY_CONFIG])
    check_client(client, spec)
    world = build_world(spec)
    inputs = None
    if kind in (P.MSG_DISTILL, P.MSG_DIGEST):
        inputs = transfer_targets(msg.content, world, sent if params.keep_sent else None, params)
    elif kind == P.MSG_CLASS_DISTILL:
        inputs = class_targets(msg.content, world.num_classes)
    elif kind == P.MSG_PROTO:
        inputs = class_targets(msg.content, world.num_classes, params.proto_dim)
    elif kind == P.MSG_TRAIN and P.KEY_ARRAYS in msg.content:
        inputs = msg.content[P.KEY_ARRAYS].to_torch_state_dict()
        _check_state(inputs, _shapes(student_arch(params, client), world.data.input_shape, world.num_classes))
    return Request(msg, client, student_arch(params, client), spec, params, inputs)


def check_client(client: int, spec: WorldSpec) -> None:
    """Raise ValueError, as the ClientApp would, for a partition id outside ``spec``'s clients."""
    if not 0 <= client < spec.num_clients:
        raise ValueError(f"node partition-id {client} is outside 0..{spec.num_clients - 1}")


_last_settings: list = [None, None]  # [the ConfigRecord last decoded, its (WorldSpec, RoundParams)]


def settings_of(record: Any) -> tuple[WorldSpec, RoundParams]:
    """The world spec and round settings of a message's ConfigRecord. A rule sends one record
    object to every node of a round, so it is decoded once, not once per student."""
    if _last_settings[0] is not record:  # the reference held here keeps the identity test sound
        config = dict(record)
        _last_settings[:] = [record, (WorldSpec.from_config(config), RoundParams.from_config(config))]
    return _last_settings[1]


@functools.lru_cache(maxsize=32)
def _shapes(arch: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes of a student of ``arch``."""
    return {k: tuple(v.shape) for k, v in build_model(arch, input_shape, num_classes, seed=0).state_dict().items()}


def _check_state(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise as a strict ``load_state_dict`` would on other names or shapes."""
    if set(state) != set(shapes):
        raise ValueError(f"weights do not match the student: {sorted(set(state) ^ set(shapes))}")
    for k, v in state.items():
        if tuple(v.shape) != shapes[k]:
            raise ValueError(f"weight {k!r} has shape {tuple(v.shape)}, the student's is {shapes[k]}")


Handler = Callable[[Cohort, Params, list[Request]], tuple[Params | None, list[dict]]]


def _train(c: Cohort, w: Params, reqs: list[Request]) -> tuple[Params, list[dict]]:
    """``train``: CE epochs; weights in and out for requests that carry them (fedavg)."""
    for i, r in enumerate(reqs):
        if r.inputs is not None:
            for k, v in r.inputs.items():
                w[k][i] = v.to(w[k].device, w[k].dtype)
    t0 = time.perf_counter()
    w, losses = c.train(w, dp=(dp := c.dpsgd(pairs=False)))
    extra = [{P.KEY_ARRAYS: _state_dict(w, i, c.base)} if r.inputs is not None else None for i, r in enumerate(reqs)]
    return w, _finish(c, w, losses, time.perf_counter() - t0, extra, _dp_reported(c, dp))


def _distill(c: Cohort, w: Params, reqs: list[Request]) -> tuple[Params, list[dict]]:
    """``train.distill``: CE + α·KD toward each request's transfer-set targets."""
    t0 = time.perf_counter()
    targets = [r.inputs for r in reqs]
    w, losses = c.train(w, targets=targets, dp=(dp := c.dpsgd(pairs=True)))
    return w, _finish(c, w, losses, time.perf_counter() - t0, reported=_dp_reported(c, dp, targets))


def _digest(c: Cohort, w: Params, reqs: list[Request]) -> tuple[Params, list[dict]]:
    """``train.digest``: KD alone toward the targets (fresh Adam), then CE epochs (fresh Adam)."""
    t0 = time.perf_counter()
    w = c.digest(w, [r.inputs for r in reqs])
    w, losses = c.train(w, dp=(dp := c.dpsgd(pairs=False)))
    return w, _finish(c, w, losses, time.perf_counter() - t0, reported=_dp_reported(c, dp))


def _class_distill(c: Cohort, w: Params, reqs: list[Request]) -> tuple[Params, list[dict]]:
    """``train.fd``: CE + α·KD toward per-class targets; reply with class means and counts."""
    return _class_records(c, w, reqs, proto=False)


def _proto(c: Cohort, w: Params, reqs: list[Request]) -> tuple[Params, list[dict]]:
    """``train.proto``: CE + α·distance to class prototypes; reply with class-mean embeddings and counts."""
    return _class_records(c, w, reqs, proto=True)


def _class_records(c: Cohort, w: Params, reqs: list[Request], proto: bool) -> tuple[Params, list[dict]]:
    """``_class_distill`` or ``_proto``: ``_train_classes``, each student's table as its reply record."""
    w, losses, secs, tables, counts = _train_classes(c, w, [r.inputs for r in reqs], proto)
    extra = [{P.KEY_LOGITS: class_means_record(t, k, c.params)} for t, k in zip(tables, counts)]
    return w, _finish(c, w, losses, secs, extra)


def _train_classes(c: Cohort, w: Params, classes: list, proto: bool):
    """Training toward each student's class targets (with ``proto``, the prototype rules' projected
    embeddings), timed, then each student's per-class table and label counts: ``(weights, losses,
    seconds, (S, C, W) tables, (S, C) counts)``, for the Message and the stacked rounds alike."""
    t0 = time.perf_counter()
    proj = projection(embedding_width(c.base), c.params.proto_dim) if proto else None
    w, losses = c.train(w, classes=classes, proj=proj)
    secs = time.perf_counter() - t0
    return w, losses, secs, *c.class_means(w, proj)


def _query(c: Cohort, w: Params, reqs: list[Request]) -> tuple[None, list[dict]]:
    """``query.logits``: transfer-set logits only; the students are not changed."""
    logits = c.transfer_logits(w)
    return None, [query_records(r.client, logits[i]) for i, r in enumerate(reqs)]


def _evaluate(c: Cohort, w: Params, reqs: list[Request]) -> tuple[None, list[dict]]:
    """``evaluate``: test accuracy and loss."""
    scores = c.evaluate(w)
    return None, [{P.KEY_METRICS: metrics_record(r.client, len(ix), *s)} for r, ix, s in zip(reqs, c.private, scores)]


def answer_columns(c: Cohort, w: Params, targets: list | None, digest: bool = False):
    """``_distill`` (with ``targets``), ``_train`` (without; no weights sent) or, with ``digest``,
    ``_digest`` for a stacked round: the same training, evaluation and transfer-set logits (into the
    cohort's ``transfer_out``; probabilities where asked, as ``reply_records`` makes them), each
    student's reply metrics as columns (``peerkd.round.stacked.COLUMNS`` and ``TRAINED``), not
    records. Returns the weights and (the columns, the server split's logits where asked, else None)."""
    t0, n, p = time.perf_counter(), len(c.clients), c.params
    if digest:
        w, targets = c.digest(w, targets or [None] * n), None
    w, losses = c.train(w, targets=targets)
    secs = time.perf_counter() - t0
    scores, logits, probe = _outputs(c, w)
    if logits is not None and p.reply_probs:
        logits[...] = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    return w, (_columns(c, scores, losses, secs), {"probe": probe})


def answer_classes(c: Cohort, w: Params, classes: list | None, proto: bool):
    """``_class_distill`` (or, with ``proto``, ``_proto``) for a stacked round: the same training
    toward each student's ``(table, valid)`` class targets (None: none), and each student's
    per-class table and label counts as stacked arrays, not records. Returns the weights and (the
    metric columns, ``{"logits": (S, C, W) tables, "counts": (S, C)}``)."""
    w, losses, secs, tables, counts = _train_classes(c, w, classes or [None] * len(c.clients), proto)
    return w, (_columns(c, c.evaluate(w), losses, secs), {"logits": tables, "counts": counts})


def _columns(c: Cohort, scores: list[tuple[float, float]], losses: list[float], secs: float) -> dict[str, list]:
    """The reply metrics of a cohort's students as columns: ``metrics_record``'s fields, in its order."""
    n = len(c.clients)
    return {
        P.METRIC_PARTITION: list(c.clients),
        P.METRIC_NUM_EXAMPLES: [len(ix) for ix in c.private],
        P.METRIC_TEST_ACC: [acc for acc, _ in scores],
        P.METRIC_TEST_LOSS: [loss for _, loss in scores],
        P.METRIC_TRAIN_LOSS: losses,
        P.METRIC_TRAIN_S: [secs / n] * n,
    }


HANDLERS: dict[str, Handler] = {
    P.MSG_TRAIN: _train,
    P.MSG_DISTILL: _distill,
    P.MSG_DIGEST: _digest,
    P.MSG_CLASS_DISTILL: _class_distill,
    P.MSG_PROTO: _proto,
    P.MSG_QUERY_LOGITS: _query,
    P.MSG_EVALUATE: _evaluate,
}


def _dp_reported(c: Cohort, dp: list | None, targets: list | None = None) -> list[dict] | None:
    """Each student's DP-SGD metrics (``dp_metrics``): the steps it took, as the ClientApp counts them."""
    if dp is None:
        return None
    p, n_t = c.params, len(c.world.transfer_x)
    distilled = [t is not None and p.alpha > 0 for t in (targets or [None] * len(dp))]
    return [dp_metrics(d, p, len(ix), n_t if on else 0) for d, ix, on in zip(dp, c.private, distilled)]


def _finish(
    c: Cohort,
    w: Params,
    losses: list[float],
    secs: float,
    extra: list | None = None,
    reported: list[dict] | None = None,
) -> list[dict]:
    """Each trained student's reply records, as the ClientApp's ``_finish`` builds them.
    ``train-s`` is the cohort's training time shared out evenly; ``reported``: metrics per student."""
    p, n = c.params, len(c.clients)
    scores, logits, probe = _outputs(c, w)
    out = []
    for i, (client, ix) in enumerate(zip(c.clients, c.private)):
        metrics = metrics_record(
            client,
            len(ix),
            *scores[i],
            **{P.METRIC_TRAIN_LOSS: losses[i], P.METRIC_TRAIN_S: secs / n, **(reported[i] if reported else {})},
        )
        out.append(
            reply_records(
                p,
                metrics,
                lambda i=i: logits[i],
                lambda i=i: probe[i],
                extra[i] if extra else None,
                world_seed=c.world.spec.seed,
            )
        )
    return out


def _outputs(c: Cohort, w: Params) -> tuple[list[tuple[float, float]], Any, Any]:
    """What a trained student reports: each one's test accuracy and loss, and, where the request
    asks for them, the transfer-set logits (into ``transfer_out`` when the grid gave one) and the
    server split's logits; None for what it does not ask for."""
    p = c.params
    scores = c.evaluate(w)
    logits = c.transfer_logits(w) if p.reply_logits else None
    probe = c.logits(w, c.data.server_x) if p.reply_probe else None
    return scores, logits, probe


def _state_dict(w: Params, i: int, base: nn.Module) -> ArrayRecord:
    """Row ``i`` as an ArrayRecord with the module's ``state_dict`` names and order."""
    return ArrayRecord(OrderedDict((k, w[k][i].detach().cpu().clone()) for k in base.state_dict()))
