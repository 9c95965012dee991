"""What an operator runs and sees: ./server check, a database that rejects the server, two local servers."""
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

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


def test_a_second_local_server_on_the_same_folder_is_one_line_without_traceback(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    folder = str(tmp_path / "local")
    first_port = free_port()
    log_path = tmp_path / "first.log"
    with open(log_path, "ab") as log_file:
        first = subprocess.Popen([sys.executable, str(SERVER), "--use_local", "--local-dir", folder,
                                  "--port", str(first_port)], env=env, cwd=str(REPO), stdout=log_file,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def healthy():
            assert first.poll() is None, tail(log_path)
            try:
                return requests.get("http://%s:%d/health" % (HOST, first_port), timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, 120, "the first local server", lambda: tail(log_path))
        code, out, err = run(["--use_local", "--local-dir", folder, "--port", str(free_port())], env)
        assert code == 1, out + err
        assert "Traceback" not in err
        (line,) = [line for line in err.splitlines() if "ERROR" in line]
        assert "in use" in line and "http://127.0.0.1:%d" % first_port in line and "--local-dir" in line
    finally:
        end_process_group(first)


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
