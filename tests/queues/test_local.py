"""Local mode's database: probing a URL, choosing one, and the embedded SecantusDB."""
import contextlib
import subprocess
import sys
import time

import pymongo
import pytest

from queues import local
from queues.config import from_env


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
    def fake_embedded(local_dir, serving=""):
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
def test_a_claimed_folder_refuses_a_second_claim_naming_the_holder(tmp_path):
    folder = str(tmp_path / "local")
    with local.claim(folder, "http://127.0.0.1:5261"):
        with pytest.raises(local.LocalDatabaseError) as raised:
            with local.claim(folder, "http://127.0.0.1:5262"):
                pytest.fail("two servers hold one folder")
        message = str(raised.value)
        assert "in use" in message and "http://127.0.0.1:5261" in message and "--local-dir" in message
        assert "\n" not in message
    with local.claim(folder, "http://127.0.0.1:5262"):  # free again once the first let go
        pass


def test_a_second_embedded_database_on_a_claimed_folder_never_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "start_secantus", lambda *a, **k: pytest.fail("started a second database"))
    folder = str(tmp_path / "local")
    with local.claim(folder, "http://127.0.0.1:5261"):
        with pytest.raises(local.LocalDatabaseError, match="in use by another ./server --use_local"):
            with local.embedded(folder, "http://127.0.0.1:5262"):
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


@pytest.mark.slow
def test_a_database_left_running_on_the_folder_is_named_not_a_traceback(tmp_path, spawned):
    """A SecantusDB outliving its server (SIGKILL) keeps the folder; the next start says so."""
    folder = str(tmp_path / "local")
    port = local.free_port()
    url = "mongodb://127.0.0.1:%d" % port
    orphan = local.start_secantus(str(tmp_path / "local" / "db"), port, str(tmp_path / "orphan.log"))
    spawned.append(orphan)
    local.wait_until_up(url, orphan)
    with pytest.raises(local.LocalDatabaseError) as raised:
        with local.embedded(folder, "http://127.0.0.1:5262"):
            pytest.fail("a second database started on a folder in use")
    message = str(raised.value)
    assert "exited with code" in message and "in use by another process" in message and "--local-dir" in message
    assert "\n" not in message
