"""Which failures are transient (retried) and which are permanent (recorded)."""
import botocore.exceptions
import pymongo.errors
import pytest

from queues import errors
from queues.errors import PERMANENT, MissingFile, MissingSubmission, PermanentError, is_transient, reason
from scoring.dataset import DatasetError
from scoring.errors import DataError
from scoring.submission import SubmissionError


def client_error(code, status, operation="GetObject"):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "test"}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


TRANSIENT = [
    pymongo.errors.AutoReconnect("connection reset"),
    pymongo.errors.ServerSelectionTimeoutError("no servers"),
    pymongo.errors.NetworkTimeout("timed out"),
    pymongo.errors.ExecutionTimeout("operation exceeded time limit", code=50),
    botocore.exceptions.EndpointConnectionError(endpoint_url="https://127.0.0.1:1"),
    botocore.exceptions.ConnectTimeoutError(endpoint_url="https://127.0.0.1:1"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="https://127.0.0.1:1"),
    client_error("InternalError", 500),
    client_error("ServiceUnavailable", 503),
    client_error("SlowDown", 503),
    client_error("SlowDown", 0),  # the code alone is enough
    client_error("Throttling", 400),
    ConnectionResetError("peer went away"),
    TimeoutError("slow"),
]

NOT_TRANSIENT = [
    client_error("AccessDenied", 403),
    client_error("NoSuchKey", 404),
    client_error("NoSuchBucket", 404),
    ValueError("bad value"),
    KeyError("x"),
    pymongo.errors.DuplicateKeyError("E11000 duplicate key", code=11000),
    pymongo.errors.OperationFailure("bad query", code=2),
    MissingFile("gone"),
    SubmissionError("bad file"),
    DatasetError("bad round"),
]


def name(exc):
    if isinstance(exc, botocore.exceptions.ClientError):
        return "ClientError-%s-%s" % (exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return type(exc).__name__


@pytest.mark.parametrize("exc", TRANSIENT, ids=name)
def test_transient(exc):
    assert is_transient(exc) is True


@pytest.mark.parametrize("exc", NOT_TRANSIENT, ids=name)
def test_not_transient(exc):
    assert is_transient(exc) is False


def test_retryable_write_label_makes_an_operation_failure_transient():
    exc = pymongo.errors.OperationFailure("primary stepped down", code=189,
                                          details={"errorLabels": ["RetryableWriteError"]})
    assert is_transient(exc) is True


def test_proxy_connection_error_is_transient():
    exc = botocore.exceptions.ProxyConnectionError(proxy_url="http://127.0.0.1:1", error="refused")
    assert is_transient(exc) is True


@pytest.mark.parametrize("exc", [MissingFile("x"), MissingSubmission("x"), PermanentError("x"),
                                 SubmissionError("x"), DatasetError("x"), DataError("x")])
def test_permanent_failures_are_caught_by_PERMANENT(exc):
    with pytest.raises(PERMANENT):
        raise exc


@pytest.mark.parametrize("exc", [ValueError("x"), pymongo.errors.AutoReconnect("x"), client_error("SlowDown", 503)])
def test_other_failures_are_not_permanent(exc):
    assert not isinstance(exc, PERMANENT)


def test_reason_is_the_message_or_the_type_name():
    assert reason(MissingFile("the file is gone")) == "the file is gone"
    assert reason(SubmissionError()) == "SubmissionError"
    assert errors.reason(ValueError("")) == "ValueError"


# -- misconfiguration: neither the submission's fault nor cured by retrying -----------------
def auth_failed_later():
    """What pymongo raises for every operation after an authentication failure."""
    return pymongo.errors.ServerSelectionTimeoutError(
        "127.0.0.1:27017: authentication failed, full error: {'ok': 0.0, 'errmsg': 'authentication failed', "
        "'code': 18, 'codeName': 'AuthenticationFailed'}, Timeout: 3.0s, Topology Description: <...>")


MISCONFIGURED = [
    (pymongo.errors.OperationFailure("Authentication failed.", code=18), "MONGO_URL"),
    (pymongo.errors.OperationFailure("not authorized on numerai to execute command", code=13), "MONGO_DB_NAME"),
    (pymongo.errors.OperationFailure("Could not find user", code=11), "MONGO_URL"),
    (pymongo.errors.OperationFailure("bad auth : Authentication failed.", code=8000), "MONGO_URL"),
    (auth_failed_later(), "MONGO_URL"),
    (pymongo.errors.InvalidURI("Username and password must be escaped"), "MONGO_URL"),
    (pymongo.errors.InvalidName("database names cannot contain the character ' '"), "MONGO_DB_NAME"),
    (client_error("InvalidAccessKeyId", 403), "S3_ACCESS_KEY"),
    (client_error("SignatureDoesNotMatch", 403), "S3_SECRET_KEY"),
    (client_error("AccessDenied", 403), "S3_UPLOAD_BUCKET"),
    (client_error("NoSuchBucket", 404), "S3_DATASET_BUCKET"),
    (botocore.exceptions.NoCredentialsError(), "S3_ACCESS_KEY"),
]


@pytest.mark.parametrize("exc, setting", MISCONFIGURED, ids=lambda value: name(value) if isinstance(value, Exception) else value)
def test_misconfiguration_names_the_setting_to_fix(exc, setting):
    assert errors.is_misconfiguration(exc) is True
    assert setting in errors.misconfiguration(exc)
    assert not isinstance(exc, PERMANENT)  # never recorded against a submission


@pytest.mark.parametrize("exc", TRANSIENT + [e for e in NOT_TRANSIENT if not (
    isinstance(e, botocore.exceptions.ClientError) and e.response["Error"]["Code"] in ("AccessDenied", "NoSuchBucket"))],
    ids=name)
def test_other_failures_are_not_misconfigurations(exc):
    assert errors.is_misconfiguration(exc) is False
    assert errors.misconfiguration(exc) is None


def test_a_bucket_name_the_error_carries_is_named():
    exc = botocore.exceptions.ClientError(
        {"Error": {"Code": "NoSuchBucket", "Message": "x", "BucketName": "uploads-prod"},
         "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")
    assert "uploads-prod" in errors.misconfiguration(exc)
