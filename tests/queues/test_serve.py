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
