"""Each round's time by section (``peerkd.clock``) in the round row: ``time_<section>_s``."""

from __future__ import annotations

from typing import Any

from flwr.serverapp import Grid

from peerkd import clock
from peerkd.round.hook import RoundHook, RoundResult


class TimeBreakdown(RoundHook):
    """Adds ``time_plan_s``, ``time_compute_s``, ... to every round row: the sections' time since
    the previous round's row was made, so a row's ``time_io_s`` is the writing of the previous
    round's rows and checkpoint (round 1's: none; the warm-up is no round's time)."""

    def wrap_grid(self, grid: Grid) -> Grid:
        clock.take()  # called once the warm-up round trip is done
        return grid

    def after_round(self, result: RoundResult) -> dict[str, Any]:
        return {f"time_{name}_s": round(secs, 4) for name, secs in clock.take().items()}
