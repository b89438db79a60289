"""The pieces of fast deployments, without processes: the idle-poll patch's clock, the SuperNode
command lines, the ClientApp's timing lines, and the bench's per-round breakdown."""

from __future__ import annotations

import json
import sys
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from peerkd import deploy as D
from peerkd.clock import process_started_at
from peerkd.deploy import fastnode
from peerkd.deploy.bench import round_breakdown
from peerkd.env import TASK_T0_ENV, TIMING_ENV
from peerkd.errors import ConfigError
from peerkd.student.client_app import record_timing
from peerkd.wire import protocol as P


def test_idle_clock_backs_off_from_50_ms_to_the_cap_and_restarts_after_a_message():
    clock = fastnode.IdleClock(cap_s=1.0)
    # Empty pulls (Flower sleeps 3 s each): 0.05, 0.1, 0.2, 0.4, 0.8, then the cap.
    assert [clock.wait_s(3) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert clock.wait_s(0.5) == fastnode.REPLY_CHECK_S  # the reply check while a ClientApp works
    assert clock.wait_s(1.25) == 1.25  # any other sleep is Flower's own
    clock.active()
    assert clock.wait_s(3) == 0.05
    assert fastnode.IdleClock(cap_s=0.03).wait_s(3) == 0.03  # a cap below the first wait is the wait


def test_patch_replaces_only_the_supernode_modules_clock_and_resets_after_each_push(monkeypatch):
    import flwr.supernode.start_client_internal as sci

    pushed = []
    monkeypatch.setattr(sci, "_push_messages", lambda *a, **k: pushed.append(a))
    monkeypatch.setattr(sci, "time", time)  # restored after the test
    monkeypatch.setattr(sci, "pull_objects", sci.pull_objects)
    monkeypatch.setattr(
        fastnode.inspect,
        "getsource",
        lambda fn: "time.sleep(3)" if fn is sci.start_client_internal else "time.sleep(0.5)",
    )
    clock = fastnode.patch_supernode(2.0)
    assert sci.time is clock and sci.time.monotonic is time.monotonic
    clock.wait_s(3), clock.wait_s(3)
    sci._push_messages("state")
    assert pushed == [("state",)] and clock.next_s == fastnode.FIRST_IDLE_S


def test_patch_checks_the_real_flwr_source_and_refuses_code_it_does_not_know(monkeypatch):
    import flwr.supernode.start_client_internal as sci

    monkeypatch.setattr(sci, "time", time)
    monkeypatch.setattr(sci, "_push_messages", sci._push_messages)
    monkeypatch.setattr(sci, "pull_objects", sci.pull_objects)
    fastnode.patch_supernode(1.0)  # the installed flwr 1.39: the sleeps are where the patch expects
    assert isinstance(sci.time, fastnode.IdleClock) and sci.pull_objects.keywords["initial_backoff"] == 0.02
    monkeypatch.setattr(sci, "time", time)
    monkeypatch.setattr(fastnode, "IDLE_SLEEP", 7)
    with pytest.raises(RuntimeError, match="does not sleep where"):
        fastnode.patch_supernode(1.0)
    with pytest.raises(SystemExit, match=r"must be in \(0, 7\]"):
        fastnode.main(["9", "--insecure"])


def test_quick_pulls_ask_again_after_20_ms_once_and_only_for_flowers_own_puller(monkeypatch):
    import types

    from flwr.supercore.inflatable import inflatable_utils

    from peerkd.env import QUICK_PULLS_ENV
    from peerkd.wire.fastpull import OBJECT_RETRY_CAP_S, OBJECT_RETRY_S, quick_pulls, retry_settings

    module = types.ModuleType("receiver")
    module.pull_objects = inflatable_utils.pull_objects
    monkeypatch.setenv(QUICK_PULLS_ENV, "0")  # the baseline: Flower's 1 s
    quick_pulls(module)
    assert module.pull_objects is inflatable_utils.pull_objects and retry_settings() == {}
    monkeypatch.delenv(QUICK_PULLS_ENV)
    quick_pulls(module)
    quick_pulls(module)  # again: the same single wrap
    assert module.pull_objects.func is inflatable_utils.pull_objects
    assert module.pull_objects.keywords == {"initial_backoff": OBJECT_RETRY_S, "backoff_cap": OBJECT_RETRY_CAP_S}
    with pytest.raises(RuntimeError, match="does not pull objects with Flower's pull_objects"):
        quick_pulls(types.ModuleType("elsewhere"))


def test_supernode_command_lines_per_setup(tmp_path):
    cfg = tmp_path / "n.toml"
    fresh = D.supernode_args("10.0.0.1:9092", cfg, 9094, None, None, "fresh")
    assert fresh[0].endswith("flower-supernode") and "--isolation" not in fresh
    warm = D.supernode_args("10.0.0.1:9092", cfg, 9094, None, None, "warm", 1.0)
    assert warm[:4] == [sys.executable, "-m", "peerkd.deploy.fastnode", "1"]
    assert warm[warm.index("--isolation") + 1] == "process" and warm[warm.index("--port") + 1] == "9094"
    app = D.clientapp_args(9094, 4321)
    assert app[app.index("--runtime-api-address") + 1] == "127.0.0.1:9094" and app[-1] == "4321"
    with pytest.raises(ConfigError, match="clientapp"):
        D.supernode_args("h:1", cfg, 1, None, None, "lukewarm")
    with pytest.raises(ConfigError, match="idle-poll"):
        D.supernode_args("h:1", cfg, 1, None, None, "warm", 4.0)
    assert set(D.SETUPS) == {"flower", "cached", "warm", "warm-fast"} and D.DEFAULT_SETUP == "warm-fast"


def _message(rnd: int) -> tuple[Message, Context]:
    content = RecordDict({P.KEY_CONFIG: ConfigRecord({P.CFG_ROUND: rnd})})
    msg = Message(content, dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={P.NODE_PARTITION_ID: 3}, state=RecordDict(), run_config={})
    return msg, context


def test_timing_lines_measure_the_handler_and_the_start_up_it_waited_for(tmp_path, monkeypatch, flower_identity):
    log = tmp_path / "timing.jsonl"
    monkeypatch.setenv(TIMING_ENV, str(log))
    monkeypatch.setenv(TASK_T0_ENV, repr(time.time() - 2.0))  # a warm ClientApp took the task 2 s ago
    msg, context = _message(4)

    def handler(m, c):
        time.sleep(0.05)
        return m

    assert record_timing(msg, context, handler) is msg
    monkeypatch.delenv(TASK_T0_ENV)  # a fresh process: start-up counts from its start, first message only
    record_timing(msg, context, handler)
    warm, fresh = (json.loads(x) for x in log.read_text().splitlines())
    assert warm["node"] == 3 and warm["round"] == 4
    assert 2.0 <= warm["startup_s"] < 3.0 and 0.05 <= warm["handler_s"] < 1.0
    assert fresh["startup_s"] == 0.0 or fresh["startup_s"] == pytest.approx(fresh["entered"] - process_started_at())


def test_no_timing_line_without_the_environment(tmp_path, monkeypatch, flower_identity):
    monkeypatch.delenv(TIMING_ENV, raising=False)
    msg, context = _message(1)
    assert record_timing(msg, context, lambda m, c: "reply") == "reply"
    assert list(tmp_path.iterdir()) == []


def test_round_breakdown_takes_the_slowest_node_and_leaves_the_rest_to_waiting():
    rounds = [{"round": 1, "round_s": 3.0}, {"round": 2, "round_s": 1.0}]
    clients = [
        {"round": 1, "train_s": 0.4},
        {"round": 1, "train_s": 0.6},
        {"round": 2, "train_s": 0.5},
        {"round": 2, "train_s": None},
    ]
    timing = [
        {"round": 1, "startup_s": 1.5, "handler_s": 0.7},  # node A: 2.2 s busy
        {"round": 1, "startup_s": 0.2, "handler_s": 0.9},  # node B: 1.1 s busy
        {"round": 2, "startup_s": 0.0, "handler_s": 0.6},
    ]
    got = round_breakdown(rounds, clients, timing)
    assert got[0] == {
        "round": 1,
        "wall_s": 3.0,
        "train_s": 0.6,
        "handler_s": 0.9,
        "startup_s": 1.5,
        "waiting_s": pytest.approx(0.8),
    }
    assert got[1]["train_s"] == 0.5 and got[1]["waiting_s"] == pytest.approx(0.4)
    assert round_breakdown([{"round": 3, "round_s": 2.0}], [], [])[0]["waiting_s"] == 2.0
