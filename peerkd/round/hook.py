"""The one protocol through which the round's extras plug into the loop.

A ``RoundHook`` overrides only the methods it needs; the others do nothing. The loop calls, in
order: ``setup`` (once a run starts or resumes), ``message_config`` (entries every message
carries), ``wrap_grid`` (after the warm-up round trip), then per round ``select``,
``on_replies`` (as replies arrive: 0 of n when the round's messages go out) and
``after_round``; after the last round ``finish``, then ``summary``. ``state`` / ``restore``
carry what a hook counts across a checkpoint. Hooks take plain values at construction (the
way Flower chains ClientApp mods and pfl-research calls training-process callbacks), never
the run's settings object.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from flwr.app import Message
from flwr.serverapp import Grid

from peerkd.round.contract import ExchangeRule
from peerkd.round.stacked import StackedReplies


@dataclass(frozen=True)
class RoundResult:
    """One finished round, as ``after_round`` sees it."""

    round: int
    messages: list[Message]  # what the rule sent
    replies: list[Message]  # the accepted replies, in the order of ``client_rows``
    client_rows: list[dict[str, Any]]  # one row per accepted client
    # A stacked round's accepted replies as arrays (``peerkd.round.stacked``); then no Messages above.
    stacked: StackedReplies | None = None


@dataclass(frozen=True)
class RunRecord:
    """What the loop knows of the whole run at its end, as ``finish`` and ``summary`` see it."""

    rounds: int
    latest: dict[int, dict[str, Any]]  # each client's last accepted row
    replies: Counter  # accepted replies per client
    run_metrics: dict[str, Any]


class RoundHook:
    """An extra of the round loop; every method is optional."""

    # True: ``after_round`` reads the round's Messages, so the loop never sends the round stacked.
    reads_messages: ClassVar[bool] = False

    def setup(self, rule: ExchangeRule, fresh: bool) -> dict[str, Any]:
        """Called once the rule is known (``fresh``: a new run, not a resumed one); returns run
        metrics for the setup row (a fresh run's only)."""
        return {}

    def message_config(self, run_metrics: dict[str, Any]) -> dict[str, Any]:
        """Config entries every message of the run carries."""
        return {}

    def wrap_grid(self, grid: Grid) -> Grid:
        """The grid the rounds go through (after the warm-up)."""
        return grid

    def select(self, server_round: int, node_ids: list[int], client_of: dict[int, int]) -> list[int]:
        """The nodes of ``server_round`` among ``node_ids`` (``client_of``: node -> client, as known)."""
        return node_ids

    def on_replies(self, server_round: int, received: int, expected: int) -> None:
        """``received`` of the round's ``expected`` replies are in (0 when its messages go out)."""

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        """Fields for the round's row (they replace the loop's own of the same name)."""
        return {}

    def finish(self, grid: Grid, config: dict[str, Any], stop: threading.Event | None) -> list[dict[str, Any]]:
        """Client rows measured after the last round (e.g. every client evaluated once more)."""
        return []

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        """Fields for the summary (they replace the loop's own of the same name)."""
        return {}

    def state(self) -> dict[str, Any]:
        """What this hook counted so far, as plain data (saved with each checkpoint)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``, on resume."""


class SummaryFields(RoundHook):
    """Adds ``fields()`` to the summary: how the engine ran (name, device, peak memory, workers)."""

    def __init__(self, fields: Callable[[], dict[str, Any]]):
        self.fields = fields

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        return self.fields()


def _keys(hooks: Sequence[RoundHook]) -> list[str]:
    """Each hook's name in a checkpoint: its class, with ``#k`` for the k-th repeat of a class."""
    seen: Counter = Counter()
    keys = []
    for hook in hooks:
        name = type(hook).__name__
        keys.append(name if not seen[name] else f"{name}#{seen[name]}")
        seen[name] += 1
    return keys


def hook_states(hooks: Sequence[RoundHook]) -> dict[str, dict[str, Any]]:
    """The non-empty ``state()`` of each hook, by its name (what a checkpoint keeps)."""
    return {key: state for key, hook in zip(_keys(hooks), hooks) if (state := hook.state())}


def restore_hooks(hooks: Sequence[RoundHook], states: dict[str, dict[str, Any]]) -> None:
    """Inverse of ``hook_states``: each hook gets back the state saved under its name (a hook
    the checkpoint does not name keeps its fresh state)."""
    for key, hook in zip(_keys(hooks), hooks):
        if key in states:
            hook.restore(states[key])
