"""Serving: the address is checked before anything starts."""
import socket

import pytest

from queues import serve
from queues.local import free_port


def test_a_free_port_can_be_listened_on():
    serve.check_listening("127.0.0.1", free_port())


def test_a_port_in_use_is_named_with_what_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serve.CannotListen) as raised:
            serve.check_listening("127.0.0.1", port)
    message = str(raised.value)
    assert "127.0.0.1:%d" % port in message and "in use" in message and "--port" in message


def test_a_host_that_is_not_an_address_is_named():
    with pytest.raises(serve.CannotListen, match="HOST=no-such-host.invalid is not an address"):
        serve.check_listening("no-such-host.invalid", free_port())


def test_an_address_this_machine_does_not_have_is_named():
    with pytest.raises(serve.CannotListen, match="no such address: check HOST"):
        serve.check_listening("192.0.2.1", free_port())  # TEST-NET-1: never assigned to a host


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
