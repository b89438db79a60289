"""The common base of every exchange rule.

A rule turns a round into one Message per node (``configure_round``), checks each reply
(``check_reply``) and folds the accepted replies into its state (``aggregate_round``).
The ServerApp owns the Grid loop, the clock, byte counts and results files; rules own
only their maths and their state, like Flower's own strategies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from peerkd.errors import ConfigError, check_range
from peerkd.round.checkpoint import ModuleWeights
from peerkd.round.contract import ServerContext
from peerkd.round.stacked import StackedReplies
from peerkd.wire.codec import array_bytes, decode_logits, encode_logits
from peerkd.wire.protocol import (
    CFG_ALPHA,
    CFG_REPLY_LOGITS,
    CFG_TEMPERATURE,
    KEY_CONFIG,
    KEY_LOGITS,
    KEY_METRICS,
    KEY_TARGETS,
    METRIC_PARTITION,
    MSG_DISTILL,
)
from peerkd.wire.records import record_dict
from peerkd.wire.rows import stack_rows
from strategies.robust import Aggregator


def default_temperature(text: bool) -> float:
    """KD temperature when ``strategy.temperature`` is 0: 4 for images and tables (Hinton's range,
    every image study's setting), 1 for text: over a 28–103-symbol vocabulary, T = 1 gave tiny LM
    peers the lowest perplexity of T in {1, 2, 4} on synthtext and on real English text
    (docs/text-defaults.md)."""
    return 1.0 if text else 4.0


class DistillationStrategy(ABC):
    """Base of all exchange rules (one subclass per file in ``strategies/``)."""

    name: ClassVar[str]
    private: ClassVar[bool] = True  # False: the rule uses pooled private data (an upper bound)
    needs_transfer: ClassVar[bool] = False  # True: the rule cannot run without a transfer set
    min_clients: ClassVar[int] = 1  # peers teaching peers need at least 2
    dp_supported: ClassVar[bool] = False  # True: clients send only outputs on shared inputs, which privacy.* noises
    example_dp: ClassVar[bool] = True  # False: clients release raw-shard statistics (privacy.unit=example refused)
    reads_votes: ClassVar[bool] = False  # True: targets are means or sums of releases (privacy.release=votes)
    sums_releases: ClassVar[bool] = False  # True: receivers learn only the sum of releases (privacy.noise=distributed)
    # Attributes a resumed rule gets from its settings and ``resume``, not from a checkpoint: objects, not data.
    not_saved: ClassVar[frozenset[str]] = frozenset({"ctx", "aggregator"})

    def check(self, students: tuple[str, ...], num_clients: int, transfer_size: int | None = None) -> None:
        """Raise ConfigError if this rule cannot run with these students, clients and transfer set."""
        if num_clients < self.min_clients:
            raise ConfigError(
                "num_clients",
                f"{self.name} needs at least {self.min_clients} clients",
                f"an integer >= {self.min_clients}",
            )
        if self.needs_transfer and transfer_size == 0:
            raise ConfigError(
                "data.public_frac",
                f"{self.name} distills on a transfer set, but it is empty",
                "a fraction > 0, or data.transfer=noise|<dataset> with data.transfer_size > 0",
            )

    def check_data(self, text: bool) -> None:  # noqa: B027  (optional hook: most rules take any data)
        """Raise ConfigError if this rule cannot run on this kind of data (``text``: token windows)."""

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        """Prepare state before round 1; return run-level metrics (e.g. teacher accuracy)."""
        self.check(ctx.students, ctx.world.spec.num_clients, len(ctx.world.transfer_x))
        self.ctx = ctx
        self.check_data(ctx.world.data.text)
        self.transfer_shape = (ctx.world.transfer_rows, ctx.world.num_classes)
        return {}

    def resume(self, ctx: ServerContext) -> None:
        """Instead of ``setup`` when a run resumes: the checks and ``ctx``, none of the work whose
        results ``load_state_dict`` brings back (a teacher is not trained again)."""
        DistillationStrategy.setup(self, ctx)

    def state_dict(self) -> dict[str, Any]:
        """The rule's state as data, for a checkpoint: every attribute but ``not_saved``, a
        module as its weights (``peerkd.round.checkpoint.encode`` refuses anything else)."""
        return {
            k: ModuleWeights(v.state_dict()) if isinstance(v, nn.Module) else v
            for k, v in vars(self).items()
            if k not in self.not_saved
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict`` on a ``resume``d rule: attributes set, module weights loaded
        into its modules. Raises ValueError for a name that is no state of this rule."""
        for name, value in state.items():
            current = getattr(self, name, None)
            if not name.isidentifier() or name.startswith("__") or name in self.not_saved or hasattr(type(self), name):
                raise ValueError(f"rule.{name}: not a state attribute of {self.name}")
            if isinstance(value, ModuleWeights) != isinstance(current, nn.Module):
                raise ValueError(f"rule.{name}: module weights and modules must match, got {type(value).__name__}")
            if isinstance(current, nn.Module):
                current.load_state_dict(value)
            else:
                setattr(self, name, value)

    @abstractmethod
    def configure_round(
        self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages for this round, at most one per node."""

    def check_reply(self, content: RecordDict) -> None:  # noqa: B027  (optional hook: most rules check nothing)
        """Raise ``peerkd.wire.codec.CodecError`` if a reply lacks what this rule needs."""

    def aggregate_round(self, server_round: int, replies: list[Message]) -> dict[str, Any]:
        """Fold accepted replies into the rule's state; return round-level metrics."""
        return {}

    def client_accuracy(self, metrics: dict[str, float]) -> tuple[float, float] | None:
        """Accuracy and loss to record for a client; None keeps what the client measured."""
        return None

    def measurement_keys(self) -> set[str]:
        """Reply records sent only for peerkd's metrics, not by the rule: their bytes are
        counted apart from the protocol's."""
        return set()

    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None:
        """``(n, P, C)`` logits of the replying students on the transfer set, for agreement
        metrics; None when the replies carry none."""
        return None

    def stacked_round(self, config: ConfigRecord) -> tuple[str, ConfigRecord] | None:
        """The message type and config of a round sent as one ``StackedRequest`` (the batched
        engine's stacked round), or None: this rule's rounds are Messages only."""
        return None

    def stacked_targets(self, node_ids: list[int]) -> tuple[np.ndarray | None, np.ndarray, int]:
        """Every node's target as rows of one ``(n, P, C)`` array (what each node would decode from
        its Message), which nodes have one (``(n,)`` bool), and the serialised bytes of one target
        (then, for ``peer_sum``, each node's ``[senders, included]``: ``StackedRequest.peers``);
        a rule with a ``stacked_round`` says how."""
        raise NotImplementedError(f"{self.name} has no stacked round")

    def aggregate_stacked(self, server_round: int, replies: StackedReplies) -> dict[str, Any]:
        """``aggregate_round`` for a stacked round's accepted replies (``peerkd.round.stacked``): their
        nodes in reply order, metric columns, transfer-set outputs ``(n, P, C)`` and probes."""
        return {}

    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None:
        """The agreement measure's logits from the replies' stacked transfer-set outputs (None: none)."""
        return None


def client_of(reply: Message) -> int:
    """The client (partition) id a screened reply came from."""
    return int(reply.content[KEY_METRICS][METRIC_PARTITION])


class LogitDistillation(DistillationStrategy):
    """Shared shape of the rules that send each node targets and may collect logits back.

    Subclasses say what each node's target is (``targets_for``), whether nodes send their
    logits back (``wants_logits``), and may change the message type, the extra config and
    how a target is packed.
    """

    wants_logits: ClassVar[bool] = True
    needs_transfer: ClassVar[bool] = True
    message_type: ClassVar[str] = MSG_DISTILL
    dp_supported: ClassVar[bool] = True
    sends_probs: ClassVar[bool] = False  # clients reply with probabilities, not logits (DS-FL)
    # True: a round is targets out, logits and metrics back, nothing else read (``stacked_round``)
    stacks: ClassVar[bool] = False

    def __init__(self, alpha: float = 1.0, temperature: float = 0.0):
        self.alpha = check_range("strategy.alpha", alpha, 0.0, 100.0)
        self.temperature = check_range("strategy.temperature", temperature, 0.0, 100.0)  # 0: default_temperature

    @property
    def kd_temperature(self) -> float:
        """The T clients distill at: ``strategy.temperature``, or for 0 the world's default
        (``default_temperature``; the setting itself stays 0, as a checkpoint records it)."""
        return self.temperature or default_temperature(self.ctx.world.data.text)

    @abstractmethod
    def targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        """Target for each node (None: train on CE alone this round)."""

    @property
    def asks_logits(self) -> bool:
        return (self.wants_logits or self.ctx.measure_agreement) and self.transfer_shape[0] > 0

    def round_config(self) -> dict[str, Any]:
        """Rule-specific entries merged into each message's config."""
        return {
            CFG_ALPHA: float(self.alpha),
            CFG_TEMPERATURE: float(self.kd_temperature),
            CFG_REPLY_LOGITS: self.asks_logits,
        }

    def encode_target(self, target: np.ndarray) -> ArrayRecord:
        return encode_logits(target, self.ctx.codec)

    def reply_shape(self) -> tuple[int, int]:
        return self.transfer_shape

    def configure_round(
        self, server_round: int, node_ids: list[int], config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        config = ConfigRecord({**config, **self.round_config()})
        messages = []
        for node_id, target in self.targets_for(node_ids).items():
            records = {KEY_CONFIG: config}
            if target is not None:
                records[KEY_TARGETS] = self.encode_target(target)
            messages.append(Message(record_dict(records), dst_node_id=node_id, message_type=self.message_type))
        return messages

    def stacked_round(self, config: ConfigRecord) -> tuple[str, ConfigRecord] | None:
        return (self.message_type, ConfigRecord({**config, **self.round_config()})) if self.stacks else None

    def stacked_targets(self, node_ids: list[int]) -> tuple[np.ndarray | None, np.ndarray, int]:
        """``targets_for``'s targets as float32 rows, as the fp32 codec delivers them: a rule's
        stacked result stays one array (no copy), one target for every node is viewed n times.
        The bytes are ``encode_target``'s record's (``array_bytes``), as a Message would carry it."""
        by_node = self.stacked_targets_for(node_ids)
        targets = [by_node[n] for n in node_ids]
        has = np.array([t is not None for t in targets], dtype=bool)
        if not has.any():
            return None, has, 0
        given = [np.asarray(t, dtype=np.float32) for t in targets if t is not None]
        size = array_bytes(record_dict({KEY_TARGETS: self.encode_target(given[0])}))
        if has.all() and all(t is given[0] for t in given):
            return np.broadcast_to(given[0], (len(given), *given[0].shape)), has, size
        zero, each = np.zeros_like(given[0]), iter(given)
        return stack_rows([next(each) if h else zero for h in has]), has, size

    def stacked_targets_for(self, node_ids: list[int]) -> dict[int, np.ndarray | None]:
        """``targets_for`` in a stacked round, whose targets are read while it runs and kept by nothing
        after it (a rule may write them into arrays it reuses)."""
        return self.targets_for(node_ids)

    def check_reply(self, content: RecordDict) -> None:
        if self.wants_logits or KEY_LOGITS in content:
            decode_logits(content.get(KEY_LOGITS, ArrayRecord()), self.reply_shape(), self.sends_probs)

    def measurement_keys(self) -> set[str]:
        return set() if self.wants_logits else {KEY_LOGITS}

    def agreement_logits(self, replies: list[Message]) -> np.ndarray | None:
        mats = [
            decode_logits(m.content[KEY_LOGITS], self.transfer_shape, self.sends_probs)
            for m in replies
            if KEY_LOGITS in m.content and self.reply_shape() == self.transfer_shape
        ]
        return self.agreement_of(stack_rows(mats) if mats else None)

    def agreement_of(self, outputs: np.ndarray | None) -> np.ndarray | None:
        return outputs if outputs is not None and len(outputs) >= 2 else None


class RobustLogitDistillation(LogitDistillation):
    """A logit rule that combines peers' outputs: by their mean, or by a robust ``aggregator``
    of ``strategies.robust`` (``trim``: trimmed mean's share; ``clip_norm``: clip's bound)."""

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 0.0,
        aggregator: str = "mean",
        trim: float = 0.2,
        clip_norm: float = 0.0,
    ):
        super().__init__(alpha, temperature)
        self.aggregator = Aggregator(aggregator, trim, clip_norm)
