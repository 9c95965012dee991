"""Serving the app with gunicorn: one process, HTTP threads, the pipeline beside them.

gunicorn forks its worker from the arbiter, and threads do not survive a
fork, so the service is built inside the worker by ``build`` (a callable
from ``server``), which returns the Flask app and a ``stop(timeout)``
function. The worker calls ``stop`` as it exits, after the HTTP side has
stopped taking requests. SIGINT is handled like SIGTERM: a graceful stop.
"""
import errno
import logging
import socket

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

log = logging.getLogger(__name__)


class CannotListen(Exception):
    """The address cannot be listened on; the message says why and what to change."""


def check_listening(host, port):
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


class Service(BaseApplication):
    """A gunicorn application whose worker builds and owns the whole service."""

    def __init__(self, build, options):
        self.build = build
        self.options = options
        self._stop = None
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._worker_exit)

    def load(self):
        app, self._stop = self.build()
        return app

    def _worker_exit(self, server, worker):
        if self._stop is not None:
            self._stop()

    def run(self):
        GracefulArbiter(self).run()


def options(config):
    """gunicorn settings for one process with ``config.http_threads`` threads."""
    return {
        "bind": "%s:%d" % (config.host, config.port),
        "workers": 1,
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
