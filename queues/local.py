"""Local mode's database: MONGO_URL, else localhost:27017, else an embedded one.

The embedded database is SecantusDB, a MongoDB-compatible server from
PyPI, run as a child process on a free loopback port with its data in
the local folder, so a laptop with nothing else installed still has a
real MongoDB wire protocol to talk to and keeps its data between runs.

One folder serves one server: the process that starts the embedded
database holds a lock on ``<local dir>/server.lock`` for as long as it
runs, and writes into it who it is (command, pid, the address it serves)
and, once started, its database's URL and pid. A second server on the
same folder names the first in one line; ``./server check`` checks the
running server's database; and a start after a server was killed stops
the database that server left behind (if it outlived it) before starting
its own.

The database ends with its server: on Linux the kernel sends it SIGTERM
when the server dies, however it dies (``PR_SET_PDEATHSIG``). It runs in
a session of its own, so a Ctrl-C in the terminal reaches only the
server, which hands its work back before stopping the database.
"""
import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pymongo

log = logging.getLogger(__name__)

DEFAULT_LOCAL_URL = "mongodb://127.0.0.1:27017"
START_TIMEOUT = 60.0
LOCK_NAME = "server.lock"
#: What SecantusDB's storage engine logs when another process has the folder open.
LOCKED_SIGNS = ("already being managed by another process", "WiredTiger.lock")
#: How a serving local server names itself in the folder's lock.
SERVING = "./server --use_local"
#: Seconds a database left behind gets to stop on SIGTERM before it is killed.
STOP_GRACE = 10.0
#: Run by the child before it becomes SecantusDB: ask Linux to SIGTERM it when the server dies, then exec.
#: Elsewhere (no prctl) it just execs: the next start stops a database left behind instead.
#: argv: the server's pid, then the command to exec.
PARENT_DEATH_GUARD = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the server died before prctl: nobody would stop this one
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


class LocalDatabaseError(RuntimeError):
    """Local mode's database cannot start; the message says why and what to do, in one line."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a local folder, as its lock file says."""

    command: str = ""  # e.g. "./server --use_local", "./server --use_local rescore 41"
    pid: int = 0
    server: str = ""  # the address it serves on; empty for a command that serves nothing
    database: str = ""  # the URL of the embedded database it started, once it answers
    database_pid: int = 0

    @classmethod
    def parse(cls, text):
        """The record in a lock file; a plain address (as earlier versions wrote) is the server's."""
        try:
            fields = json.loads(text)
        except ValueError:
            return cls(server=text.strip())
        if not isinstance(fields, dict):
            return cls()
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in fields.items() if name in known})

    def who(self):
        """E.g. './server --use_local (pid 4242)'."""
        return (self.command or SERVING) + (" (pid %d)" % self.pid if self.pid else "")

    def describe(self):
        """E.g. './server --use_local (pid 4242), serving http://127.0.0.1:5151'."""
        return self.who() + (", serving %s" % self.server if self.server else "")


class FolderInUse(LocalDatabaseError):
    """Another process holds the local folder; ``holder`` says who, as far as it said."""

    def __init__(self, message, holder=Holder()):
        super().__init__(message)
        self.holder = holder


def in_use(local_dir, holder=None):
    """The message for a folder another server or database has open."""
    if holder is None:
        who = "another process (another ./server --use_local, or a SecantusDB left running by one)"
    else:
        who = ("another " if holder.command in ("", SERVING) else "") + holder.describe()
    instead = "use that server" if holder is None or holder.server or not holder.command else "wait for it to finish"
    return ("the local folder %s is in use by %s: %s, or start this one with its own folder, e.g. --local-dir %s-2"
            % (local_dir, who, instead, local_dir.rstrip(os.sep)))


class Claim:
    """This process's hold on a local folder: the open lock file, and what its last holder wrote in it."""

    def __init__(self, handle, previous):
        self.handle = handle
        self.previous = previous

    def record(self, holder):
        """Say who holds the folder now, for a second server, ``./server check`` and the next start."""
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(dataclasses.asdict(holder)))
        self.handle.flush()


@contextlib.contextmanager
def claim(local_dir, me=Holder()):
    """Hold ``local_dir`` for this process (and its children) while the block runs; yields a Claim.

    Raises FolderInUse naming the holder when another process holds it.
    The lock is an flock, so it ends with the process however that ends,
    while what the holder wrote stays for the next one to read.
    """
    os.makedirs(local_dir, exist_ok=True)
    handle = open(os.path.join(local_dir, LOCK_NAME), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = Holder.parse(handle.read())
        handle.close()
        raise FolderInUse(in_use(local_dir, holder), holder) from None
    # A process forked meanwhile (gunicorn's worker) gets the lock too; it closes its copy, so that the
    # folder is free as soon as this process ends, not when the last worker notices and exits.
    os.register_at_fork(after_in_child=handle.close)
    try:
        handle.seek(0)
        held = Claim(handle, Holder.parse(handle.read()))
        held.record(me)
        yield held
    finally:
        handle.close()


def holder(local_dir):
    """Who holds ``local_dir`` right now (a Holder), or None when nobody does.

    Only looks: it takes the lock for an instant, shared, so it never
    records anything, and a server starting at that instant is refused
    (and says so) rather than sharing the folder.
    """
    try:
        handle = open(os.path.join(local_dir, LOCK_NAME))
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder.parse(handle.read())
        return None


def recorded(local_dir):
    """What the folder's last (or current) holder wrote in its lock: an empty Holder when nothing."""
    try:
        with open(os.path.join(local_dir, LOCK_NAME)) as handle:
            return Holder.parse(handle.read())
    except OSError:
        return Holder()


def answers(url, timeout_ms=500):
    """True when a MongoDB server at ``url`` answers a ping in time."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def secantus_command(data_dir, port):
    """SecantusDB's command line; its absolute data folder is how a database left behind is recognised."""
    return [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", os.path.abspath(data_dir), "--log-level", "WARNING"]


def start_secantus(data_dir, port, log_path):
    """Start SecantusDB as a child process that ends with this one; returns the Popen.

    Its own session keeps a terminal's Ctrl-C for the server, which stops
    the database itself once its work is handed back.
    """
    os.makedirs(data_dir, exist_ok=True)
    command = [sys.executable, "-c", PARENT_DEATH_GUARD, str(os.getpid())] + secantus_command(data_dir, port)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def command_line(pid):
    """The arguments process ``pid`` runs with, or None when it has ended (a zombie has ended) or is not ours."""
    if not os.path.isdir("/proc/self"):  # macOS: ask ps (arguments split at spaces)
        done = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
        fields = done.stdout.split()
        return fields[1:] if done.returncode == 0 and fields and not fields[0].startswith("Z") else None
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat:
            if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return None
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            return cmdline.read().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:
        return None


def is_database_of(pid, data_dir):
    """True when process ``pid`` is a SecantusDB serving ``data_dir``: a recorded pid may have been reused."""
    arguments = command_line(pid) or []
    path = os.path.abspath(data_dir)
    return "secantus" in arguments and any(
        flag == "--storage-path" and value == path for flag, value in zip(arguments, arguments[1:]))


def databases_on(data_dir):
    """Pids of SecantusDB processes serving ``data_dir`` (Linux; elsewhere none are found)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    return sorted(pid for pid in pids if is_database_of(pid, data_dir))


def end(pid, grace=STOP_GRACE):
    """SIGTERM ``pid``, SIGKILL it after ``grace`` seconds; returns once it has ended."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while command_line(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if command_line(pid) is None:
            return
    raise LocalDatabaseError("process %d did not end after SIGKILL" % pid)


def take_over(previous, data_dir):
    """Stop the database the folder's last holder started, when it outlived that holder.

    It is ours to stop: we hold the folder's lock, so its holder has ended,
    and the recorded pid still runs SecantusDB on this very folder.
    """
    pid = previous.database_pid
    if not pid or pid == os.getpid() or not is_database_of(pid, data_dir):
        return
    log.warning("the embedded database (SecantusDB, pid %d) of an earlier %s outlived it and still held %s; "
                "stopping it, then starting a new one on the same data", pid, previous.describe(), data_dir)
    end(pid)
    log.info("took over %s: the database left behind (pid %d) has stopped", data_dir, pid)


def wait_until_up(url, process, timeout=START_TIMEOUT):
    """Wait for the child database to answer; raise LocalDatabaseError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalDatabaseError("the embedded database exited with code %s" % process.returncode)
        if answers(url, 300):
            return
        time.sleep(0.1)
    raise LocalDatabaseError("the embedded database did not answer within %.0fs" % timeout)


def why_it_exited(local_dir, log_path, offset):
    """One line on why SecantusDB exited, from what it logged since ``offset``."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    if any(sign in text for sign in LOCKED_SIGNS):
        others = databases_on(os.path.join(local_dir, "db"))
        if others:
            return ("the local folder %s is in use by SecantusDB (pid %s), which no running ./server --use_local "
                    "started: stop it (kill %s), or start this one with its own folder, e.g. --local-dir %s-2"
                    % (local_dir, ", ".join(map(str, others)), " ".join(map(str, others)), local_dir.rstrip(os.sep)))
        return in_use(local_dir)
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return "see %s%s" % (log_path, (": " + last[-1][:200]) if last else "")


@contextlib.contextmanager
def embedded(local_dir, me=Holder()):
    """Run SecantusDB for the duration of the block; yields its URL.

    ``me`` says who runs it (command, pid, the address it serves); it is
    written into the folder's lock with the database's URL and pid, so that
    a second server on the same folder can point to this one, ``check`` can
    probe its database, and the next start can stop it if it outlives us.
    """
    if importlib.util.find_spec("secantus") is None:  # requirements-service.txt, a production install, leaves it out
        raise LocalDatabaseError("local mode's embedded database (SecantusDB) is not installed: run pip install -r "
                                 "requirements.txt, or point MONGO_URL at a MongoDB")
    data_dir = os.path.join(local_dir, "db")
    with claim(local_dir, me) as held:
        take_over(held.previous, data_dir)
        port = free_port()
        url = "mongodb://127.0.0.1:%d" % port
        log_path = os.path.join(local_dir, "secantus.log")
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        log.info("starting the embedded database (SecantusDB) on 127.0.0.1:%d, data in %s", port, data_dir)
        process = start_secantus(data_dir, port, log_path)
        starter = os.getpid()
        try:
            held.record(dataclasses.replace(me, database=url, database_pid=process.pid))
            try:
                wait_until_up(url, process)
            except LocalDatabaseError as exc:
                raise LocalDatabaseError("%s: %s" % (exc, why_it_exited(local_dir, log_path, offset))) from None
            log.info("started the embedded MongoDB-compatible database (SecantusDB, pid %d) at %s, data in %s",
                     process.pid, url, data_dir)
            yield url
        finally:
            if os.getpid() == starter:  # a forked worker leaving this frame on its way out must not stop it
                stop(process)


def stop(process, grace=STOP_GRACE):
    """Stop a child database: SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def database(config, command=SERVING, serving=True):
    """The database URL local mode should use, starting one when needed.

    ``command`` and ``serving`` (whether this process serves HTTP on the
    configured address) go into the folder's lock when a database is started.
    """
    if config.mongo_url:
        log.info("using MONGO_URL for the database")
        yield config.mongo_url
    elif answers(DEFAULT_LOCAL_URL):
        log.info("using the MongoDB answering on localhost:27017")
        yield DEFAULT_LOCAL_URL
    else:
        me = Holder(command=command, pid=os.getpid(), server="http://%s:%d" % (config.host, config.port) if serving else "")
        with embedded(config.local_dir, me) as url:
            yield url
