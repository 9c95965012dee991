"""Which failures are transient (retried) and which are permanent (recorded)."""
import botocore.exceptions
import pymongo.errors
import pytest

from queues import errors
from queues.errors import PERMANENT, MissingFile, MissingSubmission, PermanentError, is_transient, reason
from scoring.dataset import DatasetError
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
                                 SubmissionError("x"), DatasetError("x")])
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
