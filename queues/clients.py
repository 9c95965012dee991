"""The clients of the two stores, made from the configuration: MongoDB, and S3 or the local folder.

Kept apart from :mod:`queues.service` because ``./server check`` needs
them without the judging code (which takes seconds to import).
"""
import functools
import logging

import pymongo

log = logging.getLogger(__name__)


def s3_client(config):
    """A boto3 S3 client with short timeouts and a few retries."""
    import boto3
    import botocore.config
    return boto3.client(
        "s3", endpoint_url=config.s3_endpoint_url or None,
        aws_access_key_id=config.s3_access_key, aws_secret_access_key=config.s3_secret_key,
        config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"},
                                      connect_timeout=5, read_timeout=30))


def build_files(config):
    """Where submission files and datasets come from: the local folder, or the two buckets."""
    from queues.files import LocalFiles, S3Files
    if config.local:
        return LocalFiles(config.local_dir)
    return S3Files(s3_client(config), config.upload_bucket, config.dataset_bucket, config.cache_dir)


def client_for(config, mongo_url):
    """A MongoClient with timeouts short enough that intake answers 503 rather than hangs."""
    return pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=config.mongo_timeout_ms,
                               connectTimeoutMS=config.mongo_timeout_ms, socketTimeoutMS=30000)


def connect(config, mongo_url):
    """The configured database through a new client."""
    return client_for(config, mongo_url)[config.mongo_db_name]


def database_ready(config, mongo_url):
    """False (after saying why) when the database rejects this server's settings.

    A database that does not answer may come back: the server starts and
    answers 503 until it does. One that rejects the credentials will not.
    """
    from queues import preflight
    finding = preflight.connect_and_probe(functools.partial(client_for, config), mongo_url, config.mongo_db_name)
    if finding.misconfigured:
        log.error("cannot start: %s", finding.problem)
        return False
    if not finding.ok:
        log.warning("%s; starting anyway: requests answer 503 until it does", finding.problem)
    return True
