"""Local mode's database: probing a URL, choosing one, and the embedded SecantusDB."""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pymongo
import pytest

from queues import local
from queues.config import from_env
from queues.local import Holder


def closed_url():
    return "mongodb://127.0.0.1:%d" % local.free_port()


def test_free_port_is_bindable():
    import socket
    port = local.free_port()
    assert 0 < port < 65536
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_answers_is_false_for_a_closed_port_and_quick():
    started = time.monotonic()
    assert local.answers(closed_url(), timeout_ms=200) is False
    assert time.monotonic() - started < 5


def test_wait_until_up_reports_a_database_that_exited():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(30)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        local.wait_until_up(closed_url(), process, timeout=5)


def test_wait_until_up_gives_up_at_the_deadline():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with pytest.raises(RuntimeError, match="did not answer"):
            local.wait_until_up(closed_url(), process, timeout=0.5)
    finally:
        process.kill()
        process.wait()


# -- choosing the database ----------------------------------------------------------------
@pytest.fixture
def no_embedding(monkeypatch):
    started = []

    @contextlib.contextmanager
    def fake_embedded(local_dir, me=Holder()):
        started.append(local_dir)
        yield "mongodb://127.0.0.1:1/embedded"
    monkeypatch.setattr(local, "embedded", fake_embedded)
    return started


def test_database_prefers_mongo_url(tmp_path, no_embedding, monkeypatch):
    monkeypatch.setattr(local, "answers", lambda *a, **k: pytest.fail("MONGO_URL must be used as given"))
    config = from_env({"MONGO_URL": "mongodb://127.0.0.1:27999"}, use_local=True, local_dir=str(tmp_path))
    with local.database(config) as url:
        assert url == "mongodb://127.0.0.1:27999"
    assert no_embedding == []


def test_database_uses_a_local_server_that_answers(tmp_path, no_embedding, monkeypatch):
    monkeypatch.setattr(local, "answers", lambda url, *a, **k: url == local.DEFAULT_LOCAL_URL)
    with local.database(from_env({}, use_local=True, local_dir=str(tmp_path))) as url:
        assert url == local.DEFAULT_LOCAL_URL
    assert no_embedding == []


def test_database_falls_back_to_the_embedded_one(tmp_path, no_embedding, monkeypatch):
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", closed_url())
    with local.database(from_env({}, use_local=True, local_dir=str(tmp_path))) as url:
        assert url == "mongodb://127.0.0.1:1/embedded"
    assert no_embedding == [str(tmp_path)]


# -- the embedded SecantusDB (slow: real child processes) ------------------------------------
@pytest.fixture
def spawned(monkeypatch):
    """The child processes ``embedded`` starts."""
    processes = []
    real = local.start_secantus

    def start(*args, **kwargs):
        process = real(*args, **kwargs)
        processes.append(process)
        return process
    monkeypatch.setattr(local, "start_secantus", start)
    yield processes
    for process in processes:  # never leave one behind, even when a test fails
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_embedded_database_answers_keeps_data_and_stops(tmp_path, spawned):
    folder = str(tmp_path / "local")
    with local.embedded(folder) as url:
        assert url.startswith("mongodb://127.0.0.1:")
        assert local.answers(url)
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        client["numerai-dev"].submissions.insert_one({"_id": "kept", "username": "zuz"})
        client.close()
    (first,) = spawned
    assert first.poll() is not None  # terminated and reaped at exit
    assert local.answers(url, timeout_ms=200) is False

    # a second run on the same folder sees the data; it stops even when the block raises
    with pytest.raises(KeyError):
        with local.embedded(folder) as second_url:
            client = pymongo.MongoClient(second_url, serverSelectionTimeoutMS=5000)
            found = client["numerai-dev"].submissions.find_one({"_id": "kept"})
            client.close()
            raise KeyError("the server failed while running")
    assert found == {"_id": "kept", "username": "zuz"}
    assert len(spawned) == 2 and spawned[1].poll() is not None
    assert (tmp_path / "local" / "secantus.log").exists()


# -- one folder, one server ------------------------------------------------------------------
SERVER_A = Holder(command="./server --use_local", pid=4242, server="http://127.0.0.1:5261")
SERVER_B = Holder(command="./server --use_local", pid=4343, server="http://127.0.0.1:5262")


def test_a_claimed_folder_refuses_a_second_claim_naming_the_holder(tmp_path):
    folder = str(tmp_path / "local")
    with local.claim(folder, SERVER_A):
        with pytest.raises(local.FolderInUse) as raised:
            with local.claim(folder, SERVER_B):
                pytest.fail("two servers hold one folder")
        message = str(raised.value)
        assert message.startswith("the local folder %s is in use by another ./server --use_local (pid 4242), serving "
                                  "http://127.0.0.1:5261: use that server" % folder), message
        assert "--local-dir" in message and "\n" not in message and raised.value.holder == SERVER_A
    with local.claim(folder, SERVER_B):  # free again once the first let go
        pass


def test_holder_only_looks(tmp_path):
    folder = str(tmp_path / "local")
    assert local.holder(folder) is None  # no folder yet
    with local.claim(folder, SERVER_A):
        assert local.holder(folder) == SERVER_A
        assert local.holder(folder) == SERVER_A  # looking took nothing
    assert local.holder(folder) is None
    assert local.recorded(folder) == SERVER_A  # what the last holder said stays for the next one


def test_a_rescore_holding_the_folder_is_named_as_such(tmp_path):
    folder = str(tmp_path / "local")
    rescoring = Holder(command="./server --use_local rescore 41", pid=77)
    with local.claim(folder, rescoring):
        with pytest.raises(local.FolderInUse, match=r"in use by ./server --use_local rescore 41 \(pid 77\): wait for"):
            with local.claim(folder, SERVER_B):
                pass


def test_a_lock_written_by_an_earlier_version_is_read_as_an_address(tmp_path):
    assert Holder.parse("http://127.0.0.1:5151\n") == Holder(server="http://127.0.0.1:5151")
    assert Holder.parse("") == Holder() and Holder.parse("[1]") == Holder()
    assert Holder.parse(json.dumps({"pid": 3, "future_field": 1})) == Holder(pid=3)


def test_a_production_install_without_secantus_says_what_to_install(tmp_path, monkeypatch):
    real = local.importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None if name == "secantus" else real(name))
    with pytest.raises(local.LocalDatabaseError, match="not installed: run pip install -r requirements.txt, or point "
                                                       "MONGO_URL at a MongoDB"):
        with local.embedded(str(tmp_path / "local")):
            pytest.fail("started without SecantusDB")


def test_a_second_embedded_database_on_a_claimed_folder_never_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "start_secantus", lambda *a, **k: pytest.fail("started a second database"))
    folder = str(tmp_path / "local")
    with local.claim(folder, SERVER_A):
        with pytest.raises(local.LocalDatabaseError, match="in use by another ./server --use_local"):
            with local.embedded(folder, SERVER_B):
                pass


def test_why_it_exited_reads_only_what_this_start_logged(tmp_path):
    log_path = tmp_path / "secantus.log"
    log_path.write_text("old run: WiredTiger.lock: Resource temporarily unavailable\n")
    offset = log_path.stat().st_size
    with open(log_path, "a") as handle:
        handle.write("Traceback (most recent call last):\nOSError: [Errno 28] No space left on device\n")
    reason = local.why_it_exited(str(tmp_path), str(log_path), offset)
    assert "No space left on device" in reason and "in use" not in reason
    assert "in use by another process" in local.why_it_exited(str(tmp_path), str(log_path), 0)


def test_a_recorded_pid_that_now_runs_something_else_is_left_alone(tmp_path):
    """Pids are reused: only a SecantusDB on this very folder is ours to stop."""
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        local.take_over(Holder(database_pid=other.pid), str(tmp_path / "db"))
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def orphan(folder, port, log_path):
    """A SecantusDB on ``folder``'s data that no server watches: what a killed server used to leave behind."""
    process = subprocess.Popen(local.secantus_command(os.path.join(folder, "db"), port), stdout=open(log_path, "ab"),
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    local.wait_until_up("mongodb://127.0.0.1:%d" % port, process)
    return process


@pytest.mark.slow
def test_a_database_left_running_on_the_folder_is_named_with_how_to_stop_it(tmp_path, spawned):
    """A SecantusDB nobody recorded keeps the folder; the next start names its pid and the kill that frees it."""
    folder = str(tmp_path / "local")
    left = orphan(folder, local.free_port(), str(tmp_path / "orphan.log"))
    spawned.append(left)
    with pytest.raises(local.LocalDatabaseError) as raised:
        with local.embedded(folder, SERVER_B):
            pytest.fail("a second database started on a folder in use")
    message = str(raised.value)
    assert "exited with code" in message and "SecantusDB (pid %d)" % left.pid in message, message
    assert "kill %d" % left.pid in message and "--local-dir" in message and "\n" not in message
    assert left.poll() is None  # not ours to stop: nobody recorded it


@pytest.mark.slow
def test_a_database_its_killed_server_left_running_is_taken_over(tmp_path, spawned, caplog):
    """The folder's record names the database a killed server started: the next start stops it, says so, and runs."""
    caplog.set_level(logging.INFO)
    folder = str(tmp_path / "local")
    left = orphan(folder, local.free_port(), str(tmp_path / "orphan.log"))
    spawned.append(left)
    with local.claim(folder, SERVER_A) as held:  # the killed server's record
        held.record(Holder(command=SERVER_A.command, pid=SERVER_A.pid, server=SERVER_A.server,
                           database="mongodb://127.0.0.1:1", database_pid=left.pid))
    with local.embedded(folder, SERVER_B) as url:
        assert left.poll() is not None  # stopped before ours started on the same data
        assert local.answers(url)
        assert local.holder(folder).database == url
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pid %d" % left.pid in line and "outlived it" in line for line in warning), warning
    assert any("took over" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_the_embedded_database_ends_with_its_server_however_it_ends(tmp_path):
    """SIGKILL a process running ``embedded``: its database must not outlive it (Linux: PR_SET_PDEATHSIG)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("the kernel's parent-death signal is Linux's; elsewhere the next start takes the database over")
    folder = str(tmp_path / "local")
    database_pid = None
    code = ("import sys; from queues import local\n"
            "with local.embedded(sys.argv[1]) as url:\n"
            "    print(url, flush=True); sys.stdin.read()\n")
    server = subprocess.Popen([sys.executable, "-c", code, folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        url = server.stdout.readline().decode().strip()
        assert url.startswith("mongodb://"), "the process running embedded() exited early"
        database_pid = local.recorded(folder).database_pid
        assert local.is_database_of(database_pid, os.path.join(folder, "db"))
        server.kill()
        server.wait(30)
        deadline = time.monotonic() + 30  # polling the process state: the kernel signals it, SecantusDB stops
        while local.command_line(database_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local.command_line(database_pid) is None, "the database outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if database_pid and local.is_database_of(database_pid, os.path.join(folder, "db")):
            os.kill(database_pid, signal.SIGKILL)  # never leave one behind, even when the test fails
