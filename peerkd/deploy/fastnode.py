"""``flower-supernode`` with a short idle poll: a patch of two fixed sleeps in flwr 1.39.

flwr 1.39's SuperNode (``start_client_internal``) pulls the SuperLink for messages and, when
there is none, sleeps a fixed 3 s; while a ClientApp works it checks for the reply every
0.5 s. Neither is a setting (the SuperExec's task poll is: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``),
so a node sees a round's message up to 3 s after the server sent it, every round.

``python -m peerkd.deploy.fastnode IDLE_S ARGS...`` runs Flower's own ``flower-supernode ARGS``
with that module's clock replaced for those two waits only: an empty pull waits 0.05 s, then
twice as long after each further empty pull, up to ``IDLE_S`` (back to 0.05 s after each
message), and the reply check waits 0.02 s. An object of a message not on the SuperLink yet is
asked for again after 0.02 s, not 1 s (``peerkd.wire.fastpull``). Every other sleep is Flower's.
The patch checks that the sleeps it replaces are where it expects them and refuses to start
otherwise (another flwr version). Upstream, this would be an environment setting for the idle interval beside
the SuperExec's, or a Fleet API pull that waits on the server for the next message.
"""

from __future__ import annotations

import inspect
import sys
import time

from peerkd.wire.fastpull import quick_pulls

IDLE_SLEEP = 3  # flwr 1.39: start_client_internal's `time.sleep(3)` after an empty pull
REPLY_SLEEP = 0.5  # flwr 1.39: _push_messages' `time.sleep(0.5)` while the ClientApp works
FIRST_IDLE_S = 0.05
REPLY_CHECK_S = 0.02

__all__ = ["IdleClock", "patch_supernode"]


class IdleClock:
    """``time`` for flwr's SuperNode module: its idle and reply sleeps shortened, the rest unchanged."""

    def __init__(self, cap_s: float):
        self.cap_s = cap_s
        self.next_s = FIRST_IDLE_S

    def __getattr__(self, name: str):
        return getattr(time, name)

    def wait_s(self, seconds: float) -> float:
        """How long a ``sleep(seconds)`` of the SuperNode's loop waits."""
        if seconds == IDLE_SLEEP:
            wait, self.next_s = self.next_s, min(self.cap_s, self.next_s * 2)
            return min(wait, self.cap_s)
        if seconds == REPLY_SLEEP:
            return REPLY_CHECK_S
        return seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(self.wait_s(seconds))

    def active(self) -> None:
        """A message was handled: the next idle wait starts short again."""
        self.next_s = FIRST_IDLE_S


def patch_supernode(cap_s: float) -> IdleClock:
    """Patch flwr's SuperNode module in this process; RuntimeError if its sleeps are not where expected."""
    import flwr.supernode.start_client_internal as sci

    loop, push = inspect.getsource(sci.start_client_internal), inspect.getsource(sci._push_messages)
    if f"time.sleep({IDLE_SLEEP})" not in loop or f"time.sleep({REPLY_SLEEP})" not in push or sci.time is not time:
        raise RuntimeError("this flwr's SuperNode does not sleep where peerkd's idle-poll patch expects (flwr 1.39)")
    clock = IdleClock(cap_s)
    original = sci._push_messages

    def push_messages(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            clock.active()

    sci.time, sci._push_messages = clock, push_messages
    quick_pulls(sci)  # a message pulled before its objects reached the SuperLink: asked again soon
    return clock


def main(argv: list[str]) -> None:
    """``IDLE_S ARGS...``: Flower's ``flower-supernode ARGS`` with the idle poll capped at ``IDLE_S``."""
    cap_s = float(argv[0])
    if not 0.0 < cap_s <= IDLE_SLEEP:
        raise SystemExit(f"fastnode: idle poll {argv[0]} s must be in (0, {IDLE_SLEEP}] (Flower's own: {IDLE_SLEEP})")
    patch_supernode(cap_s)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
