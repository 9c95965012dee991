"""``./server check``'s findings: configuration, MongoDB and both buckets (mongomock and moto in process)."""
import io

import boto3
import botocore.exceptions
import mongomock
import pymongo.errors
import pytest
from moto import mock_aws

from queues import local, preflight
from queues.config import Config
from queues.local import Holder, free_port

UPLOADS, DATASETS = "uploads-check", "datasets-check"
PASSWORD = "pw-in-the-url-5e1d"


@pytest.fixture
def s3(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        client.create_bucket(Bucket=UPLOADS)
        client.create_bucket(Bucket=DATASETS)
        yield client


@pytest.fixture
def production():
    return Config(api_key="k", mongo_url="mongodb://judge:%s@db.internal:27017/?authSource=admin" % PASSWORD,
                  mongo_db_name="numerai", upload_bucket=UPLOADS, dataset_bucket=DATASETS, host="127.0.0.1",
                  port=free_port())


def healthy_mongo(url):
    return mongomock.MongoClient()


class Refusing:
    """A client whose database raises ``error`` from ``command`` (ping) or from one collection operation."""

    def __init__(self, error, operation="command"):
        self.error, self.operation = error, operation
        self.real = mongomock.MongoClient()

    def __getitem__(self, name):
        outer = self

        class Database:
            def command(self, *args):
                if outer.operation == "command":
                    raise outer.error
                return outer.real[name].command(*args)

            def __getitem__(self, collection):
                real = outer.real[name][collection]

                class Collection:
                    def __getattr__(self, attribute):
                        if attribute == outer.operation:
                            def refused(*args, **kwargs):
                                raise outer.error
                            return refused
                        return getattr(real, attribute)
                return Collection()
        return Database()

    def close(self):
        pass


def run(config, connect, s3_client):
    findings = list(preflight.each(config, connect, s3_client))
    out = io.StringIO()
    return findings, preflight.report(findings, out), out.getvalue()


def test_everything_ready_is_exit_0_with_one_ok_line_each(production, s3):
    findings, status, text = run(production, healthy_mongo, lambda: s3)
    assert status == 0
    assert [line.split()[0] for line in text.splitlines()] == ["ok", "ok", "ok", "ok", "ready"]
    assert "db.internal:27017" in text and "S3_UPLOAD_BUCKET=%s" % UPLOADS in text and "S3_DATASET_BUCKET" in text
    assert PASSWORD not in text and "judge" not in text


def test_the_probe_reads_and_writes_nothing(production, s3):
    client = mongomock.MongoClient()
    client.numerai.submissions.insert_one({"_id": 1, "username": "zuz"})
    before = {name: list(client.numerai[name].find()) for name in ("submissions", "competitions", "users")}
    assert run(production, lambda url: client, lambda: s3)[1] == 0
    assert {name: list(client.numerai[name].find()) for name in ("submissions", "competitions", "users")} == before


def test_a_missing_bucket_is_named(production, s3):
    s3.delete_bucket(Bucket=DATASETS)
    findings, status, text = run(production, healthy_mongo, lambda: s3)
    assert status == 1
    failed = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "S3_DATASET_BUCKET=%s" % DATASETS in failed[0] and "does not exist" in failed[0]
    assert text.splitlines()[-1] == "not ready: 1 problem"


@pytest.mark.parametrize("code, setting", [("InvalidAccessKeyId", "S3_ACCESS_KEY"),
                                           ("SignatureDoesNotMatch", "S3_SECRET_KEY"),
                                           ("AccessDenied", "s3:ListBucket")])
def test_refused_keys_are_named(production, s3, code, setting):
    class Refuse:
        def list_objects_v2(self, **kwargs):
            raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "no"},
                                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, "ListObjectsV2")
    findings, status, text = run(production, healthy_mongo, Refuse)
    assert status == 1
    assert [f.ok for f in findings] == [True, True, False, False]
    assert all(setting in f.problem for f in findings[2:])


def test_an_unreachable_s3_endpoint_is_named(production):
    class Away:
        def list_objects_v2(self, **kwargs):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    findings, status, text = run(production, healthy_mongo, Away)
    assert status == 1 and "S3 cannot be reached" in text and "127.0.0.1:1" in text


@pytest.mark.parametrize("error, operation, words", [
    (pymongo.errors.OperationFailure("Authentication failed.", code=18), "command", ["AuthenticationFailed", "MONGO_URL"]),
    (pymongo.errors.OperationFailure("not authorized on numerai to execute command { find }", code=13), "find_one",
     ["Unauthorized", "MONGO_DB_NAME"]),
    (pymongo.errors.OperationFailure("not authorized on numerai to execute command { update }", code=13),
     "update_one", ["Unauthorized", "readWrite"]),
    (pymongo.errors.ServerSelectionTimeoutError("db.internal:27017: [Errno 111] Connection refused, Timeout: 3s, "
                                                "Topology Description: <long>"), "command",
     ["does not answer", "Connection refused"]),
], ids=["credentials", "no-read-rights", "read-only-user", "unreachable"])
def test_database_problems_say_what_is_wrong(production, s3, error, operation, words):
    findings, status, text = run(production, lambda url: Refusing(error, operation), lambda: s3)
    assert status == 1
    (line,) = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert all(word in line for word in words), line
    assert "Topology Description" not in line
    assert findings[1].misconfigured is (operation != "command" or "Authentication" in str(error))


def test_a_mongo_url_pymongo_refuses_is_named(production, s3):
    def refuse(url):
        raise pymongo.errors.InvalidURI("Username and password must be escaped according to RFC 3986")
    findings, status, text = run(production, refuse, lambda: s3)
    assert status == 1 and "MONGO_URL cannot be used" in text and findings[1].misconfigured


def local_config(tmp_path, **fields):
    return Config(api_key="k", local=True, local_dir=str(tmp_path / "local"), host="127.0.0.1", port=free_port(),
                  **fields)


def test_local_mode_checks_the_folder_and_the_database_it_would_use(tmp_path):
    config = local_config(tmp_path)
    findings = list(preflight.each(config, healthy_mongo, None, lambda: "mongodb://127.0.0.1:27017"))
    assert [f.ok for f in findings] == [True, True, True]
    (tmp_path / "file").write_text("x")
    config = Config(api_key="k", local=True, local_dir=str(tmp_path / "file"), port=free_port())
    findings = list(preflight.each(config, healthy_mongo, None, lambda: preflight.Finding("embedded database")))
    assert findings[1].problem == "is a file, not a folder"


@pytest.fixture
def nothing_on_27017(monkeypatch):
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", "mongodb://127.0.0.1:%d" % free_port())


def test_local_mode_says_it_would_start_a_database_not_that_it_started_one(tmp_path, nothing_on_27017):
    config = local_config(tmp_path)
    finding = preflight.local_database(config)
    assert finding.ok and finding.what == "embedded database (SecantusDB), would be started in %s" % (
        tmp_path / "local" / "db")


def test_a_running_local_server_is_recognised_and_its_database_checked(tmp_path, nothing_on_27017):
    """It said 'FAIL embedded database ..., started in ...' although it started nothing."""
    config = local_config(tmp_path)
    me = Holder(command="./server --use_local", pid=4242, server="http://127.0.0.1:%d" % config.port,
                database="mongodb://127.0.0.1:27999")
    probed = []

    def connect(url):
        probed.append(url)
        return mongomock.MongoClient()
    with local.claim(config.local_dir, me):
        findings = list(preflight.each(config, connect, None, lambda: preflight.local_database(config)))
    assert probed == ["mongodb://127.0.0.1:27999"]
    assert [f.ok for f in findings] == [True, True, True], [f.line() for f in findings]
    running = "./server --use_local (pid 4242), serving http://127.0.0.1:%d" % config.port
    assert findings[0].what == "configuration (local mode, 127.0.0.1:%d, served by the running ./server --use_local " \
                               "(pid 4242))" % config.port
    assert findings[2].what.startswith("database of the running %s: MongoDB mongodb://127.0.0.1:27999" % running)


def test_a_running_local_server_without_a_recorded_database_is_said_to_be_starting(tmp_path, nothing_on_27017):
    config = local_config(tmp_path)
    with local.claim(config.local_dir, Holder(command="./server --use_local", pid=4242, server="http://x:1")):
        finding = preflight.local_database(config)
    assert not finding.ok and "check again once it answers" in finding.problem


@pytest.mark.parametrize("host, words", [("10.9.9.9", "no such address: check HOST"),
                                         ("no-such-host.invalid", "HOST=no-such-host.invalid is not an address")])
def test_an_address_the_server_would_refuse_is_a_problem(production, s3, host, words):
    """check said 'ok ... would listen on 10.9.9.9' and the server then refused to start."""
    config = Config(**{**{f: getattr(production, f) for f in production.__dataclass_fields__}, "host": host})
    findings, status, text = run(config, healthy_mongo, lambda: s3)
    assert status == 1 and not findings[0].ok and words in findings[0].problem, text
    assert text.splitlines()[-1] == "not ready: 1 problem"


def test_a_port_in_use_is_a_problem(production, s3):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", production.port))
        taken.listen()
        findings, status, text = run(production, healthy_mongo, lambda: s3)
    assert status == 1 and "in use" in findings[0].problem


def test_report_counts_every_problem(production):
    out = io.StringIO()
    findings = [preflight.Finding("configuration", "A is wrong"), preflight.Finding("configuration", "B is wrong")]
    assert preflight.report(findings, out) == 1
    assert out.getvalue().splitlines() == ["FAIL  configuration: A is wrong", "FAIL  configuration: B is wrong",
                                           "not ready: 2 problems"]


def test_a_database_nobody_recorded_on_the_folder_is_named_with_its_kill(tmp_path, nothing_on_27017, monkeypatch):
    config = local_config(tmp_path)
    monkeypatch.setattr(local, "databases_on", lambda data_dir: [31337])
    finding = preflight.local_database(config)
    assert not finding.ok and "SecantusDB (pid 31337)" in finding.problem and "kill 31337" in finding.problem


def test_a_database_a_killed_server_left_is_what_a_start_would_stop(tmp_path, nothing_on_27017, monkeypatch):
    config = local_config(tmp_path)
    with local.claim(config.local_dir, Holder(command="./server --use_local", pid=4242, database_pid=31337)):
        pass  # the server was killed: its record stays, its lock is gone
    monkeypatch.setattr(local, "databases_on", lambda data_dir: [31337])
    monkeypatch.setattr(local, "is_database_of", lambda pid, data_dir: pid == 31337)
    finding = preflight.local_database(config)
    assert finding.ok and finding.what.endswith("after stopping SecantusDB pid 31337, which a killed ./server "
                                                "--use_local left running")
