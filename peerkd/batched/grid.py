"""``BatchedGrid``: an in-process Flower Grid whose nodes are stacked students.

The ServerApp's round loop, the rules, reply screening and byte counting see an ordinary
``flwr.serverapp.Grid``. Pushed messages are answered at once: decoded one by one (a bad
message gets an error reply, as a failing ClientApp's would), grouped by (message type,
student architecture, settings), and each group is answered in chunks of at most
``chunk`` students by one vmapped computation. Replies are real Messages built by the
same code as the ClientApp's, so they carry the same records and bytes.

A round whose Messages nobody would read can instead come as one ``StackedRequest``
(``stacks``, ``answer_stacked``): the same cohorts answer it, and the replies come back as
columns and one logits array (``peerkd.round.stacked``), with no Message per node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from uuid import uuid4

import numpy as np
import torch
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from peerkd.batched.cohort import EVAL_ROWS, Cohort, DeviceData
from peerkd.batched.handlers import (
    HANDLERS,
    Request,
    answer_classes,
    answer_columns,
    check_client,
    decode_request,
    settings_of,
)
from peerkd.batched.memory import MEMORY_SHARE, ArrayPool, auto_chunk, fleet_bytes, free_bytes
from peerkd.batched.store import StudentStore
from peerkd.clock import section
from peerkd.errors import ConfigError, check_choice
from peerkd.round.stacked import COLUMNS, TRAINED, StackedReplies, StackedRequest
from peerkd.student.exchange import leave_one_out_from_sums, reply, sent_logits, student_arch
from peerkd.student.models import build_model, num_parameters
from peerkd.student.training import pick_device
from peerkd.wire import protocol as P
from peerkd.wire.codec import array_bytes, encode_class_table, encode_logits
from peerkd.world.build import World, WorldSpec, build_world

log = logging.getLogger("peerkd")

DEVICES = ("auto", "cpu", "cuda")
STORES = ("auto", "device", "host")
NODE_ID_BASE = 1_000  # node id = NODE_ID_BASE + partition id (SUPERLINK_NODE_ID is 1)
STACKED = (P.MSG_DISTILL, P.MSG_TRAIN, P.MSG_DIGEST)  # what ``answer_stacked`` answers with transfer-set rows
CLASSES = (P.MSG_CLASS_DISTILL, P.MSG_PROTO)  # ... and with per-class tables (FD, the prototype rules)


class BatchedGrid(Grid):
    """A Grid of ``num_nodes`` simulated nodes (partition ids ``0..num_nodes-1``) answered in batches.

    Parameters
    ----------
    num_nodes : int
        Number of nodes; node ``NODE_ID_BASE + i`` holds partition ``i``.
    device : str
        ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``.
    chunk : int
        Most students per vmapped call; 0 sizes chunks from free memory.
    run_id : int
        The run's id; creating the grid makes this process the run's ServerApp task
        (Flower's ``TaskIdentity``), so rules can build Messages.
    store : str
        Where students' weights stay between calls: ``device``, ``host`` (streamed to the device
        chunk by chunk), or ``auto``: host memory on a GPU whose free memory could not hold
        ``MEMORY_SHARE`` of the fleet's weights (``memory.fleet_bytes``), else the device.
    stacked : bool
        Offer the round loop stacked rounds (``answer_stacked``: no Message per node where none is
        read); False: every round through Messages.
    """

    answers_at_once = True  # replies are ready when push_messages returns (injected delays are simulated)

    def __init__(
        self,
        num_nodes: int,
        *,
        device: str = "auto",
        chunk: int = 0,
        run_id: int = 1,
        store: str = "auto",
        stacked: bool = True,
    ):
        if chunk < 0:
            raise ConfigError(
                "engine.chunk", f"{chunk} students per call", "an integer >= 0 (0: sized from free memory)"
            )
        self.device = pick_device(check_choice("engine.device", device, DEVICES))
        self.chunk, self.stacked = chunk, stacked
        self._store_on = check_choice("engine.store", store, STORES)
        self.store_place = "host" if store == "host" else "device"  # where weights stay (summary field ``store``)
        self.store = StudentStore(self.device, torch.device("cpu") if store == "host" else None)
        self._nodes = {NODE_ID_BASE + i: i for i in range(num_nodes)}
        self._replies: dict[str, Message] = {}
        self._data: dict[WorldSpec, DeviceData] = {}
        self._logit_rows = ArrayPool()  # each round's transfer-set logits, in memory written before
        self.set_run(Run.create_empty(run_id))

    def set_run(self, run: Run) -> None:
        """Set the run this grid serves (and this process's task identity for it)."""
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        self._run = run
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run.run_id, 1, SUPERLINK_NODE_ID

    @property
    def run(self) -> Run:
        """Run information."""
        return Run(**vars(self._run))

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """A new message to ``dst_node_id`` (Flower deprecates this; the Message constructor does the same)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """All nodes: they are in-process, so every one is connected from the start."""
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Give each message an id, answer them all, and keep the replies for ``pull_messages``."""
        messages = list(messages)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's in-memory grid does
            if msg.metadata.reply_to_message_id or msg.metadata.ttl <= 0:
                raise ValueError(f"invalid message: {msg.metadata}")
        for r in self._answer(messages):
            self._replies[r.metadata.reply_to_message_id] = r
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` not pulled yet."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and return their replies (all of them: answering is synchronous)."""
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, messages: list[Message]) -> list[Message]:
        """Replies to ``messages``: decode each, then answer each group chunk by chunk."""
        replies, groups = [], {}
        for msg in messages:
            if msg.metadata.dst_node_id not in self._nodes:
                replies.append(_error(msg, ErrorCode.NODE_UNAVAILABLE, no_node(msg.metadata.dst_node_id)))
                continue
            try:
                client = self._nodes[msg.metadata.dst_node_id]
                with section("messages"):
                    req = decode_request(msg, client, self.store.sent.get(client))
            except Exception as exc:  # noqa: BLE001  (a bad message fails alone, as in a ClientApp)
                replies.append(_raised(msg, exc))
                continue
            groups.setdefault(req.group, []).append(req)
        for reqs in groups.values():
            first = reqs[0]
            size = self._chunk_size(first.spec, first.arch, first.params, len(reqs))
            out = self._transfer_out(reqs)
            for start in range(0, len(reqs), size):
                rows = None if out is None else out[start : start + size]
                replies += self._answer_chunk(reqs[start : start + size], rows)
        return replies

    def _answer_chunk(self, reqs: list[Request], transfer_out: np.ndarray | None = None) -> list[Message]:
        """One cohort's replies (all error replies if its computation raises); its students'
        transfer-set logits go into ``transfer_out`` when given."""
        first = reqs[0]
        handler = HANDLERS[first.msg.metadata.message_type]
        clients = [r.client for r in reqs]
        try:
            cohort, records = self._cohort_call(
                first.spec, first.params, first.arch, clients, transfer_out, lambda c, w: handler(c, w, reqs)
            )
            if first.params.keep_sent:
                self._keep_sent(cohort.world, cohort.clients, records)
        except Exception as exc:  # noqa: BLE001
            log.exception(
                "batched %s for %d %s students failed", first.msg.metadata.message_type, len(reqs), first.arch
            )
            return [_raised(r.msg, exc) for r in reqs]
        with section("messages"):
            return [reply(r.msg, r.arch, rec) for r, rec in zip(reqs, records)]

    def _cohort_call(
        self, spec: WorldSpec, params: P.RoundParams, arch: str, clients: list[int], transfer_out, handler
    ):
        """``handler(cohort, weights)`` for the ``arch`` students ``clients`` under ``params``: their
        weights loaded from the store and saved back when the handler returns new ones; their
        transfer-set logits into ``transfer_out`` (when given). Returns the cohort and what else the
        handler returned."""
        world = build_world(spec)
        cohort = Cohort(world, self._device_data(world), params, self.store.base(arch, world), clients, transfer_out)
        self._place_store(arch, world)
        with section("plan"):
            weights = self.store.load(arch, world, cohort.clients)
        with section("compute"):
            weights, out = handler(cohort, weights)
        if weights is not None:
            with section("plan"):
                self.store.save(arch, cohort.clients, weights)
        return cohort, out

    def stacks(self, message_type: str, config: ConfigRecord) -> bool:
        """Whether ``answer_stacked`` answers a round of these requests: ``train.distill``,
        ``train.digest``, ``train`` (no weights sent), ``train.fd`` or ``train.proto`` in the fp32
        codec, without privacy noise or DP-SGD (those replies are made by the Message path's code,
        which the rounds then take); a class-table round asks for no transfer-set or server-split
        logits besides. Kept sums (``peer_sum``) are answered: the grid keeps each student's sent
        logits as the Message path does."""
        if not self.stacked or message_type not in (*STACKED, *CLASSES):
            return False
        _, p = settings_of(config)
        if message_type in CLASSES and (p.reply_logits or p.reply_probe):
            return False
        return p.codec == "fp32" and not (p.dp_noise > 0 or p.dpsgd_epsilon > 0)

    def answer_stacked(self, request: StackedRequest) -> StackedReplies:
        """Every node of ``request`` (``stacks`` said yes) answered as arrays: the Message path's
        cohorts, chunk by chunk, their metrics as columns and their transfer-set logits rows of one
        array (no copy with one architecture and no failure); rows in the request's order."""
        spec, params = settings_of(request.config)
        world = build_world(spec)
        shape = (world.transfer_rows, world.num_classes)
        want = params.reply_logits and world.transfer_rows > 0
        groups, failed = self._stacked_groups(request, spec, params)
        answer_with = _answer_with(request.message_type)
        done: list[tuple] = []  # (positions, arch, (columns, arrays), logits rows) of each answered chunk
        out, answered = None, True
        for arch, positions in groups.items():
            out = self._logit_rows.empty((len(positions), *shape)) if want else None
            size = self._chunk_size(spec, arch, params, len(positions))
            for start in range(0, len(positions), size):
                part = positions[start : start + size]
                rows = None if out is None else out[start : start + size]
                clients = [self._nodes[request.nodes[k]] for k in part]
                targets = (
                    _targets_of(request, part) if request.peers is None else self._from_sum(request, part, clients)
                )
                try:
                    _, answer = self._cohort_call(
                        spec, params, arch, clients, rows, lambda c, w, t=targets: answer_with(c, w, t)
                    )
                except Exception as exc:  # noqa: BLE001
                    log.exception("batched %s for %d %s students failed", request.message_type, len(part), arch)
                    failed.update({request.nodes[k]: raised_reason(exc) for k in part})
                    answered = False
                    continue
                done.append((part, arch, answer, rows))
                if params.keep_sent and rows is not None:  # as _keep_sent: what each student sent, a copy
                    self.store.sent.update((client, row.copy()) for client, row in zip(clients, rows))
        whole = out if len(groups) == 1 and answered else None
        if request.message_type in CLASSES:
            return _stacked_replies(request, done, None, failed, _class_bytes(world, params, request.message_type))
        return _stacked_replies(request, done, whole, failed, _reply_bytes(shape) if want else 0)

    def _from_sum(self, request: StackedRequest, positions: list[int], clients: list[int]) -> list:
        """The targets of ``clients`` (at ``positions``) from the peers' sum the request carries: each
        one's leave-one-out mean from the logits it sent last, kept here (``leave_one_out_from_sums``,
        the ClientApp's arithmetic, for the chunk at once)."""
        peers = request.peers[positions]
        own = [self.store.sent.get(c) if inc else None for c, inc in zip(clients, peers[:, 1] > 0)]
        return leave_one_out_from_sums(request.targets[positions[0]], int(peers[0, 0]), own)

    def _stacked_groups(self, request: StackedRequest, spec: WorldSpec, params: P.RoundParams):
        """The request's positions by student architecture, and the nodes that cannot answer (with
        the error a ClientApp's reply would carry)."""
        groups: dict[str, list[int]] = {}
        failed: dict[int, str] = {}
        for k, node in enumerate(request.nodes):
            client = self._nodes.get(node)
            if client is None:
                failed[node] = no_node(node)
                continue
            try:
                check_client(client, spec)
            except ValueError as exc:
                failed[node] = raised_reason(exc)
                continue
            groups.setdefault(student_arch(params, client), []).append(k)
        return groups, failed

    def _keep_sent(self, world: World, clients: list[int], records: list[dict]) -> None:
        """Remember each student's sent logits, as the ClientApp keeps them in ``context.state``."""
        shape = (world.transfer_rows, world.num_classes)
        for client, rec in zip(clients, records):
            if (sent := sent_logits(rec, shape)) is not None:
                self.store.sent[client] = sent

    def _place_store(self, arch: str, world: World) -> None:
        """``store=auto`` on a GPU, before the first student is made: host memory if the fleet's
        weights would take more than ``MEMORY_SHARE`` of the free GPU memory."""
        if self._store_on != "auto" or self.device.type != "cuda" or self.store.home.type != "cuda":
            return
        self._store_on = "decided"
        need = fleet_bytes(num_parameters(self.store.base(arch, world)), len(self._nodes), 0)
        if need > MEMORY_SHARE * free_bytes(self.device):
            log.info("batched: %d students' weights kept in host memory, streamed by chunk", len(self._nodes))
            self.store.home, self.store_place = torch.device("cpu"), "host"

    def _transfer_out(self, reqs: list[Request]) -> np.ndarray | None:
        """One array for the transfer-set logits of a group's students, if they reply with them:
        each chunk writes its rows, so a round's replies hold rows of one array, which the rules
        stack without a copy (``peerkd.wire.rows.stack_rows``). Never one that something still
        holds (``ArrayPool``): a rule may keep what it received, and a received array never changes."""
        first, kind = reqs[0], reqs[0].msg.metadata.message_type
        if kind == P.MSG_EVALUATE or not (first.params.reply_logits or kind == P.MSG_QUERY_LOGITS):
            return None
        world = build_world(first.spec)
        if world.transfer_rows == 0:
            return None
        return self._logit_rows.empty((len(reqs), world.transfer_rows, world.num_classes))

    def _chunk_size(self, spec: WorldSpec, arch: str, params: P.RoundParams, n: int) -> int:
        if self.chunk:
            return self.chunk
        world = build_world(spec)
        model = build_model(arch, world.data.input_shape, world.num_classes, seed=0)
        eval_rows = min(EVAL_ROWS, max(len(world.split("test")[1]), len(world.transfer_x), 1))
        return auto_chunk(model, world.data.input_shape, 2 * params.batch_size, eval_rows, n, self.device)

    def _device_data(self, world: World) -> DeviceData:
        if world.spec not in self._data:
            self._data[world.spec] = DeviceData.of(world, self.device)
        return self._data[world.spec]


def _answer_with(message_type: str):
    """``f(cohort, weights, targets)``: the stacked answer of a request of ``message_type``; for class
    tables the targets become ``(table, valid)`` pairs as each node decodes its Message's: NaN rows
    (classes no peer holds) are invalid and zero (``fd.encode_target``, ``exchange.class_targets``)."""
    if message_type not in CLASSES:
        return lambda c, w, t: answer_columns(c, w, t, message_type == P.MSG_DIGEST)

    def classes(c, w, targets):
        pairs = None
        if targets is not None:
            pairs = [None if t is None else (np.where(v[:, None], t, 0), v) for t, v in zip(targets, _valid(targets))]
        return answer_classes(c, w, pairs, message_type == P.MSG_PROTO)

    return classes


def _valid(targets: list[np.ndarray | None]) -> list[np.ndarray | None]:
    return [None if t is None else np.isfinite(t).all(axis=1) for t in targets]


def _targets_of(request: StackedRequest, positions: list[int]) -> list[np.ndarray | None] | None:
    """The targets of the nodes at ``positions``: rows of the request's array (consecutive positions:
    consecutive rows, which a cohort stacks without a copy), None for a node without."""
    if request.targets is None:
        return None
    return [request.targets[k] if request.has_target[k] else None for k in positions]


def _class_bytes(world: World, params: P.RoundParams, message_type: str) -> int:
    """The serialised array bytes of a class-table reply (fp32: fixed by the shape): a ``(C, W)``
    table (``W``: the classes, or the prototypes' width) and ``(C,)`` counts."""
    c = world.num_classes
    width = c if message_type == P.MSG_CLASS_DISTILL else params.proto_dim
    table = encode_class_table(np.zeros((c, width), np.float32), np.zeros(c, np.float32))
    return array_bytes(RecordDict({P.KEY_LOGITS: table}))


def _reply_bytes(shape: tuple[int, ...], key: str = P.KEY_LOGITS) -> int:
    """The serialised array bytes of a reply's record ``key`` of ``shape`` (fp32: fixed by the shape)."""
    return array_bytes(RecordDict({key: encode_logits(np.zeros(shape, np.float32))}))


def _stacked_replies(
    request: StackedRequest, done: list, whole: np.ndarray | None, failed: dict[int, str], bytes_up: int
) -> StackedReplies:
    """The answered chunks (``(positions, arch, columns, logits rows)``) as one ``StackedReplies`` in
    the request's order. The logits are ``whole`` (one architecture's array, every chunk answered:
    no copy), else the chunks' rows gathered."""
    positions = np.asarray([k for part, *_ in done for k in part], dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    columns = {
        key: np.concatenate([np.asarray(c[key]) for _, _, (c, _), _ in done])[order] if done else np.zeros(0)
        for key in (*COLUMNS, *TRAINED)
    }
    archs = [arch for part, arch, _, _ in done for _ in part]

    def joined(name: str) -> np.ndarray | None:  # the chunks' stacked arrays (probes, class tables, counts)
        if not done or done[0][2][1].get(name) is None:
            return None
        return np.concatenate([arrays[name] for _, _, (_, arrays), _ in done])[order]

    logits = whole
    if whole is None and done and done[0][3] is not None:
        logits = np.concatenate([rows for *_, rows in done])[order]
    probe, counts = joined("probe"), joined("counts")
    if counts is not None:
        logits = joined("logits")
    nodes = np.asarray(request.nodes, dtype=np.int64)[positions[order]]
    bytes_probe = 0 if probe is None else _reply_bytes(probe.shape[1:], P.KEY_PROBE)
    return StackedReplies(
        nodes, [archs[i] for i in order], columns, logits, bytes_up, failed, probe, bytes_probe, counts
    )


def no_node(node: int) -> str:
    """The reason of the error reply to a message for a node this grid does not have."""
    return f"no node {node}"


def raised_reason(exc: Exception) -> str:
    """The reason of the error reply Flower's simulation sends for a ClientApp that raised ``exc``."""
    return str(type(exc)) + ":<'" + str(exc) + "'>"


def _raised(msg: Message, exc: Exception) -> Message:
    """The error reply Flower's simulation sends for a ClientApp that raised ``exc``."""
    return _error(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, raised_reason(exc))


def _error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)
