"""What the benchmarks measure the database with: SecantusDB in its own process, and its costs.

A benchmark of a service that talks to a database server must pay what a
server costs: a socket round trip per command and the server's own work,
in another process. :func:`secantus` starts SecantusDB the way local mode
does (:mod:`queues.local`) on a free loopback port, and :func:`cpu_seconds`
reads that process's CPU time, so a benchmark can say how much of a run
the database itself spent. :class:`Commands` counts the commands a
``MongoClient`` sends, by the thread that sent them and by command name.
"""
import collections
import contextlib
import dataclasses
import importlib.metadata
import os
import threading

from pymongo import monitoring

from queues.local import free_port, start_secantus, stop, wait_until_up

#: Clock ticks per second of /proc's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")


def store_name():
    """How results name the store: SecantusDB and its version."""
    return "secantus-%s" % importlib.metadata.version("SecantusDB")


@dataclasses.dataclass
class Running:
    """A database server the benchmark started: its URL and process id."""

    url: str
    pid: int

    def cpu_seconds(self):
        return cpu_seconds(self.pid)


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name: [0] is field 3 (state), [2] field 5 (pgrp)."""
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` (all its threads, and children it waited for)."""
    return sum(int(value) for value in stat_fields(pid)[11:15]) / TICKS  # fields 14..17: utime..cstime


def group_cpu_seconds(pgid):
    """CPU seconds of every running process in process group ``pgid`` (e.g. a gunicorn master and its worker)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = stat_fields(int(name))
            except OSError:  # it ended meanwhile
                continue
            if int(fields[2]) == pgid:
                total += sum(int(value) for value in fields[11:15]) / TICKS
    return total


@contextlib.contextmanager
def secantus(folder):
    """SecantusDB on a free loopback port, data and log in ``folder``, for the block; yields :class:`Running`."""
    os.makedirs(folder, exist_ok=True)
    port = free_port()
    url = "mongodb://127.0.0.1:%d" % port
    process = start_secantus(os.path.join(folder, "db"), port, os.path.join(folder, "secantus.log"))
    try:
        wait_until_up(url, process)
        yield Running(url, process.pid)
    finally:
        stop(process)


class Commands(monitoring.CommandListener):
    """Counts the commands a client sends: ``counts[(thread name, command name)]``.

    pymongo calls ``started`` on the thread that sends the command, so the
    thread's name says which part of the service sent it. ``inspect``
    (optional) is called with every started event, for counting what the
    commands carry.
    """

    def __init__(self, inspect=None):
        self.counts = collections.Counter()
        self.seconds = collections.Counter()  # round-trip time by thread, as the client saw it
        self.inspect = inspect
        self._lock = threading.Lock()

    def started(self, event):
        name = threading.current_thread().name
        with self._lock:
            self.counts[(name, event.command_name)] += 1
            if self.inspect is not None:
                self.inspect(name, event)

    def succeeded(self, event):
        self._took(event)

    def failed(self, event):
        self._took(event)

    def _took(self, event):
        with self._lock:
            self.seconds[threading.current_thread().name] += event.duration_micros / 1e6

    def reset(self):
        with self._lock:
            self.counts.clear()
            self.seconds.clear()
