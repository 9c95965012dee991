"""``./server check``'s findings: configuration, MongoDB and both buckets (mongomock and moto in process)."""
import io

import boto3
import botocore.exceptions
import mongomock
import pymongo.errors
import pytest
from moto import mock_aws

from queues import check
from queues.config import Config

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
                  mongo_db_name="numerai", upload_bucket=UPLOADS, dataset_bucket=DATASETS)


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
    findings = check.run(config, connect, s3_client)
    out = io.StringIO()
    return findings, check.report(findings, out), out.getvalue()


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


def test_local_mode_checks_the_folder_and_the_database_it_would_use(tmp_path):
    config = Config(api_key="k", local=True, local_dir=str(tmp_path / "local"))
    findings = check.run(config, healthy_mongo, None, lambda: "mongodb://127.0.0.1:27017")
    assert [f.ok for f in findings] == [True, True, True]
    (tmp_path / "file").write_text("x")
    config = Config(api_key="k", local=True, local_dir=str(tmp_path / "file"))
    findings = check.run(config, healthy_mongo, None, lambda: check.Finding("embedded database"))
    assert findings[1].problem == "is a file, not a folder"


def test_local_mode_names_a_folder_another_server_holds(tmp_path, monkeypatch):
    from queues import local
    monkeypatch.setattr(local, "DEFAULT_LOCAL_URL", "mongodb://127.0.0.1:%d" % local.free_port())  # nothing there
    config = Config(api_key="k", local=True, local_dir=str(tmp_path / "local"))
    assert check.local_database(config).ok
    with local.claim(config.local_dir, "http://127.0.0.1:5151"):
        finding = check.local_database(config)
    assert not finding.ok and "http://127.0.0.1:5151" in finding.problem
    assert check.local_database(Config(api_key="k", local=True, mongo_url="mongodb://db:1")) == "mongodb://db:1"
