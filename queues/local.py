"""Local mode's database: MONGO_URL, else localhost:27017, else an embedded one.

The embedded database is SecantusDB, a MongoDB-compatible server from
PyPI, run as a child process on a free loopback port with its data in
the local folder, so a laptop with nothing else installed still has a
real MongoDB wire protocol to talk to and keeps its data between runs.

One folder serves one server: the server that starts the embedded
database holds a lock on ``<local dir>/server.lock`` (which names the
address it serves on) for as long as it runs, so a second one started on
the same folder says so in one line instead of failing inside SecantusDB.
"""
import contextlib
import fcntl
import logging
import os
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


class LocalDatabaseError(RuntimeError):
    """Local mode's database cannot start; the message says why and what to do, in one line."""


class FolderInUse(LocalDatabaseError):
    """Another server holds the local folder; ``holder`` is its address when it said."""

    def __init__(self, message, holder=""):
        super().__init__(message)
        self.holder = holder


def in_use(local_dir, holder=""):
    """The message for a folder another server or database has open."""
    who = ("another ./server --use_local, serving %s" % holder) if holder else \
        "another process (another ./server --use_local, or a SecantusDB left running by one)"
    return ("the local folder %s is in use by %s: use that server, or start this one with its own folder, "
            "e.g. --local-dir %s-2" % (local_dir, who, local_dir.rstrip(os.sep)))


@contextlib.contextmanager
def claim(local_dir, serving=""):
    """Hold ``local_dir`` for this process (and its children) while the block runs.

    Raises LocalDatabaseError naming the holder's address when another
    server holds it. The lock is an flock, so it ends with the process
    however that ends.
    """
    os.makedirs(local_dir, exist_ok=True)
    handle = open(os.path.join(local_dir, LOCK_NAME), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise FolderInUse(in_use(local_dir, holder), holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(serving)
        handle.flush()
        yield
    finally:
        handle.close()


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


def start_secantus(data_dir, port, log_path):
    """Start SecantusDB as a child process; returns the Popen."""
    os.makedirs(data_dir, exist_ok=True)
    command = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
               "--storage-path", data_dir, "--log-level", "WARNING"]
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


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
        return in_use(local_dir)
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return "see %s%s" % (log_path, (": " + last[-1][:200]) if last else "")


@contextlib.contextmanager
def embedded(local_dir, serving=""):
    """Run SecantusDB for the duration of the block; yields its URL.

    ``serving`` (this server's address) is written into the folder's lock
    so that a second server on the same folder can point to this one.
    """
    with claim(local_dir, serving):
        port = free_port()
        url = "mongodb://127.0.0.1:%d" % port
        log_path = os.path.join(local_dir, "secantus.log")
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        process = start_secantus(os.path.join(local_dir, "db"), port, log_path)
        try:
            try:
                wait_until_up(url, process)
            except LocalDatabaseError as exc:
                raise LocalDatabaseError("%s: %s" % (exc, why_it_exited(local_dir, log_path, offset))) from None
            log.info("started the embedded MongoDB-compatible database (SecantusDB) at %s, data in %s",
                     url, os.path.join(local_dir, "db"))
            yield url
        finally:
            stop(process)


def stop(process, grace=10):
    """Stop a child database: SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def database(config):
    """The database URL local mode should use, starting one when needed."""
    if config.mongo_url:
        log.info("using MONGO_URL for the database")
        yield config.mongo_url
    elif answers(DEFAULT_LOCAL_URL):
        log.info("using the MongoDB answering on localhost:27017")
        yield DEFAULT_LOCAL_URL
    else:
        with embedded(config.local_dir, "http://%s:%d" % (config.host, config.port)) as url:
            yield url
