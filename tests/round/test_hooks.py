"""The round loop's hook protocol and the one engine entry point, on a real batched grid
(tiny digits world, seconds): every method is called, in the documented order, with plain
values; what a hook returns lands in the rows and the summary; its state survives a resume."""

from __future__ import annotations

import json

import pytest

from peerkd.batched import BatchedEngine, BatchedGrid
from peerkd.hooks.standard import standard_hooks
from peerkd.round.hook import RoundHook, SummaryFields
from peerkd.round.loop import run_federation
from peerkd.round.results import METRICS_FILE, SUMMARY_FILE, RunWriter, read_jsonl
from peerkd.round.run import run_on
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec
from strategies import build_strategy

SPEC = RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=0), rounds=2, epochs=1, students=("mlp32",))


class Recorder(RoundHook):
    """Records each call; keeps only even-numbered nodes in round 2; counts rounds as its state."""

    def __init__(self):
        self.calls, self.rounds = [], 0

    def setup(self, rule, fresh):
        self.calls.append(("setup", rule.name, fresh))
        return {"recorder_setup": 1}

    def message_config(self, run_metrics):
        self.calls.append(("message_config", run_metrics["recorder_setup"]))
        return {"recorder-flag": True}

    def wrap_grid(self, grid):
        self.calls.append(("wrap_grid", type(grid).__name__))
        return grid

    def select(self, server_round, node_ids, client_of):
        self.calls.append(("select", server_round, len(node_ids), len(client_of)))
        return node_ids if server_round == 1 else [n for n in node_ids if client_of.get(n) in (0, 2)]

    def after_round(self, result):
        self.rounds += 1
        sent = [bool(m.content["config"]["recorder-flag"]) for m in result.messages]
        self.calls.append(("after_round", result.round, len(result.client_rows), all(sent)))
        return {"recorded_rounds": self.rounds}

    def finish(self, grid, config, stop):
        self.calls.append(("finish", config["server-round"]))
        return []

    def summary(self, record, per_client):
        self.calls.append(("summary", record.rounds, len(per_client)))
        return {"recorded_rounds": self.rounds}

    def state(self):
        return {"rounds": self.rounds}

    def restore(self, state):
        self.rounds = state["rounds"]


def test_the_loop_calls_every_hook_method_in_order(tmp_path):
    # Execute: peer, 3 clients, 2 rounds, with the recorder after the standard hooks.
    hook = Recorder()
    grid = BatchedGrid(3, device="cpu")
    summary = run_federation(grid, SPEC, build_strategy("peer"), RunWriter(tmp_path, {}), [*standard_hooks(SPEC), hook])
    # Assert: the order of docs/design.md; round 2 went to clients 0 and 2 only.
    assert hook.calls == [
        ("setup", "peer", True),
        ("message_config", 1),
        ("wrap_grid", "BatchedGrid"),
        ("select", 1, 3, 3),
        ("after_round", 1, 3, True),
        ("select", 2, 3, 3),
        ("after_round", 2, 2, True),
        ("finish", 2),
        ("summary", 2, 3),
    ]
    rows = [r for r in read_jsonl(tmp_path / METRICS_FILE) if r["type"] == "round"]
    assert [r["recorded_rounds"] for r in rows] == [1, 2]
    assert [r["replies"] for r in rows] == [3, 2]
    assert summary["recorded_rounds"] == 2 and summary["recorder_setup"] == 1
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["recorded_rounds"] == 2


class StopInRound2(RoundHook):
    def after_round(self, result):
        if result.round == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the batched engine: the process's loop stops
        return {}


def test_a_hooks_state_survives_a_resume(tmp_path):
    # Prepare: a run stopped in round 2 (its checkpoint holds round 1 and the hook's state then).
    engine = BatchedEngine(3, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_on(engine, SPEC, build_strategy("peer"), tmp_path, {}, hooks=[Recorder(), StopInRound2()])
    # Execute: resume with a fresh recorder.
    hook = Recorder()
    summary = run_on(engine, SPEC, build_strategy("peer"), tmp_path, {}, resume=True, hooks=[hook])
    # Assert: set up again (not fresh), one more round counted on top of the restored one.
    assert hook.calls[0] == ("setup", "peer", False)
    assert [c[0] for c in hook.calls].count("after_round") == 1
    assert hook.rounds == 2 and summary["recorded_rounds"] == 2


def test_run_on_adds_the_engines_summary_fields_last(tmp_path):
    # Execute: the batched engine with a hook that claims the engine field too.
    summary = run_on(
        BatchedEngine(3, device="cpu"),
        SPEC,
        build_strategy("local"),
        tmp_path,
        {"rule": "local"},
        hooks=[SummaryFields(lambda: {"engine": "mine", "extra": 7})],
    )
    # Assert: the engine's own fields win; the caller's extra stays; the standard hooks ran.
    assert summary["engine"] == "batched" and summary["extra"] == 7
    assert summary["clients_per_node"] == {} and summary["clients_evaluated"] == 3
    assert (tmp_path / SUMMARY_FILE).is_file()


def test_hook_states_are_keyed_by_class_and_repeat():
    # Prepare: two recorders that counted 1 and 2 rounds, and a hook with no state.
    from peerkd.hooks.placement import PlacementHook
    from peerkd.round.hook import hook_states, restore_hooks

    first, second = Recorder(), Recorder()
    first.rounds, second.rounds = 1, 2
    # Execute
    states = hook_states([PlacementHook(), first, second])
    fresh = [PlacementHook(), Recorder(), Recorder()]
    restore_hooks(fresh, states)
    # Assert: empty states are left out; each repeat gets its own back.
    assert states == {"Recorder": {"rounds": 1}, "Recorder#1": {"rounds": 2}}
    assert [h.rounds for h in fresh[1:]] == [1, 2]
