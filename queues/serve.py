"""Serving the app with gunicorn: one process, HTTP threads, the pipeline beside them.

gunicorn forks its worker from the arbiter, and threads do not survive a
fork, so the service is built inside the worker by ``build`` (a callable
from ``server``), which returns the Flask app and a ``stop(timeout)``
function. The pipeline starts stopping as soon as the worker is told to
stop (SIGTERM), so requests waiting in ``?wait=`` are answered at once
while gunicorn lets the requests in progress finish; the worker waits for
that stop as it exits. SIGINT is handled like SIGTERM: a graceful stop.
A second interrupt (Ctrl-C again, or the arbiter's SIGQUIT after one)
ends the worker at once with one line, leaving its work to recovery.
The worker also hands the GIL round every millisecond rather than every
five (see SWITCH_INTERVAL), so judging delays requests less.
"""
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

log = logging.getLogger(__name__)
#: Seconds a thread may hold the GIL while another waits for it (CPython's default is 0.005).
#: The HTTP threads share the process with CPU-bound judging; each request takes the GIL
#: back after every socket call, and behind a judge each of those waits up to this long.
SWITCH_INTERVAL = 0.001


class CannotListen(Exception):
    """The address cannot be listened on; the message says why and what to change."""


def refuse_unless_listenable(host, port):
    """Raise CannotListen unless ``host:port`` can be bound right now.

    Run before anything starts, so a port in use or a wrong HOST is one
    line at start instead of gunicorn retrying and failing after the
    database was started.
    """
    where = "%s:%d" % (host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise CannotListen("cannot listen on %s: HOST=%s is not an address (%s)" % (where, host, exc.strerror)) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            hint = {errno.EADDRINUSE: "the port is in use (is another server running?): choose another with "
                                      "--port or PORT",
                    errno.EACCES: "permission denied: ports below 1024 need privileges; choose another with "
                                  "--port or PORT",
                    errno.EADDRNOTAVAIL: "this machine has no such address: check HOST"}.get(exc.errno, exc.strerror)
            raise CannotListen("cannot listen on %s: %s" % (where, hint)) from None


class GracefulArbiter(Arbiter):
    """An arbiter whose SIGINT is the same graceful stop as SIGTERM."""

    def handle_int(self):
        self.handle_term()


#: Written (not logged: a signal handler must not wait for logging's lock) when a second interrupt ends a stop.
STOPPED_AT_ONCE = ("%s WARNING MainThread queues.serve: interrupted again while stopping: stopping at once; work in "
                   "progress stays unfinished and its leases go to recovery (a restart on this port takes them back "
                   "at once, any other server once they expire)\n")


class Service(BaseApplication):
    """A gunicorn application whose worker builds and owns the whole service."""

    def __init__(self, build, options):
        self.build = build
        self.options = options
        self._asked = threading.Event()
        self._interrupted = False
        self._stopping = None
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._worker_exit)

    def load(self):
        """Build the service in the worker; its SIGTERM now also starts the pipeline's stop.

        The stop runs on a thread started here, which waits for the flag the
        signal handler sets: a handler that started a thread itself could be
        interrupted by the next signal (the arbiter forwards one while the
        first is handled) and deadlock on its own lock.
        """
        app, stop = self.build()
        sys.setswitchinterval(SWITCH_INTERVAL)  # in the worker: the requests' share of the GIL
        self._stopping = threading.Thread(target=self._stop_when_asked, args=(stop,), name="stopping", daemon=True)
        self._stopping.start()
        previous = signal.getsignal(signal.SIGTERM)  # gunicorn's: stop taking requests

        def on_term(signum, frame):
            self._asked.set()
            if callable(previous):
                previous(signum, frame)

        def on_interrupt(signum, frame):
            """The first Ctrl-C stops gracefully, like SIGTERM; another one (or SIGQUIT) stops now."""
            if signum == signal.SIGQUIT or self._interrupted:
                self.stop_at_once()
            self._interrupted = True
            on_term(signum, frame)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_interrupt)
        signal.signal(signal.SIGQUIT, on_interrupt)
        return app

    def stop_at_once(self):
        """One line, then exit without the interpreter's clean-up.

        The clean-up would join threads still waiting on the database or a
        request; interrupted there, it printed "Exception ignored in atexit"
        tracebacks. Nothing is lost: every piece of work is a lease in the
        database, which recovery takes back.
        """
        os.write(sys.stderr.fileno(), (STOPPED_AT_ONCE % time.strftime("%Y-%m-%d %H:%M:%S")).encode())
        os._exit(0)

    def _stop_when_asked(self, stop):
        self._asked.wait()
        stop()

    def begin_stop(self):
        """Ask for the stop (once, however often asked); returns the thread that runs it."""
        self._asked.set()
        return self._stopping

    def _worker_exit(self, server, worker):
        stopping = self.begin_stop()
        if stopping is not None:
            stopping.join()

    def run(self):
        GracefulArbiter(self).run()


def options(config):
    """gunicorn settings: ``config.workers`` processes with ``config.http_threads`` threads each.

    Each worker process builds a whole service (queues, threads, leases of
    its own); MongoDB's leases decide which of them judges what, so any
    number may share one database.
    """
    return {
        "bind": "%s:%d" % (config.host, config.port),
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": config.http_threads,
        "timeout": 120,
        "graceful_timeout": int(config.stop_timeout) + 5,
        "keepalive": 5,
        "backlog": 2048,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "submission-criteria",
        "control_socket_disable": True,
    }
