"""Where submission files and round datasets come from.

Two thin wrappers with the same three methods: :class:`S3Files` for the
buckets and :class:`LocalFiles` for a folder laid out like them
(``<root>/uploads/<username>/<filename>`` and
``<root>/datasets/<competition_id>/numerai_datasets.zip``).
"""
import logging
import os
import shutil
import threading

import botocore.exceptions

from queues.errors import DatasetChanged, MissingFile

log = logging.getLogger(__name__)

DATASET_NAME = "numerai_datasets.zip"


def submission_key(username, filename):
    """S3 key of a submission file."""
    return "%s/%s" % (username, filename)


def dataset_key(competition_id):
    """S3 key of a round's dataset zip."""
    return "%s/%s" % (int(competition_id), DATASET_NAME)


def partial_name(path, suffix=".part"):
    """Where to write ``path`` before moving it into place: a name no other process or thread uses.

    Servers on one machine share the cache folder (it defaults to one per
    user), so with one fixed name a second writer truncates the first's
    file, and whichever moves it last finds it gone.
    """
    return "%s.%d-%d%s" % (path, os.getpid(), threading.get_ident(), suffix)


class S3Files:
    """Submissions and datasets in two S3 buckets; datasets cached on local disk.

    The dataset is downloaded once per version: the cached copy is named
    by the object's ETag, so a replaced dataset is fetched again.
    """

    def __init__(self, client, upload_bucket, dataset_bucket, cache_dir):
        self.client = client
        self.upload_bucket = upload_bucket
        self.dataset_bucket = dataset_bucket
        self.cache_dir = cache_dir

    def _missing(self, exc):
        """True when the object is absent. A missing bucket is not: it is a
        misconfiguration (``errors.misconfiguration``), no submission's fault."""
        return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")

    def _bucket_exists(self, bucket):
        """Raise NoSuchBucket when ``bucket`` is absent.

        S3 answers a HEAD with a bare 404 whether the key or the bucket is
        missing; a missing bucket must not fail the submission as a missing file.
        """
        try:
            self.client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NotFound", "NoSuchBucket"):
                raise
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist", "BucketName": bucket},
                 "ResponseMetadata": exc.response.get("ResponseMetadata", {})}, "HeadBucket") from None

    def submission(self, username, filename):
        """Bytes of a submission file; MissingFile when it is not there."""
        key = submission_key(username, filename)
        try:
            return self.client.get_object(Bucket=self.upload_bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if self._missing(exc):
                raise MissingFile("the submission file %s is not in storage" % key) from None
            raise

    def dataset_version(self, competition_id):
        """A string that changes whenever the round's dataset does."""
        key = dataset_key(competition_id)
        try:
            head = self.client.head_object(Bucket=self.dataset_bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if self._missing(exc):
                self._bucket_exists(self.dataset_bucket)
                raise MissingFile("round %s has no dataset (%s)" % (competition_id, key)) from None
            raise
        return head["ETag"].strip('"')

    def dataset(self, competition_id):
        """``(local path, version)`` of the round's dataset zip, downloading it when new.

        The copy is kept only if the object's ETag is the same after the
        download as before it, so a dataset replaced meanwhile is never
        cached under the other version's name.
        """
        version = self.dataset_version(competition_id)
        folder = os.path.join(self.cache_dir, "datasets", str(int(competition_id)))
        path = os.path.join(folder, "%s-%s" % (version, DATASET_NAME))
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            partial = partial_name(path)
            try:
                self.client.download_file(self.dataset_bucket, dataset_key(competition_id), partial)
                if self.dataset_version(competition_id) != version:
                    raise DatasetChanged("round %s's dataset was replaced during the download" % competition_id)
                os.replace(partial, path)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        return path, version


class LocalFiles:
    """The same interface over a folder, for ``--use_local``."""

    def __init__(self, root):
        self.root = root

    def submission_path(self, username, filename):
        return os.path.join(self.root, "uploads", username, filename)

    def dataset_path(self, competition_id):
        return os.path.join(self.root, "datasets", str(int(competition_id)), DATASET_NAME)

    def submission(self, username, filename):
        path = self.submission_path(username, filename)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise MissingFile("the submission file %s is not in storage" % submission_key(username, filename)) from None

    def dataset_version(self, competition_id):
        path = self.dataset_path(competition_id)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise MissingFile("round %s has no dataset (%s)" % (competition_id, dataset_key(competition_id))) from None
        return "%d-%d" % (stat.st_size, stat.st_mtime_ns)

    def dataset(self, competition_id):
        return self.dataset_path(competition_id), self.dataset_version(competition_id)

    def put_submission(self, username, filename, raw):
        """Write a submission file (used to seed the demo round)."""
        path = self.submission_path(username, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(raw)

    def put_dataset(self, competition_id, source_path):
        """Copy a dataset zip into place (used to seed the demo round)."""
        path = self.dataset_path(competition_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(source_path, path)
