"""The cap on heavy jobs (clip_icm.service.gate): admission, queue places, failures and waiters that leave.

No timings: threads meet at events, and every wait has a generous timeout that only a bug reaches."""
import threading

import pytest

from clip_icm.errors import InvalidInput
from clip_icm.service import gate

WAIT_S = 10


def _hold(g: gate.Gate, entered: threading.Event, release: threading.Event, places: list | None = None):
    def run():
        with g.slot(on_wait=None if places is None else places.append, poll_s=0.01):
            entered.set()
            release.wait(WAIT_S)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _until(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"never: {what}")


def test_the_gate_admits_at_most_the_cap_and_lets_the_next_in_when_one_leaves():
    g = gate.Gate(2)
    entered = [threading.Event() for _ in range(3)]
    release = [threading.Event() for _ in range(3)]
    threads = [_hold(g, entered[i], release[i]) for i in range(2)]
    for event in entered[:2]:
        assert event.wait(WAIT_S)
    threads.append(_hold(g, entered[2], release[2]))
    _until(lambda: g.waiting() == 1, "the third waits")
    assert g.running() == 2 and not entered[2].is_set()
    release[0].set()
    assert entered[2].wait(WAIT_S)
    assert g.running() == 2
    for event in release:
        event.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert (g.running(), g.waiting()) == (0, 0)


def test_a_waiter_is_told_how_many_wait_before_it_and_moves_up():
    g = gate.Gate(1)
    first, release = threading.Event(), threading.Event()
    holder = _hold(g, first, release)
    assert first.wait(WAIT_S)
    places = [[] for _ in range(3)]
    entered = [threading.Event() for _ in range(3)]
    releases = [threading.Event() for _ in range(3)]
    waiters = []
    for i in range(3):  # one after the other, so that the order of arrival is known
        waiters.append(_hold(g, entered[i], releases[i], places[i]))
        _until(lambda i=i: g.waiting() == i + 1 and places[i], f"waiter {i} queued")
    assert [p[0] for p in places] == [0, 1, 2]
    release.set()
    assert entered[0].wait(WAIT_S) and not entered[1].is_set()
    _until(lambda: places[2][-1] == 1, "the last waiter hears that it moved up")
    for event in releases:
        event.set()
    for thread in [holder, *waiters]:
        thread.join(WAIT_S)
    assert all(event.is_set() for event in entered)
    assert (g.running(), g.waiting()) == (0, 0)


def test_a_failing_job_gives_its_slot_back():
    g = gate.Gate(1)
    with pytest.raises(RuntimeError):
        with g.slot():
            raise RuntimeError("the job failed")
    assert g.running() == 0 and not g.holds()
    with g.slot():  # would wait forever if the slot had leaked
        assert g.running() == 1


def test_a_waiter_that_goes_away_gives_its_place_up_and_the_next_one_goes_in():
    g = gate.Gate(1)
    first, release = threading.Event(), threading.Event()
    holder = _hold(g, first, release)
    assert first.wait(WAIT_S)

    class SessionGone(Exception):  # as Streamlit's StopException, raised where the page draws the place
        pass

    def leave(ahead: int) -> None:
        raise SessionGone

    left = []

    def run():
        try:
            with g.slot(on_wait=leave, poll_s=0.01):
                left.append("entered")  # never: it left while waiting
        except SessionGone:
            left.append("left")
    quitter = threading.Thread(target=run, daemon=True)
    quitter.start()
    quitter.join(WAIT_S)
    assert left == ["left"] and g.waiting() == 0
    after = threading.Event()
    other = _hold(g, after, release)
    release.set()
    assert after.wait(WAIT_S)
    for thread in (holder, other):
        thread.join(WAIT_S)
    assert (g.running(), g.waiting()) == (0, 0)


def test_a_holder_calling_another_heavy_job_does_not_wait_for_itself():
    g = gate.Gate(1)
    with g.slot():
        with g.slot(on_wait=lambda ahead: pytest.fail("waited for its own slot")):
            assert g.running() == 1
        assert g.holds()
    assert not g.holds() and g.running() == 0


@pytest.mark.parametrize("cap", [0, -1, 1.5, "2"])
def test_a_gate_refuses_a_cap_that_is_not_a_positive_whole_number(cap):
    with pytest.raises(InvalidInput, match="at least 1"):
        gate.Gate(cap)


def test_the_cap_comes_from_the_environment_or_half_the_cpus(monkeypatch):
    monkeypatch.setenv(gate.CAP_VAR, "3")
    assert gate.default_cap() == 3
    monkeypatch.delenv(gate.CAP_VAR)
    monkeypatch.setattr(gate.os, "cpu_count", lambda: 8)
    assert gate.default_cap() == 4
    monkeypatch.setattr(gate.os, "cpu_count", lambda: 1)
    assert gate.default_cap() == 1
    for bad in ("many", "0"):
        monkeypatch.setenv(gate.CAP_VAR, bad)
        with pytest.raises(InvalidInput, match=gate.CAP_VAR):
            gate.default_cap()
