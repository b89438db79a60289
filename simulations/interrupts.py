"""Stopping a Flower simulation cleanly on Ctrl-C or SIGTERM.

``run_simulation`` runs the ServerApp in a thread and Flower's runtime (Ray) in the main
thread. A KeyboardInterrupt raised wherever the main thread happens to be left the
ServerApp thread running (it then waited ``round_timeout`` per remaining round and wrote a
summary), could hang the process at exit in a Ray call, or let Ray end it with status 1.
Here the first signal only sets the run's stop event: the ServerApp raises
``RunInterrupted`` at its next reply poll, Flower's runtime sees the ServerApp end, stops
its workers and shuts Ray down, and ``run_simulation`` returns; a second signal raises
KeyboardInterrupt at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("peerkd")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def graceful_stop(stop: threading.Event):
    """Within (main thread only): the first SIGINT or SIGTERM sets ``stop``; a second raises
    KeyboardInterrupt. On leaving, a set ``stop`` becomes KeyboardInterrupt for the caller."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: stopping the run (again to force)", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        with _ray_keeps_off_sigterm():
            yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _ray_keeps_off_sigterm():
    """Within: ``ray.init`` (run by Flower inside ``run_simulation``) does not replace our SIGTERM
    handler. Its own kills Ray's processes under the running actors and exits with status 1;
    the driver then aborted in Ray's core worker (status -6, measured). Ray still cleans up:
    Flower calls ``ray.shutdown`` and Ray's atexit hook kills what is left. The hook is
    Ray's private ``ray._private.utils.set_sigterm_handler`` (ray 2.x); without it, nothing changes."""
    try:
        from ray._private import utils
    except ImportError:
        yield
        return
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original
