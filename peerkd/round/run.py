"""The one entry point for every engine: results writer, checkpoint, hooks and summary.

An engine (Flower's simulation, the batched engine, the batched engine sharded over Ray)
differs in how it serves a ``Grid`` (``Engine.serve``), which checkpoint it keeps and which
fields it adds to the summary; ``run_on`` does the rest the same way for all of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from peerkd.errors import RunInterrupted
from peerkd.hooks.standard import standard_hooks
from peerkd.round.checkpoint import Checkpoint
from peerkd.round.contract import ExchangeRule
from peerkd.round.hook import RoundHook
from peerkd.round.loop import run_federation
from peerkd.round.results import SUMMARY_FILE, RunWriter, hold_run_dir, is_write_error, write_error
from peerkd.round.spec import RunSpec

log = logging.getLogger("peerkd")


class Engine(Protocol):
    """What ``run_on`` needs of an engine."""

    def serve(self, main: Callable[[Grid], None], stop: threading.Event) -> None:
        """Call ``main`` with the engine's grid, and return once it has returned."""

    def checkpoint(self, out_dir: Path, grid: Grid) -> Checkpoint | None:
        """The run's checkpoint in ``out_dir`` (None: this engine keeps none)."""

    def hooks(self, grid: Grid) -> list[RoundHook]:
        """The engine's own hooks (e.g. its summary fields: name, device, peak memory)."""


def run_on(
    engine: Engine,
    spec: RunSpec,
    rule: ExchangeRule,
    out_dir: str | os.PathLike,
    config: dict[str, Any],
    resume: bool = False,
    hooks: Sequence[RoundHook] = (),
) -> dict[str, Any]:
    """Run ``rule`` on ``spec``'s world in ``engine``; write ``out_dir`` and return the summary.

    The run gets ``standard_hooks(spec)``, then ``hooks``, then the engine's. With ``resume``,
    a checkpoint in ``out_dir`` is gone on from (else it is removed first). A stop request
    (``RunInterrupted``) ends the run without a summary; then this raises ``RuntimeError``
    unless the engine turned the stop into its own exception first.

    Raises
    ------
    ConfigError
        Another run holds ``out_dir`` (before the engine starts), or results cannot be written
        there (a full disk, a read-only directory, a link planted for a file the run writes).
    """
    out, stop, done = Path(out_dir), threading.Event(), {}

    def main(grid: Grid) -> None:
        writer = None
        try:
            checkpoint = engine.checkpoint(out, grid)
            if checkpoint is not None and not resume:
                checkpoint.clear()
            writer = RunWriter(out, config, resume=checkpoint is not None and checkpoint.exists())
            all_hooks = [*standard_hooks(spec), *hooks, *engine.hooks(grid)]
            done["summary"] = run_federation(grid, spec, rule, writer, all_hooks, checkpoint, stop)
        except RunInterrupted as exc:  # not an error: the engine set ``stop`` and knows
            log.warning("[%s] run stopped (%s); no summary written", rule.name, exc)
        except OSError as exc:  # a full disk, a read-only directory: one line, not a traceback
            if not is_write_error(out, exc):
                raise
            raise write_error(out, exc) from None
        finally:
            if writer is not None:
                writer.close()

    with hold_run_dir(out):  # before the engine starts: a second run on ``out_dir`` stops here
        engine.serve(main, stop)
    if "summary" not in done:
        raise RuntimeError(f"the run ended without writing {out / SUMMARY_FILE}; see the log above")
    return done["summary"]


def server_app(main: Callable[[Grid], None]) -> ServerApp:
    """A Flower ServerApp whose main calls ``main(grid)``."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid)

    return app
