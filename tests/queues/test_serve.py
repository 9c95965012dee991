"""Serving: the address is checked before anything starts."""
import socket

import pytest

from queues import serve
from queues.local import free_port


def test_a_free_port_can_be_listened_on():
    serve.refuse_unless_listenable("127.0.0.1", free_port())


def test_a_port_in_use_is_named_with_what_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serve.CannotListen) as raised:
            serve.refuse_unless_listenable("127.0.0.1", port)
    message = str(raised.value)
    assert "127.0.0.1:%d" % port in message and "in use" in message and "--port" in message


def test_a_host_that_is_not_an_address_is_named():
    with pytest.raises(serve.CannotListen, match="HOST=no-such-host.invalid is not an address"):
        serve.refuse_unless_listenable("no-such-host.invalid", free_port())


def test_an_address_this_machine_does_not_have_is_named():
    with pytest.raises(serve.CannotListen, match="no such address: check HOST"):
        serve.refuse_unless_listenable("192.0.2.1", free_port())  # TEST-NET-1: never assigned to a host


def test_the_pipeline_stops_once_from_the_first_sigterm_to_the_worker_exit():
    """The stop starts at SIGTERM (so ?wait= requests answer at once) and worker exit waits for that same stop."""
    import signal
    import threading
    release, entered, calls = threading.Event(), threading.Event(), []

    def stop():
        calls.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
    service = serve.Service(lambda: ("app", stop), {"bind": "127.0.0.1:%d" % free_port()})
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert service.load() == "app"
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is not before
        threads = threading.active_count()
        handler(signal.SIGTERM, None)  # as the worker's signal arrives, then the arbiter's forwarded one
        handler(signal.SIGTERM, None)
        assert threading.active_count() == threads  # a handler only sets a flag: it starts nothing it could block on
        assert release.is_set() is False
        first = service.begin_stop()
        assert entered.wait(10)
        assert first is not None and first.is_alive() and calls == ["stopping"]
        release.set()
        service._worker_exit(None, None)
        assert not first.is_alive() and calls == ["stopping"]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_first_interrupt_stops_gracefully_and_a_second_at_once_with_one_line(monkeypatch, capfd):
    """A second Ctrl-C during a stop printed an "Exception ignored in atexit" traceback (gunicorn's quit
    raised SystemExit inside the interpreter's clean-up); now it is one line and an exit that skips it."""
    import os
    import signal
    import threading
    release = threading.Event()
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    service = serve.Service(lambda: ("app", lambda: release.wait(10)), {"bind": "127.0.0.1:%d" % free_port()})
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        service.load()
        interrupt = signal.getsignal(signal.SIGINT)
        interrupt(signal.SIGINT, None)  # the first Ctrl-C: the graceful stop starts, nothing exits
        assert service._asked.is_set() and exits == []
        assert capfd.readouterr().err == ""
        interrupt(signal.SIGINT, None)  # the second, while the stop waits
        assert exits == [0]
        (line,) = capfd.readouterr().err.splitlines()
        assert "interrupted again while stopping: stopping at once" in line and "recovery" in line
        exits.clear()
        signal.getsignal(signal.SIGQUIT)(signal.SIGQUIT, None)  # the arbiter's quick shutdown, after its 2nd SIGINT
        assert exits == [0] and len(capfd.readouterr().err.splitlines()) == 1
    finally:
        release.set()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_sigterm_alone_never_counts_as_an_interrupt(monkeypatch):
    """A terminal's Ctrl-C reaches the worker (SIGINT) and the arbiter, which forwards SIGTERM: one interrupt."""
    import os
    import signal
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    service = serve.Service(lambda: ("app", lambda: None), {"bind": "127.0.0.1:%d" % free_port()})
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        service.load()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert exits == []
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_the_worker_hands_the_gil_round_every_millisecond():
    """Requests share the worker with CPU-bound judging: each GIL hand-over a request waits
    for is cut from CPython's 5 ms to SWITCH_INTERVAL."""
    import signal
    import sys
    service = serve.Service(lambda: ("app", lambda: None), {"bind": "127.0.0.1:%d" % free_port()})
    before, interval = signal.getsignal(signal.SIGTERM), sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default (another test's load may have set it already)
        assert service.load() == "app"
        assert sys.getswitchinterval() == pytest.approx(serve.SWITCH_INTERVAL)
        service._worker_exit(None, None)
    finally:
        signal.signal(signal.SIGTERM, before)
        sys.setswitchinterval(interval)
