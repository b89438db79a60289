"""A round's time by section: exclusive nesting on a clock the test drives, and the rows that carry it."""

import threading

import pytest

from peerkd import clock


@pytest.fixture
def ticks(monkeypatch):
    """A clock that reads what the test sets (``ticks[0]``), and sums that start empty."""
    now = [0.0]
    monkeypatch.setattr(clock.time, "perf_counter", lambda: now[0])
    clock.take()
    return now


def test_nested_sections_count_once_each(ticks):
    # Execute: rule 0-10 s, inside it messages 2-5 s (its 3 s are not the rule's), then io 10-11 s
    with clock.section("rule"):
        ticks[0] = 2.0
        with clock.section("messages"):
            ticks[0] = 5.0
        ticks[0] = 10.0
    with clock.section("io"):
        ticks[0] = 11.0
    # Assert
    out = clock.take()
    assert (out["rule"], out["messages"], out["io"], out["compute"]) == (7.0, 3.0, 1.0, 0.0)
    assert set(clock.SECTIONS) <= set(out)
    assert clock.take()["rule"] == 0.0  # take resets


def test_timed_functions_count_even_when_they_raise(ticks):
    @clock.timed("plan")
    def plan():
        ticks[0] += 4.0
        raise ValueError("bad")

    with pytest.raises(ValueError):
        plan()
    assert clock.take()["plan"] == 4.0


def test_work_recorded_from_another_thread_comes_out_of_take_once(ticks):
    # Execute: a thread records 0.25 s twice under its own name while the round's sections run
    with clock.section("compute"):
        ticks[0] = 1.0
        worker = threading.Thread(target=lambda: [clock.record("checkpoint_cpu", 0.25) for _ in range(2)])
        worker.start()
        worker.join()
    # Assert: beside the sections, not in them; reset by take
    out = clock.take()
    assert (out["checkpoint_cpu"], out["compute"]) == (0.5, 1.0)
    assert "checkpoint_cpu" not in clock.take()
