"""Local mode's database: MONGO_URL, else localhost:27017, else an embedded one.

The embedded database is SecantusDB, a MongoDB-compatible server from
PyPI, run as a child process on a free loopback port with its data in
the local folder, so a laptop with nothing else installed still has a
real MongoDB wire protocol to talk to and keeps its data between runs.
"""
import contextlib
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
    """Wait for the child database to answer; raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the embedded database exited with code %s" % process.returncode)
        if answers(url, 300):
            return
        time.sleep(0.1)
    raise RuntimeError("the embedded database did not answer within %.0fs" % timeout)


@contextlib.contextmanager
def embedded(local_dir):
    """Run SecantusDB for the duration of the block; yields its URL."""
    port = free_port()
    url = "mongodb://127.0.0.1:%d" % port
    process = start_secantus(os.path.join(local_dir, "db"), port, os.path.join(local_dir, "secantus.log"))
    try:
        wait_until_up(url, process)
        log.info("started the embedded MongoDB-compatible database (SecantusDB) at %s, data in %s",
                 url, os.path.join(local_dir, "db"))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
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
        with embedded(config.local_dir) as url:
            yield url
