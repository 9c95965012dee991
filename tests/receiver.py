"""A webhook receiver on loopback, as the tournament backend would run one, for the tests.

It verifies every request with the ``standardwebhooks`` library from PyPI,
as a receiver would (not with the server's own signing code), and records
it. What it answers is chosen per request by ``plan(request)``: ``"ok"``
(204), ``"fail"`` (500), or ``"hang"`` (it reads the request, then answers
nothing until ``release()`` or the end). Tests wait on what it has received
(:meth:`Receiver.wait_until`), never on time.
"""
import dataclasses
import http.server
import json
import socket
import threading
import time

import standardwebhooks

OK, FAIL, HANG = "ok", "fail", "hang"
#: A hanging answer never waits longer than this, so a test that forgets to release ends anyway.
HANG_CAP = 120.0

#: How often the receiver's server looks whether it is asked to stop.
STOP_POLL = 0.01


@dataclasses.dataclass
class Received:
    """One request as it arrived: its headers, body, what the library said of it, and what was answered."""

    number: int
    path: str
    headers: dict
    body: bytes
    verified: bool
    problem: str
    answer: str = None

    @property
    def event_id(self):
        return self.headers.get("webhook-id")

    @property
    def payload(self):
        return json.loads(self.body)


class Receiver:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 with a free port; ``url`` is where to send."""

    def __init__(self, secret, plan=None):
        self.webhook = standardwebhooks.Webhook(secret)
        self.plan = plan or (lambda received: OK)
        self.received = []
        self.changed = threading.Condition()
        self.released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.handle(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/hooks/criteria?token=query-is-kept" % self.server.server_address[1]
        # serve_forever looks at shutdown() every poll_interval (0.5 s by default): a stop that waits
        # half a second, once per receiver, was most of the webhook crash test's time
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": STOP_POLL},
                                       name="receiver", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request):
        body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            self.webhook.verify(body, headers)
            verified, problem = True, None
        except Exception as exc:  # the library's verdict, whatever it raises
            verified, problem = False, "%s: %s" % (type(exc).__name__, exc)
        with self.changed:
            received = Received(len(self.received), request.path, headers, body, verified, problem)
            received.answer = self.plan(received)
            self.received.append(received)
            self.changed.notify_all()
        if received.answer == HANG:
            self.released.wait(HANG_CAP)
            request.close_connection = True
            return
        status = 204 if received.answer == OK else 500
        request.send_response(status)
        request.send_header("Content-Length", "0" if status == 204 else "14")
        request.end_headers()
        if status != 204:
            request.wfile.write(b"receiver fails")

    def release(self):
        """Let every hanging request end (without an answer)."""
        self.released.set()

    def wait_until(self, predicate, timeout, what):
        """Wait until ``predicate(received)`` holds for the requests so far; returns its value."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = predicate(list(self.received))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the receiver waited %.0fs for %s; it has %d requests: %s" % (
                        timeout, what, len(self.received), [(r.event_id, r.answer) for r in self.received][-20:]))
                self.changed.wait(left)

    def by_event(self):
        """``{webhook-id: [requests]}`` in arrival order."""
        found = {}
        for received in list(self.received):
            found.setdefault(received.event_id, []).append(received)
        return found


class Refusing:
    """A loopback port that refuses every connection: bound, never listening, for as long as it is held."""

    def __enter__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/hooks" % self.socket.getsockname()[1]
        return self

    def __exit__(self, *exc_info):
        self.socket.close()
