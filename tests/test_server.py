"""The ``server`` script: arguments, help and every refusal to start, in process.

The script is loaded as a module (it does nothing at import time);
nothing here starts gunicorn or a database: the functions that would are
replaced by ones that fail the test, so "refused before starting
anything" is checked, not assumed.
"""
import importlib.machinery
import importlib.util
import logging
import socket
from pathlib import Path

import mongomock
import pymongo.errors
import pytest

from queues import local
from queues.config import REQUIRED, Config
from queues.local import database as real_database
from queues.local import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "server"
SETTINGS = REQUIRED + ("S3_ENDPOINT_URL", "PORT", "HOST", "LOG_LEVEL", "CACHE_DIR")


def load():
    loader = importlib.machinery.SourceFileLoader("server_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("server_script", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def server(monkeypatch, tmp_path):
    """The script, in an environment with none of the server's variables, unable to start anything."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    module = load()
    monkeypatch.setattr(module.serve.Service, "run", lambda self: pytest.fail("gunicorn started"))
    monkeypatch.setattr(module.local, "database", lambda config: pytest.fail("a database started"))
    monkeypatch.setattr(module, "configure_logging", lambda level: None)  # caplog sees the records
    return module


@pytest.fixture
def production(monkeypatch, tmp_path):
    values = {"MONGO_URL": "mongodb://127.0.0.1:1", "MONGO_DB_NAME": "numerai", "S3_UPLOAD_BUCKET": "u",
              "S3_DATASET_BUCKET": "d", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s", "API_KEY": "k",
              "HOST": "127.0.0.1", "CACHE_DIR": str(tmp_path / "cache")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def errors(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# -- help ------------------------------------------------------------------------------------
def test_help_names_the_production_variables_and_the_example(server, capsys):
    with pytest.raises(SystemExit) as raised:
        server.parse_args(["--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for name in REQUIRED:
        assert name in text
    assert "env.sh.example" in text and "--use_local" in text and "check" in text
    log_level = text[text.index("--log-level"):text.index("commands:")]
    assert "how much to log" in log_level and "LOG_LEVEL" in log_level


def test_the_check_command_has_its_own_help(server, capsys):
    with pytest.raises(SystemExit):
        server.parse_args(["check", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: ./server check") and "exit status 0" in text and "MONGO_URL" in text


# -- arguments are validated before anything starts ----------------------------------------------
@pytest.mark.parametrize("port", ["99999", "0", "-1", "abc", "51.5"])
def test_a_port_that_is_not_one_is_refused_by_argparse(server, capsys, port):
    with pytest.raises(SystemExit) as raised:
        server.main(["--use_local", "--port", port])
    assert raised.value.code == 2
    assert "is not a port number (1-65535)" in capsys.readouterr().err


def test_log_level_from_the_environment_is_checked(server, capsys, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit) as raised:
        server.parse_args([])
    assert raised.value.code == 2 and "LOG_LEVEL=VERBOSE is not one of" in capsys.readouterr().err
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert server.parse_args([]).log_level == "DEBUG"


def test_options_go_before_or_after_the_command(server):
    for argv in (["--use_local", "--port", "5999", "check"], ["check", "--use_local", "--port", "5999"]):
        args = server.parse_args(argv)
        assert args.use_local is True and args.port == 5999 and args.command is server.check_command
    args = server.parse_args(["--use_local"])
    assert args.use_local is True and args.command is None and args.port is None


def test_a_port_in_use_stops_before_the_database_starts(server, caplog, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert server.main(["--use_local", "--local-dir", str(tmp_path / "l"), "--port", str(port)]) == 2
    (line,) = errors(caplog)
    assert "127.0.0.1:%d" % port in line and "in use" in line


def test_a_local_dir_that_is_a_file_stops_before_anything_starts(server, caplog, tmp_path):
    (tmp_path / "f").write_text("x")
    assert server.main(["--use_local", "--local-dir", str(tmp_path / "f"), "--port", str(free_port())]) == 2
    (line,) = errors(caplog)
    assert "--local-dir" in line and "is a file, not a folder" in line


def test_a_second_local_server_on_a_folder_says_so_in_one_line(server, caplog, monkeypatch, tmp_path):
    folder = str(tmp_path / "l")
    monkeypatch.setattr(server.local, "database", real_database)  # the real one: it must refuse
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", "mongodb://127.0.0.1:%d" % free_port())  # nothing there
    monkeypatch.setattr(local, "start_secantus", lambda *a, **k: pytest.fail("a second database started"))
    with local.claim(folder, "http://127.0.0.1:5151"):  # the first server
        assert server.main(["--use_local", "--local-dir", folder, "--port", str(free_port())]) == 1
    (line,) = errors(caplog)
    assert "in use" in line and "http://127.0.0.1:5151" in line and "--local-dir" in line


# -- the database at start ----------------------------------------------------------------------
class RejectingClient:
    """What pymongo does with credentials the database rejects: every command fails with code 18."""

    def __getitem__(self, name):
        return self

    def command(self, *args, **kwargs):
        raise pymongo.errors.OperationFailure("Authentication failed.", code=18)

    def close(self):
        pass


def test_rejected_credentials_at_start_refuse_to_start(server, production, caplog, monkeypatch):
    monkeypatch.setattr(server, "client_for", lambda config, url: RejectingClient())
    assert server.main(["--port", str(free_port())]) == 2
    (line,) = errors(caplog)
    assert line.startswith("cannot start: MongoDB rejected the server's credentials") and "MONGO_URL" in line


def test_an_unreachable_database_at_start_starts_anyway(server, production, caplog, monkeypatch):
    ran = []
    monkeypatch.setattr(server.serve.Service, "run", lambda self: ran.append(self))
    monkeypatch.setattr(server, "client_for",
                        lambda config, url: pymongo.MongoClient(url, serverSelectionTimeoutMS=50, connectTimeoutMS=50))
    assert server.main(["--port", str(free_port())]) == 0
    assert len(ran) == 1  # it may come back: requests answer 503 meanwhile
    assert any("does not answer" in record.getMessage() and "503" in record.getMessage() for record in caplog.records)


def test_a_failure_to_create_indexes_is_logged(server, caplog, monkeypatch, tmp_path):
    def refused(self):
        raise pymongo.errors.OperationFailure("not authorized on numerai to execute command { createIndexes }", code=13)
    monkeypatch.setattr(server.Store, "ensure_indexes", refused)
    config = Config(api_key="k", local=True, local_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                    originality_threads=1)
    app, stop = server.build_service(config, lambda: mongomock.MongoClient().numerai)
    try:
        (line,) = [r.getMessage() for r in caplog.records if "indexes" in r.getMessage()]
        assert "Unauthorized" in line and "MONGO_DB_NAME" in line
        assert app.test_client().get("/metrics").status_code == 200
    finally:
        assert stop() == []


def test_missing_packages_are_one_line_pointing_to_requirements():
    """Run by a Python without the dependencies (-S: no site-packages), as from outside the virtualenv."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-S", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install -r requirements.txt" in done.stderr and "Traceback" not in done.stderr


# -- ./server rescore ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, wrong", [(["rescore", "abc"], "'abc' is not a round number"),
                                         (["rescore", "99999999999999999999"], "is not a round number"),
                                         (["rescore", "41", "--only", "xyz"], "'xyz' is not a submission id")])
def test_rescore_arguments_are_checked_by_argparse(server, capsys, argv, wrong):
    with pytest.raises(SystemExit) as exit_:
        server.parse_args(argv)
    assert exit_.value.code == 2 and wrong in capsys.readouterr().err


def test_rescore_without_production_settings_says_how_to_use_the_demo(server, caplog):
    assert server.main(["rescore", "41", "--dry-run"]) == 2
    (line,) = errors(caplog)
    assert line.startswith("cannot re-score: missing required") and "--use_local" in line


def test_rescore_beside_a_running_local_server_says_how_to_go_on(server, caplog, monkeypatch, tmp_path):
    folder = str(tmp_path / "l")
    monkeypatch.setattr(server.local, "database", real_database)
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", "mongodb://127.0.0.1:%d" % free_port())  # nothing there
    monkeypatch.setattr(local, "start_secantus", lambda *a, **k: pytest.fail("a second database started"))
    with local.claim(folder, "http://127.0.0.1:5999"):  # the running local server
        assert server.main(["--use_local", "--local-dir", folder, "rescore", "41", "--dry-run"]) == 1
    (line,) = errors(caplog)
    assert "Stop it (Ctrl-C)" in line and "http://127.0.0.1:5999/rounds/41/rescore" in line
    assert '"dry_run": true' in line and "--local-dir" not in line
