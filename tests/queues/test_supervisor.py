"""Supervisor: restarts loops that die, reports liveness, stops everything within a deadline."""
import threading
import time

import pytest

from queues.supervisor import Supervisor

#: Long enough that the watcher never runs ``check`` on its own during a test.
NEVER = 3600


def wait_for(condition, timeout=5.0):
    """Poll ``condition`` until true or the deadline; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.005)
    return True


@pytest.fixture
def thread_errors(monkeypatch):
    """Collect exceptions that end threads (instead of printing them)."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


def restarts(metrics, name):
    return metrics.registry.get_sample_value("criteria_thread_restarts_total", {"thread": name}) or 0.0


def test_check_restarts_a_loop_that_raised(pipeline, metrics, thread_errors):
    stop = pipeline.stop
    supervisor = Supervisor(stop, metrics, check_interval=NEVER)
    runs = []
    second_run = threading.Event()

    def flaky():
        runs.append(threading.current_thread())
        if len(runs) == 1:
            raise RuntimeError("boom")
        second_run.set()
        stop.wait()

    supervisor.add("flaky", flaky)
    supervisor.add("steady", stop.wait)
    supervisor.start()
    try:
        assert wait_for(lambda: not supervisor.alive()["flaky"])
        assert [str(e) for e in thread_errors] == ["boom"]
        assert supervisor.alive() == {"flaky": False, "steady": True, "supervisor": True}
        assert restarts(metrics, "flaky") == 0

        assert supervisor.check() == ["flaky"]
        assert second_run.wait(5)
        assert len(runs) == 2 and runs[0] is not runs[1]
        assert supervisor.alive() == {"flaky": True, "steady": True, "supervisor": True}
        assert restarts(metrics, "flaky") == 1
        assert restarts(metrics, "steady") == 0
        # nothing dead: nothing restarted, nothing counted
        assert supervisor.check() == []
        assert restarts(metrics, "flaky") == 1
    finally:
        assert supervisor.stop(5) == []
    assert supervisor.alive() == {"flaky": False, "steady": False, "supervisor": False}


def test_the_watcher_restarts_dead_loops_by_itself(pipeline, metrics, thread_errors):
    stop = pipeline.stop
    supervisor = Supervisor(stop, metrics, check_interval=0.01)
    runs = []
    third_run = threading.Event()

    def dies_twice():
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError("boom %d" % len(runs))
        third_run.set()
        stop.wait()

    supervisor.add("fragile", dies_twice)
    supervisor.start()
    try:
        assert third_run.wait(10)
        assert restarts(metrics, "fragile") == 2
    finally:
        assert supervisor.stop(5) == []


def test_a_loop_that_returns_while_running_is_restarted_too(pipeline, metrics):
    stop = pipeline.stop
    supervisor = Supervisor(stop, metrics, check_interval=NEVER)
    calls = []
    supervisor.add("quits", lambda: calls.append(1))
    supervisor.start()
    try:
        assert wait_for(lambda: not supervisor.alive()["quits"])
        assert supervisor.check() == ["quits"]
        assert wait_for(lambda: len(calls) == 2)
    finally:
        supervisor.stop(5)


def test_nothing_is_restarted_once_stopping(pipeline, metrics):
    stop = pipeline.stop
    supervisor = Supervisor(stop, metrics, check_interval=NEVER)
    supervisor.add("worker", stop.wait)
    supervisor.start()
    assert supervisor.stop(5) == []
    assert supervisor.check() == []
    assert supervisor.alive()["worker"] is False
    assert restarts(metrics, "worker") == 0


def test_alive_before_start_reports_the_watcher_down(pipeline):
    supervisor = Supervisor(pipeline.stop)
    supervisor.add("worker", pipeline.stop.wait)
    assert supervisor.alive() == {"supervisor": False}


def test_stop_returns_the_loops_that_ignore_it(pipeline, metrics):
    stop = pipeline.stop
    supervisor = Supervisor(stop, metrics, check_interval=NEVER)
    release = threading.Event()
    supervisor.add("polite", stop.wait)
    supervisor.add("stubborn", release.wait)  # does not look at the stop flag
    supervisor.start()
    assert wait_for(lambda: all(supervisor.alive().values()))
    try:
        assert supervisor.stop(0.2) == ["stubborn"]
        assert stop.is_set()
        status = supervisor.alive()
        assert status["polite"] is False and status["supervisor"] is False
        assert status["stubborn"] is True
    finally:
        release.set()
    assert wait_for(lambda: not supervisor.alive()["stubborn"])


def test_stop_timeout_bounds_the_whole_stop_not_each_thread(pipeline):
    stop = pipeline.stop
    supervisor = Supervisor(stop, check_interval=NEVER)
    release = threading.Event()
    names = ["stubborn%d" % i for i in range(4)]
    for name in names:
        supervisor.add(name, release.wait)
    supervisor.start()
    try:
        started = time.monotonic()
        busy = supervisor.stop(0.3)
        elapsed = time.monotonic() - started
        assert busy == names
        # one shared deadline: well under the 4 x 0.3 s that per-thread timeouts would take
        assert 0.3 <= elapsed < 0.9
    finally:
        release.set()
    assert wait_for(lambda: not any(supervisor.alive().values()))


def test_stop_without_start(pipeline):
    supervisor = Supervisor(pipeline.stop)
    supervisor.add("worker", pipeline.stop.wait)
    assert supervisor.stop(1) == []
    assert pipeline.stop.is_set()
