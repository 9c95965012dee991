"""What an operator runs and sees: ./server check, a database that rejects the server, local servers
started twice or killed, and stops interrupted."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from queues import local

from .conftest import (HOST, REPO, SERVER, SERVER_VARIABLES, Database, Predictor, end_process_group, free_port,
                       listening, load_round, make_round, server_env, tail, wait_for)


def run(args, env, timeout=60):
    """Run ./server to completion; returns (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, str(SERVER), *args], env=env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


def test_check_says_ready_then_names_a_missing_bucket(storage, database, tmp_path):
    env = server_env(storage, database.url, tmp_path)
    code, out, err = run(["check"], env)
    assert code == 0, out + err
    assert out.splitlines()[-1] == "ready" and all(line.startswith("ok") for line in out.splitlines()[:-1])
    assert len(out.splitlines()) == 5 and storage.upload_bucket in out and storage.dataset_bucket in out

    env["S3_DATASET_BUCKET"] = "e2e-no-such-bucket"
    code, out, err = run(["check"], env)
    assert code == 1, out + err
    (failed,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert "S3_DATASET_BUCKET=e2e-no-such-bucket" in failed and "does not exist" in failed
    assert "Traceback" not in out + err
    for secret in (env["API_KEY"], env["S3_SECRET_KEY"]):
        assert secret not in out + err


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """SecantusDB requiring authentication, with a user 'judge' (password 'right') on database 'guarded'."""
    folder = tmp_path_factory.mktemp("guarded")
    db = Database(folder / "data", folder / "secantus.log")
    db.start()
    client = db.client()
    try:
        client.admin.command("createUser", "judge", pwd="right-pw-e2e", roles=[{"role": "readWrite", "db": "guarded"}])
        client.admin.command("createUser", "reader", pwd="right-pw-e2e", roles=[{"role": "read", "db": "guarded"}])
    finally:
        client.close()
    db.stop()
    db.options = ["--auth"]
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.mark.parametrize("user, words", [("judge:wrong-pw-e2e", ["AuthenticationFailed", "MONGO_URL"]),
                                         ("reader:right-pw-e2e", ["Unauthorized", "readWrite"])],
                         ids=["wrong-password", "read-only-user"])
def test_a_database_that_rejects_the_server_stops_it_at_start(storage, guarded, tmp_path, user, words):
    url = "mongodb://%s@%s:%d/?authSource=admin" % (user, HOST, guarded.port)
    env = server_env(storage, url, tmp_path, MONGO_DB_NAME="guarded")
    started = time.monotonic()
    code, out, err = run([], env)
    assert code == 2, out + err
    assert time.monotonic() - started < 40
    assert not listening(int(env["PORT"]))
    (line,) = [line for line in err.splitlines() if "ERROR" in line]
    assert "cannot start:" in line and all(word in line for word in words), line
    assert "Traceback" not in err and user.split(":")[1] not in err

    code, out, err = run(["check"], env)
    assert code == 1 and all(word in out for word in words), out + err


def test_the_right_credentials_start(storage, guarded, tmp_path, start_server):
    url = "mongodb://judge:right-pw-e2e@%s:%d/?authSource=admin" % (HOST, guarded.port)
    server = start_server(MONGO_URL=url, MONGO_DB_NAME="guarded")
    assert requests.get(server.url + "/health", timeout=10).json()["database"] == "ok"
    server.stop()


def local_env():
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES and not key.startswith("RULE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_local(folder, port, log_path):
    """``./server --use_local`` on its own folder and port, in its own session; returns once /health answers 200."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([sys.executable, str(SERVER), "--use_local", "--local-dir", folder, "--port", str(port)],
                                   env=local_env(), cwd=str(REPO), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)

    def healthy():
        assert process.poll() is None, "the local server exited with %s\n%s" % (process.returncode, tail(log_path))
        try:
            return requests.get("http://%s:%d/health" % (HOST, port), timeout=2).status_code == 200
        except requests.RequestException:
            return False
    wait_for(healthy, 120, "the local server on port %d" % port, lambda: tail(log_path))
    return process


def ended(pid):
    """True once ``pid`` has ended (a zombie has ended)."""
    return local.command_line(pid) is None


def group_gone(pgid):
    """True once no live process is left in the process group ``pgid`` (zombies have ended)."""
    for name in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % name, "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[-1].split()
        except (OSError, ValueError):
            continue
        if name.isdigit() and fields[0] != b"Z" and int(fields[2]) == pgid:
            return False
    return True


@pytest.fixture
def local_server(tmp_path):
    """One ./server --use_local on a folder of its own: (process, folder, port, log path)."""
    folder, port, log_path = str(tmp_path / "local"), free_port(), tmp_path / "first.log"
    first = start_local(folder, port, log_path)
    try:
        yield first, folder, port, log_path
    finally:
        end_process_group(first)


@pytest.mark.parametrize("same_port", [True, False], ids=["the-same-command", "another-port"])
def test_a_second_local_server_on_the_same_folder_is_one_line_without_traceback(local_server, same_port):
    """The README's promise: the folder's holder and its address, exit 1 (the same command said "port in use", 2)."""
    first, folder, first_port, _ = local_server
    port = first_port if same_port else free_port()
    code, out, err = run(["--use_local", "--local-dir", folder, "--port", str(port)], local_env())
    assert code == 1, out + err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "ERROR" in line]
    assert "the local folder %s is in use by another ./server --use_local (pid %d), serving http://127.0.0.1:%d" % (
        folder, first.pid, first_port) in line and "--local-dir" in line, line


def test_check_recognises_the_running_local_server_and_checks_its_database(local_server):
    """It said "FAIL embedded database ..., started in ..." about a database it had not started."""
    first, folder, port, _ = local_server
    database = local.recorded(folder).database
    code, out, err = run(["--use_local", "--local-dir", folder, "--port", str(port), "check"], local_env())
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "ok    configuration (local mode, 127.0.0.1:%d, served by the running ./server --use_local " \
                       "(pid %d))" % (port, first.pid)
    assert lines[2].startswith("ok    database of the running ./server --use_local (pid %d), serving "
                               "http://127.0.0.1:%d: MongoDB %s" % (first.pid, port, database)), lines
    assert lines[-1] == "ready"


def test_a_killed_local_server_takes_its_database_with_it(local_server, tmp_path):
    """kill -9 left SecantusDB running for ever, and the next start was refused naming neither it nor a fix."""
    first, folder, port, log_path = local_server
    database_pid = local.recorded(folder).database_pid
    assert local.is_database_of(database_pid, os.path.join(folder, "db"))
    os.kill(first.pid, signal.SIGKILL)  # the server alone, as kill -9 <pid> does: not its process group
    first.wait(30)
    wait_for(lambda: ended(database_pid), 30, "the database (pid %d) to end with its server" % database_pid,
             lambda: tail(os.path.join(folder, "secantus.log")))
    # gunicorn's worker notices its arbiter is gone within a second or so, and lets the port go as it exits
    wait_for(lambda: group_gone(first.pid), 30, "the killed server's worker to exit", lambda: tail(log_path))
    again = start_local(folder, port, tmp_path / "again.log")  # the same command starts at once
    try:
        assert "in use" not in (tmp_path / "again.log").read_text()
    finally:
        end_process_group(again)


class SilentS3:
    """A TCP listener that accepts and never answers: a request to it holds its thread until the test ends."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen()
        self.url = "http://%s:%d" % (HOST, self.listener.getsockname()[1])
        self.reached = threading.Event()
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)
            self.reached.set()

    def close(self):
        for connection in self.held + [self.listener]:
            connection.close()


def test_a_second_interrupt_during_a_stop_exits_at_once_in_one_line(storage, start_server):
    """A second Ctrl-C while a stop waited printed "Exception ignored in atexit" tracebacks.

    The stop is held by a judgement waiting on an S3 that never answers: the second
    interrupt certainly arrives while the stop is in progress.
    """
    rnd = make_round(107, 13)
    sub = rnd.add("vera", Predictor(rnd, 13).model())
    storage.db.submissions.insert_one(sub.document())
    silent = SilentS3()
    try:
        server = start_server(S3_ENDPOINT_URL=silent.url, STOP_TIMEOUT="60")
        assert server.post(sub.submission_id).status_code == 202
        assert silent.reached.wait(30), "the dispatcher never asked S3 for the file\n" + server.tail()
        server.process.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping the pipeline" in server.log_text(), 30, "the stop to begin", server.tail)
        assert server.process.poll() is None  # the stop waits for the judgement (up to STOP_TIMEOUT, 60 s)
        server.process.send_signal(signal.SIGINT)
        code = server.process.wait(20)
        log_text = server.log_text()
        assert code == 0, server.tail()
        assert "Traceback" not in log_text and "Exception ignored" not in log_text, server.tail()
        assert len([line for line in log_text.splitlines() if "interrupted again while stopping" in line]) == 1, \
            server.tail()
    finally:
        silent.close()


def test_sigterm_answers_a_waiting_request_at_once(storage, start_server):
    """A request in ?wait= must not hold the stop back for its 30 seconds (nor be cut off without an answer)."""
    rnd = make_round(106, 12)
    sub = rnd.add("wendy", Predictor(rnd, 12).model())
    load_round(storage, rnd)
    server = start_server(RECOVERY_INTERVAL="3600")  # after the start's sweep, nobody picks the next one up
    storage.db.submissions.update_one({"_id": sub.oid}, {"$set": {"processing.state": "queued",
                                                                  "processing.stage": "consistency"}})
    box = {}

    def wait():
        box["response"] = requests.get(server.url + "/submissions/%s?wait=30" % sub.submission_id,
                                       headers={"X-API-Key": server.api_key}, timeout=60)
        box["answered"] = time.monotonic()
    waiter = threading.Thread(target=wait)
    waiter.start()

    def waiting():
        text = requests.get(server.url + "/metrics", timeout=10).text
        return "criteria_http_waiting_requests 1.0" in text
    wait_for(waiting, 20, "the GET to be waiting", server.tail)
    stopping = time.monotonic()
    server.stop()
    waiter.join(60)
    assert box["response"].status_code == 200 and box["response"].json()["status"] == "queued"
    assert box["answered"] - stopping < 10, "the waiting request held the stop for %.1fs" % (box["answered"] - stopping)
