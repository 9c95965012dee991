"""Which failures end a submission and which are worth another try.

A *permanent* failure has a reason a participant can act on and ends the
submission as failed. A *transient* one (a lost connection, a timeout, a
storage hiccup) is retried with backoff and never recorded as a verdict.
A *misconfiguration* (the database or S3 rejects the server's own
credentials, a bucket that does not exist) is neither: no submission is
at fault and retrying at once cannot help, so it is reported to the
operators, the submission is left for a later recovery sweep, and the
server refuses to start with it.
"""
import re

import botocore.exceptions
import pymongo.errors

from scoring.errors import DataError


class PermanentError(Exception):
    """Judging cannot succeed until someone changes the inputs."""


class MissingFile(PermanentError):
    """The submission file or the round's dataset is not in storage."""


class MissingSubmission(PermanentError):
    """The submission document is gone."""


class MalformedSubmission(PermanentError):
    """A field of the submission document the service needs is missing or of another type (see queues.fields)."""


class LateFile(Exception):
    """Another user's earlier file is not in storage yet and may still arrive.

    Neither permanent (the candidate did nothing wrong) nor a fault to
    retry at once: the worker hands the submission to the recovery sweep,
    which judges it again a sweep later, so no thread waits on the file.
    """


class DatasetChanged(ConnectionError):
    """The round's dataset was replaced while being read: try again (transient)."""


#: Failures of the inputs themselves: retrying cannot help. ``DataError`` is what
#: ``scoring`` raises about data (a broken file, a round's data, predictions of the
#: wrong length), SubmissionError and DatasetError included; any other ValueError
#: is a bug and is recorded as an internal error.
PERMANENT = (PermanentError, DataError)

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


#: MongoDB error codes that mean the server's settings are wrong, with what to fix.
MONGO_MISCONFIGURATION = {
    18: "MongoDB rejected the server's credentials (AuthenticationFailed): check the user, password and "
        "authSource in MONGO_URL",
    11: "MongoDB does not know the user in MONGO_URL (UserNotFound)",
    13: "the MongoDB user in MONGO_URL is not authorised to do this (Unauthorized): grant it readWrite on "
        "the database MONGO_DB_NAME",
    8000: "MongoDB Atlas rejected the server's credentials (AtlasError): check the user and password in MONGO_URL",
    73: "MONGO_DB_NAME is not a valid database name (InvalidNamespace)",
}
#: S3 error codes that mean the server's settings are wrong, with what to fix.
S3_MISCONFIGURATION = {
    "InvalidAccessKeyId": "S3 does not know the access key: check S3_ACCESS_KEY",
    "SignatureDoesNotMatch": "S3 rejected the request signature: check S3_SECRET_KEY",
    "AccessDenied": "S3 denied access: the keys in S3_ACCESS_KEY and S3_SECRET_KEY need s3:ListBucket and "
                    "s3:GetObject on S3_UPLOAD_BUCKET and S3_DATASET_BUCKET",
    "AllAccessDisabled": "S3 has disabled all access to the bucket",
    "NoSuchBucket": "the bucket does not exist: check S3_UPLOAD_BUCKET and S3_DATASET_BUCKET",
    "InvalidBucketName": "the bucket name is not valid: check S3_UPLOAD_BUCKET and S3_DATASET_BUCKET",
    "AuthorizationHeaderMalformed": "S3 expects another region for these keys or this bucket: check S3_ENDPOINT_URL",
    "PermanentRedirect": "the bucket lives at another endpoint or region: check S3_ENDPOINT_URL",
}
#: Once an authentication failure has marked the server unusable, pymongo
#: raises ServerSelectionTimeoutError for every later operation, carrying the
#: original error only in its message.
_CODE_IN_MESSAGE = re.compile(r"'code': (\d+)")


def misconfiguration(exc):
    """What is misconfigured, when ``exc`` says the server's own settings are wrong; else None.

    The text names the setting to fix and never includes a secret.
    """
    if isinstance(exc, pymongo.errors.InvalidName):
        return "MONGO_DB_NAME is not a valid database name (%s)" % exc
    if isinstance(exc, pymongo.errors.ConfigurationError):
        return "MONGO_URL cannot be used: %s" % exc
    if isinstance(exc, pymongo.errors.OperationFailure) and exc.code in MONGO_MISCONFIGURATION:
        return MONGO_MISCONFIGURATION[exc.code]
    if isinstance(exc, pymongo.errors.ServerSelectionTimeoutError):
        for code in _CODE_IN_MESSAGE.findall(str(exc)):
            if int(code) in MONGO_MISCONFIGURATION:
                return MONGO_MISCONFIGURATION[int(code)]
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        what = S3_MISCONFIGURATION.get(error.get("Code", ""))
        if what is not None:
            bucket = error.get("BucketName")
            return "%s (%s%s)" % (what, error["Code"], ", bucket %s" % bucket if bucket else "")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no S3 credentials: set S3_ACCESS_KEY and S3_SECRET_KEY"
    return None


def is_misconfiguration(exc):
    """True when retrying with the same settings cannot succeed: an operator must fix them."""
    return misconfiguration(exc) is not None
