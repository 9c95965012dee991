"""Submission files and round datasets: S3 (moto, in process) and a local folder."""
import collections
import os
import threading

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from queues.errors import MissingFile, PermanentError, is_transient, misconfiguration
from queues.files import DATASET_NAME, LocalFiles, S3Files, dataset_key, submission_key

UPLOADS, DATASETS = "uploads-test", "datasets-test"


class Counting:
    """Wraps an object and counts calls to its methods by name."""

    def __init__(self, inner, fail=None):
        self.inner = inner
        self.calls = collections.Counter()
        self.fail = fail or {}

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            if name in self.fail:
                return self.fail[name](attr, *args, **kwargs)
            return attr(*args, **kwargs)
        return call


@pytest.fixture
def s3(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=UPLOADS)
        client.create_bucket(Bucket=DATASETS)
        yield client


@pytest.fixture
def client(s3):
    return Counting(s3)


@pytest.fixture
def s3files(client, tmp_path):
    return S3Files(client, UPLOADS, DATASETS, str(tmp_path / "cache"))


def test_keys():
    assert submission_key("alice", "p.csv") == "alice/p.csv"
    assert dataset_key("41") == dataset_key(41) == "41/" + DATASET_NAME


# -- S3 ----------------------------------------------------------------------------------
def test_s3_submission_bytes(s3, s3files):
    raw = b"id,probability\nn1,0.5\n"
    s3.put_object(Bucket=UPLOADS, Key="alice/predictions.csv", Body=raw)
    assert s3files.submission("alice", "predictions.csv") == raw


def test_s3_missing_submission_names_the_key(s3files):
    with pytest.raises(MissingFile) as raised:
        s3files.submission("alice", "gone.csv")
    assert "alice/gone.csv" in str(raised.value)
    assert isinstance(raised.value, PermanentError)
    assert not is_transient(raised.value)



@pytest.mark.parametrize("bucket", ["upload", "dataset"])
def test_s3_missing_bucket_is_a_misconfiguration_not_a_missing_file(s3, tmp_path, bucket):
    """A wrong bucket name must not fail every submission as 'file not in storage'."""
    names = {"upload": UPLOADS, "dataset": DATASETS, bucket: "no-such-bucket-here"}
    files = S3Files(s3, names["upload"], names["dataset"], str(tmp_path))
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        files.submission("alice", "p.csv") if bucket == "upload" else files.dataset(41)
    assert "S3_%s_BUCKET" % bucket.upper() in misconfiguration(raised.value)


def test_s3_bare_404_from_a_head_is_told_apart_for_a_missing_bucket(s3, tmp_path):
    """Real S3 answers HEAD on a missing bucket with a bare 404, as for a missing key."""
    def bare_404(method, *args, **kwargs):
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "404", "Message": "Not Found"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")
    missing_bucket = S3Files(Counting(s3, fail={"head_object": bare_404}), UPLOADS, "no-such-bucket", str(tmp_path))
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        missing_bucket.dataset(41)
    assert "no-such-bucket" in misconfiguration(raised.value)
    missing_key = S3Files(Counting(s3, fail={"head_object": bare_404}), UPLOADS, DATASETS, str(tmp_path))
    with pytest.raises(MissingFile):
        missing_key.dataset(41)

def test_s3_server_error_is_not_a_missing_file(s3, tmp_path):
    def unavailable(method, *args, **kwargs):
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "SlowDown", "Message": "reduce your rate"},
             "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    files = S3Files(Counting(s3, fail={"get_object": unavailable, "head_object": unavailable}),
                    UPLOADS, DATASETS, str(tmp_path))
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        files.submission("alice", "p.csv")
    assert is_transient(raised.value)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        files.dataset(41)[0]
    assert is_transient(raised.value)


def test_s3_dataset_is_downloaded_once_and_reused(s3, client, s3files, tmp_path):
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"version one")
    path = s3files.dataset(41)[0]
    assert path.startswith(str(tmp_path / "cache") + os.sep)
    with open(path, "rb") as handle:
        assert handle.read() == b"version one"
    assert client.calls["download_file"] == 1

    assert s3files.dataset("41")[0] == path
    assert client.calls["download_file"] == 1
    # a fresh instance on the same cache (a restart) reuses it too
    again = S3Files(client, UPLOADS, DATASETS, str(tmp_path / "cache"))
    assert again.dataset(41)[0] == path
    assert client.calls["download_file"] == 1
    assert [name for name in os.listdir(os.path.dirname(path))] == [os.path.basename(path)]


def test_s3_replaced_dataset_is_downloaded_again(s3, client, s3files):
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"version one")
    first = s3files.dataset(41)[0]
    first_version = s3files.dataset_version(41)
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"version two")
    assert s3files.dataset_version(41) != first_version
    second, second_version = s3files.dataset(41)
    assert second_version == s3files.dataset_version(41) != first_version
    assert second != first
    assert client.calls["download_file"] == 2
    with open(second, "rb") as handle:
        assert handle.read() == b"version two"


def test_s3_dataset_version_is_the_etag(s3, s3files):
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"zip bytes")
    etag = s3.head_object(Bucket=DATASETS, Key="41/" + DATASET_NAME)["ETag"]
    assert s3files.dataset_version(41) == etag.strip('"')


def test_s3_rounds_are_cached_separately(s3, s3files):
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"same bytes")
    s3.put_object(Bucket=DATASETS, Key="42/" + DATASET_NAME, Body=b"same bytes")
    assert s3files.dataset(41)[0] != s3files.dataset(42)[0]


def test_s3_missing_dataset(s3files, client):
    with pytest.raises(MissingFile) as raised:
        s3files.dataset(42)[0]
    assert "no dataset" in str(raised.value)
    assert "42/" + DATASET_NAME in str(raised.value)
    assert client.calls["download_file"] == 0


def test_s3_interrupted_download_leaves_no_cached_copy(s3, tmp_path):
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"the whole zip")

    def cut_off(method, bucket, key, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"the wh")
        raise botocore.exceptions.ConnectionClosedError(endpoint_url="https://127.0.0.1:1")

    broken = S3Files(Counting(s3, fail={"download_file": cut_off}), UPLOADS, DATASETS, str(tmp_path))
    with pytest.raises(botocore.exceptions.ConnectionClosedError) as raised:
        broken.dataset(41)
    assert is_transient(raised.value)
    working = S3Files(Counting(s3), UPLOADS, DATASETS, str(tmp_path))
    with open(working.dataset(41)[0], "rb") as handle:
        assert handle.read() == b"the whole zip"
    assert working.client.calls["download_file"] == 1


def test_s3_two_servers_sharing_the_cache_download_one_dataset_at_once(s3, tmp_path):
    """Servers on one machine share the cache folder: a download finishing in the middle of another's is no error.

    The second server's whole download runs while the first's has written
    its copy but not yet moved it into place (threads stand in for the two
    processes; each writes under its own name).
    """
    s3.put_object(Bucket=DATASETS, Key="41/" + DATASET_NAME, Body=b"the whole zip")
    cache = str(tmp_path / "shared-cache")
    second = S3Files(Counting(s3), UPLOADS, DATASETS, cache)
    found = {}

    def download_then_let_the_other_finish(method, bucket, key, filename, *args, **kwargs):
        method(bucket, key, filename, *args, **kwargs)
        other = threading.Thread(target=lambda: found.setdefault("second", second.dataset(41)))
        other.start()
        other.join()
    first = S3Files(Counting(s3, fail={"download_file": download_then_let_the_other_finish}), UPLOADS, DATASETS, cache)
    path, version = first.dataset(41)
    assert found["second"] == (path, version)
    with open(path, "rb") as handle:
        assert handle.read() == b"the whole zip"
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no partial copy left behind


# -- local folder --------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path):
    return LocalFiles(str(tmp_path / "root"))


def test_local_submission_round_trip(local, tmp_path):
    local.put_submission("alice", "p.csv", b"id,probability\n")
    assert local.submission("alice", "p.csv") == b"id,probability\n"
    assert os.path.exists(tmp_path / "root" / "uploads" / "alice" / "p.csv")


def test_local_missing_submission_names_the_key(local):
    with pytest.raises(MissingFile) as raised:
        local.submission("alice", "gone.csv")
    assert "alice/gone.csv" in str(raised.value)


def test_local_dataset(local, tmp_path):
    source = tmp_path / "source.zip"
    source.write_bytes(b"zip one")
    local.put_dataset(41, str(source))
    path = local.dataset("41")[0]
    assert path == str(tmp_path / "root" / "datasets" / "41" / DATASET_NAME)
    with open(path, "rb") as handle:
        assert handle.read() == b"zip one"


def test_local_missing_dataset(local):
    with pytest.raises(MissingFile) as raised:
        local.dataset(42)[0]
    assert "no dataset" in str(raised.value)
    assert "42/" + DATASET_NAME in str(raised.value)
    with pytest.raises(MissingFile, match="no dataset"):
        local.dataset_version(42)


def test_local_dataset_version_changes_when_replaced(local, tmp_path):
    source = tmp_path / "source.zip"
    source.write_bytes(b"zip one")
    local.put_dataset(41, str(source))
    first = local.dataset_version(41)
    assert local.dataset_version(41) == first  # stable while unchanged
    source.write_bytes(b"zip number two")
    local.put_dataset(41, str(source))
    assert local.dataset_version(41) != first
