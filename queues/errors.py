"""Which failures end a submission and which are worth another try.

A *permanent* failure has a reason a participant can act on and ends the
submission as failed. A *transient* one (a lost connection, a timeout, a
storage hiccup) is retried with backoff and never recorded as a verdict.
"""
import botocore.exceptions
import pymongo.errors

from scoring.dataset import DatasetError
from scoring.submission import SubmissionError


class PermanentError(Exception):
    """Judging cannot succeed until someone changes the inputs."""


class MissingFile(PermanentError):
    """The submission file or the round's dataset is not in storage."""


class MissingSubmission(PermanentError):
    """The submission document is gone."""


class DatasetChanged(ConnectionError):
    """The round's dataset was replaced while being read: try again (transient)."""


#: Failures of the inputs themselves: retrying cannot help.
PERMANENT = (PermanentError, SubmissionError, DatasetError)

#: botocore's connection-level failures: endpoint, proxy, TLS, closed, timeouts.
_TRANSIENT_AWS = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)


def is_transient(exc):
    """True for errors that another attempt, later, may not see."""
    if isinstance(exc, (pymongo.errors.ConnectionFailure, pymongo.errors.NetworkTimeout, pymongo.errors.ExecutionTimeout)):
        return True
    if isinstance(exc, pymongo.errors.OperationFailure) and getattr(exc, "has_error_label", lambda _: False)("RetryableWriteError"):
        return True
    if isinstance(exc, _TRANSIENT_AWS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("Throttling", "SlowDown", "RequestTimeout")
    return isinstance(exc, (ConnectionError, TimeoutError))


def reason(exc):
    """The message to record for a permanent failure."""
    return str(exc) or type(exc).__name__
