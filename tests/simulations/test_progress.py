"""Progress bars (simulations.progress): shown on a terminal only, a round's bar only once the
round has lasted its delay, a sweep's bar over its runs; drawn here into a recorded console."""

import io
import time

from rich.console import Console

from peerkd.round.hook import RoundResult
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec
from simulations.config import EngineConf
from simulations.progress import Display, RoundBar, wanted
from simulations.runner import run_engine
from strategies import build_strategy


class Terminal(io.StringIO):
    def isatty(self):
        return True


def recording() -> tuple[Display, io.StringIO]:
    out = Terminal()
    return Display(True, Console(file=out, force_terminal=True, width=100)), out


def test_bars_only_on_a_terminal_and_never_when_quiet():
    assert wanted(False, Terminal()) and not wanted(True, Terminal()) and not wanted(False, io.StringIO())


def test_a_round_bar_appears_after_its_delay_and_follows_the_replies():
    # Prepare
    display, out = recording()
    bar = RoundBar(display, delay=0.05)
    # Execute: a round of 4 replies that lasts past the delay, 2 replies in.
    bar.on_replies(3, 0, 4)
    time.sleep(0.3)
    bar.on_replies(3, 2, 4)
    task = display.progress.tasks[0]
    shown = (task.description, task.total, task.completed)
    bar.after_round(RoundResult(3, [], [], []))
    # Assert: the bar named the round, counted the replies, and is gone with the round.
    assert shown == ("round 3: replies", 4, 2)
    assert display.progress.tasks == [] and "round 3: replies" in out.getvalue()


def test_a_short_round_shows_nothing():
    display, out = recording()
    bar = RoundBar(display, delay=5.0)
    bar.on_replies(1, 0, 10)
    bar.after_round(RoundResult(1, [], [], []))
    assert display.progress.tasks == [] and out.getvalue() == ""


def test_a_real_run_draws_its_rounds(tmp_path):
    # Execute: 2 rounds of peer on digits with a bar shown at once (delay 0).
    display, out = recording()
    spec = RunSpec(world=WorldSpec(dataset="digits", num_clients=3), rounds=2, epochs=1, students=("mlp32",))
    summary = run_engine(
        spec, build_strategy("peer"), tmp_path, {}, EngineConf(device="cpu"), {"num_cpus": 1.0, "num_gpus": 0.0},
        hooks=[RoundBar(display, delay=0.0)],
    )  # fmt: skip
    display.close()
    # Assert: both rounds were drawn, the run finished as usual.
    assert "round 1: replies" in out.getvalue() and "round 2: replies" in out.getvalue()
    assert summary["rounds"] == 2 and summary["accepted_replies"] == 6


def test_a_sweep_draws_its_runs_and_their_rounds(tmp_path):
    from simulations.cli import _compose
    from simulations.sweep import plan, run_sweep

    # Prepare: two one-round runs (local, peer) planned as a compare would.
    overrides = ["data=digits", "num_clients=3", "rounds=1", "rules=[local,peer]", "seeds=[0]", "engine.device=cpu"]
    runs = plan(lambda o: _compose("compare", o), overrides, {}, tmp_path)
    display, out = recording()
    # Execute: the sweep, in this process, drawing into the recorded console.
    result = run_sweep(runs, tmp_path, 1, {"num_cpus": 1.0, "num_gpus": 0.0}, {}, display=display)
    # Assert: both runs finished; a runs bar was drawn, and nothing is left on screen.
    assert result["ran"] == 2 and not result["failed"]
    assert "runs" in out.getvalue() and display.progress.tasks == []
