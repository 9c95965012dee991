"""The ``server`` script: arguments, help and every refusal to start, in process.

The script is loaded as a module (it does nothing at import time);
nothing here starts gunicorn or a database: the functions that would are
replaced by ones that fail the test, so "refused before starting
anything" is checked, not assumed.
"""
import importlib.machinery
import importlib.util
import logging
import os
import socket
from pathlib import Path

import subprocess
import sys

import pymongo.errors
import pytest

from queues import clients, local, serve
from queues.config import REQUIRED
from queues.local import Holder, free_port

SCRIPT = Path(__file__).resolve().parents[1] / "server"
SETTINGS = REQUIRED + ("S3_ENDPOINT_URL", "PORT", "HOST", "LOG_LEVEL", "CACHE_DIR")


def load():
    loader = importlib.machinery.SourceFileLoader("server_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("server_script", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as for any module: dataclasses look their module up there
    loader.exec_module(module)
    return module


@pytest.fixture
def server(monkeypatch, tmp_path):
    """The script, in an environment with none of the server's variables, unable to start anything.

    The script imports the modules it needs when a command runs, so the
    modules themselves are patched.
    """
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    module = load()
    monkeypatch.setattr(serve.Service, "run", lambda self: pytest.fail("gunicorn started"))
    monkeypatch.setattr(local, "start_secantus", lambda *a, **k: pytest.fail("a database started"))
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", "mongodb://127.0.0.1:%d" % free_port())  # nothing there
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


def test_log_level_from_the_environment_is_checked(server, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    assert server.parse_args([]).log_level == "INFO"  # logging starts; the configuration names the problem
    assert server.main(["--use_local", "--local-dir", str(tmp_path / "l"), "--port", str(free_port())]) == 2
    assert errors(caplog) == ["cannot start: LOG_LEVEL='verbose' is not one of DEBUG, INFO, WARNING, ERROR"]
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


def test_a_second_local_server_on_a_folder_says_so_in_one_line(server, caplog, tmp_path):
    folder = str(tmp_path / "l")
    with local.claim(folder, Holder(command="./server --use_local", pid=4242, server="http://127.0.0.1:5151")):
        assert server.main(["--use_local", "--local-dir", folder, "--port", str(free_port())]) == 1
    (line,) = errors(caplog)
    assert "in use" in line and "http://127.0.0.1:5151" in line and "--local-dir" in line


def test_the_same_command_twice_names_the_folder_not_the_port(server, caplog, tmp_path):
    """Started with the same command, the second server met the port first: "port in use", exit 2,
    where the README promised the folder's holder and its address, exit 1."""
    folder = str(tmp_path / "l")
    with socket.socket() as taken, local.claim(folder, Holder(command="./server --use_local", pid=4242,
                                                                server="http://127.0.0.1:%d")) as held:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        held.record(Holder(command="./server --use_local", pid=4242, server="http://127.0.0.1:%d" % port))
        assert server.main(["--use_local", "--local-dir", folder, "--port", str(port)]) == 1
    (line,) = errors(caplog)
    assert line == ("cannot start: the local folder %s is in use by another ./server --use_local (pid 4242), serving "
                    "http://127.0.0.1:%d: use that server, or start this one with its own folder, e.g. --local-dir "
                    "%s-2" % (folder, port, folder))


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
    monkeypatch.setattr(clients, "client_for", lambda config, url: RejectingClient())
    assert server.main(["--port", str(free_port())]) == 2
    (line,) = errors(caplog)
    assert line.startswith("cannot start: MongoDB rejected the server's credentials") and "MONGO_URL" in line


def test_an_unreachable_database_at_start_starts_anyway(server, production, caplog, monkeypatch):
    ran = []
    monkeypatch.setattr(serve.Service, "run", lambda self: ran.append(self))
    monkeypatch.setattr(clients, "client_for",
                        lambda config, url: pymongo.MongoClient(url, serverSelectionTimeoutMS=50, connectTimeoutMS=50))
    assert server.main(["--port", str(free_port())]) == 0
    assert len(ran) == 1  # it may come back: requests answer 503 meanwhile
    assert any("does not answer" in record.getMessage() and "503" in record.getMessage() for record in caplog.records)


def test_missing_packages_are_one_line_pointing_to_requirements(tmp_path):
    """Run by a Python without the dependencies (-S: no site-packages), as from outside the virtualenv."""
    done = subprocess.run([sys.executable, "-S", str(SCRIPT), "--use_local", "--local-dir", str(tmp_path), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "pip install -r requirements.txt" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    helped = subprocess.run([sys.executable, "-S", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: ./server" in helped.stdout  # help needs no package


# -- each command imports only what it needs ------------------------------------------------
#: What serving and judging need, and take seconds to import (pymongo, a fraction of one, is check's).
HEAVY = ("sklearn", "scipy", "pandas", "numpy", "matplotlib", "flask", "gunicorn", "boto3")


def imported(args, tmp_path):
    """Top-level packages ./server imports for ``args`` (python -X importtime), with its exit status."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS and not key.startswith("RULE_")}
    done = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))
    names = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    return names, done.returncode


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["rescore", "--help"], ["rescore", "abc"],
                                  ["rescore", "41"], ["check"], []], ids=" ".join)
def test_help_and_refusals_import_no_heavy_package(args, tmp_path):
    """--help, check and rescore printed nothing for 4-6 s while the judging code was imported."""
    names, code = imported(args, tmp_path)
    assert code in (0, 2)
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_check_imports_no_judging_code(tmp_path):
    names, code = imported(["--use_local", "--local-dir", str(tmp_path / "l"), "--port", str(free_port()), "check"],
                           tmp_path)
    assert code in (0, 1) and "pymongo" in names
    assert not names & (set(HEAVY) - {"gunicorn"}), names  # gunicorn: check applies the server's listen check


# -- ./server rescore ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, wrong", [(["rescore", "abc"], "'abc' is not a round number"),
                                         (["rescore", "99999999999999999999"], "is not a round number"),
                                         (["rescore", "41", "--only", "xyz"], "'xyz' is not a submission id")])
def test_rescore_arguments_are_checked_by_argparse(server, capsys, argv, wrong):
    with pytest.raises(SystemExit) as exit_:
        server.parse_args(argv)
    assert exit_.value.code == 2 and wrong in capsys.readouterr().err


def test_rescore_without_production_settings_says_how_to_use_the_demo(server, caplog):
    caplog.set_level(logging.INFO)
    assert server.main(["rescore", "41", "--dry-run"]) == 2
    assert errors(caplog) == ["cannot re-score: %s is required and not set (see env.sh.example)" % name
                              for name in REQUIRED]
    assert caplog.records[-1].getMessage() == "for the local demo round, add --use_local: ./server --use_local rescore 41"


# -- every configuration problem at once ---------------------------------------------------
def test_check_reports_every_configuration_problem_and_counts_them(server, capsys, monkeypatch):
    """It named one at a time: "not ready: 1 problem", fix, run again, the next one."""
    for name, value in {"MONGO_URL": "mongodb://db:1", "S3_UPLOAD_BUCKET": "u", "S3_DATASET_BUCKET": "d",
                        "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s", "PORT": "http", "HTTP_THREADS": "-2",
                        "RULE_CORRELATION_LIMIT": "7", "RULE_DUPLICAT_KS": "0.01"}.items():
        monkeypatch.setenv(name, value)
    assert server.main(["check"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1].split("=")[0].split()[0] for line in lines[:-1]] == [
        "MONGO_DB_NAME", "API_KEY", "PORT", "HTTP_THREADS", "RULE_CORRELATION_LIMIT", "RULE_DUPLICAT_KS"], lines
    assert all(line.startswith("FAIL  configuration: ") for line in lines[:-1])
    assert lines[-1] == "not ready: 6 problems"


def test_a_serving_start_logs_every_configuration_problem(server, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "0")
    monkeypatch.setenv("RULE_MAX_SIMILAR", "0")
    assert server.main(["--use_local", "--local-dir", str(tmp_path)]) == 2
    assert [line.split(":")[1].split("=")[0].strip() for line in errors(caplog)] == ["PORT", "RULE_MAX_SIMILAR"]


def test_rescore_beside_a_running_local_server_says_how_to_go_on(server, caplog, monkeypatch, tmp_path):
    folder = str(tmp_path / "l")
    with local.claim(folder, Holder(command="./server --use_local", pid=4242, server="http://127.0.0.1:5999")):
        assert server.main(["--use_local", "--local-dir", folder, "rescore", "41", "--dry-run"]) == 1
    (line,) = errors(caplog)
    assert "Stop it (Ctrl-C)" in line and "http://127.0.0.1:5999/rounds/41/rescore" in line
    assert "X-API-Key: <the development key, in README.md>" in line
    assert '"dry_run": true' in line and "--local-dir" not in line


def test_rescore_beside_another_rescore_says_to_wait(server, caplog, monkeypatch, tmp_path):
    folder = str(tmp_path / "l")
    with local.claim(folder, Holder(command="./server --use_local rescore 41", pid=4343)):
        assert server.main(["--use_local", "--local-dir", folder, "rescore", "41"]) == 1
    assert errors(caplog) == ["cannot re-score here: ./server --use_local rescore 41 (pid 4343) holds the local folder "
                              "%s; run this again once it has finished" % folder]
