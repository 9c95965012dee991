"""Is this configuration ready to take traffic? ``./server check`` and the start-up probe.

``./server check`` is what an operator runs before switching traffic to
a new deployment: the configuration is valid, MongoDB answers and lets
the server read and write its collections, both buckets exist and can
be listed with the keys given, and, with webhooks on, the receiver
accepts a connection. Each line says ``ok`` or exactly what is wrong;
the exit status is 0 only when everything is ok.

The same database probe runs when ``./server`` starts: a database that
rejects the server's credentials or rights will not start accepting
them later, so the server refuses to start; one that does not answer
may come back, so the server starts and answers 503 meanwhile.

botocore and gunicorn (for the server's own listen check) are imported
where they are used, so that a local check and the start-up probe do not
wait for them.
"""
import dataclasses
import os
import re
import socket
import urllib.parse

import pymongo.errors

from queues import local, notify
from queues.errors import misconfiguration

#: A filter no document matches (the backend's ids are ObjectIds and ints), so
#: the probes read and "write" nothing while MongoDB still checks the rights.
NOTHING = {"_id": "submission-criteria check: matches nothing"}
READ = ("submissions", "competitions", "users")
WRITTEN = ("submissions", "competitions")


@dataclasses.dataclass
class Finding:
    """One line of the report: what was checked, and what is wrong with it (None when ok)."""

    what: str
    problem: str = None
    misconfigured: bool = False

    @property
    def ok(self):
        return self.problem is None

    def line(self):
        return "ok    %s" % self.what if self.ok else "FAIL  %s: %s" % (self.what, self.problem)


def without_credentials(url):
    """A MongoDB URL fit to print: no user, no password, no options."""
    return re.sub(r"//[^@/]*@", "//", url).split("?")[0]


def short(exc):
    """The first, useful part of a driver error: no topology dump."""
    return str(exc).split(", Timeout:")[0].split(", full error:")[0] or type(exc).__name__


def database(db, what):
    """Ping, read each collection the server reads and update (matching nothing) each it writes."""
    try:
        db.command("ping")
        for name in READ:
            db[name].find_one(NOTHING)
        for name in WRITTEN:
            db[name].update_one(NOTHING, {"$setOnInsert": {"checked": True}})  # a no-op even on a match
    except pymongo.errors.PyMongoError as exc:
        reason = misconfiguration(exc)
        if reason:
            return Finding(what, reason, misconfigured=True)
        return Finding(what, "the database does not answer (%s: %s)" % (type(exc).__name__, short(exc)))
    return Finding(what)


def connect_and_probe(connect, url, name):
    """:func:`database` on a fresh client from ``connect(url)``, closed afterwards."""
    what = "MongoDB %s, database %s (ping, read, write rights)" % (without_credentials(url), name)
    try:
        client = connect(url)
    except (pymongo.errors.PyMongoError, ValueError) as exc:  # the URL itself cannot be used
        return Finding(what, misconfiguration(exc) or "MONGO_URL cannot be used: %s" % exc, misconfigured=True)
    try:
        return database(client[name], what)
    except pymongo.errors.InvalidName as exc:
        return Finding(what, misconfiguration(exc), misconfigured=True)
    finally:
        client.close()


def bucket(client, name, variable):
    """List at most one key of the bucket: it exists and the keys may read it."""
    import botocore.exceptions
    what = "%s=%s (list)" % (variable, name)
    try:
        client.list_objects_v2(Bucket=name, MaxKeys=1)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        return Finding(what, misconfiguration(exc) or "S3 answered %s: %s" % (error.get("Code"), error.get("Message")),
                       misconfigured=True)
    except botocore.exceptions.BotoCoreError as exc:
        return Finding(what, misconfiguration(exc) or "S3 cannot be reached: %s" % exc)
    return Finding(what)


def folder(path):
    """Local mode's folder exists (or can be made) and can be written."""
    what = "local folder %s" % path
    if os.path.exists(path) and not os.path.isdir(path):
        return Finding(what, "is a file, not a folder", misconfigured=True)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return Finding(what, "cannot be created: %s" % exc.strerror, misconfigured=True)
    if not os.access(path, os.W_OK | os.X_OK):
        return Finding(what, "cannot be written by this user", misconfigured=True)
    return Finding(what)


def listening(config, running=None):
    """The configuration line, with the server's own listen check: an address it would refuse is a problem.

    ``running`` (a local.Holder) is the local server holding this folder:
    when it serves the configured address, that address is its, not a fault.
    """
    from queues import serve
    mode = "local" if config.local else "production"
    address = "%s:%d" % (config.host, config.port)
    if running is not None and running.server == "http://" + address:
        return Finding("configuration (%s mode, %s, served by the running %s)" % (mode, address, running.who()))
    what = "configuration (%s mode, would listen on %s)" % (mode, address)
    try:
        serve.refuse_unless_listenable(config.host, config.port)
    except serve.CannotListen as exc:
        return Finding(what, str(exc))
    return Finding(what)


@dataclasses.dataclass
class Running:
    """The database of the local server that holds the folder: check that one, and say so."""

    holder: local.Holder


def local_database(config):
    """For local mode: the database URL to probe, a Running server's, or a Finding about the one it would start."""
    if config.mongo_url:
        return config.mongo_url
    running = local.holder(config.local_dir)
    if running is not None:
        if running.database:
            return Running(running)
        return Finding("database of the running %s" % running.describe(),
                       "it has not recorded a database (still starting, or it uses MONGO_URL or localhost:27017): "
                       "check again once it answers")
    if local.answers(local.DEFAULT_LOCAL_URL):
        return local.DEFAULT_LOCAL_URL
    data_dir = os.path.join(config.local_dir, "db")
    what = "embedded database (SecantusDB), would be started in %s" % data_dir
    left = local.recorded(config.local_dir).database_pid
    strangers = [pid for pid in local.databases_on(data_dir) if pid != left]
    if strangers:
        pids = " ".join(map(str, strangers))
        return Finding(what, "SecantusDB (pid %s), which no running ./server --use_local started, has the folder open: "
                             "stop it (kill %s), or use another --local-dir" % (pids, pids))
    if left and local.is_database_of(left, data_dir):
        what += " after stopping SecantusDB pid %d, which a killed ./server --use_local left running" % left
    return Finding(what)


def probe_local(choice, connect, name):
    """The finding for what :func:`local_database` chose."""
    if isinstance(choice, Finding):
        return choice
    if isinstance(choice, Running):
        finding = connect_and_probe(connect, choice.holder.database, name)
        finding.what = "database of the running %s: %s" % (choice.holder.describe(), finding.what)
        return finding
    return connect_and_probe(connect, choice, name)


def each(config, connect, s3_client, local_database=local_database):
    """Yield each finding for ``config`` as soon as it is known, so the report's lines come one by one.

    ``connect(url)`` makes a MongoClient; ``s3_client()`` an S3 client
    (production); ``local_database()`` says which database local mode
    would use: a URL to probe, a Running server's, or a Finding when it
    would start its own.
    """
    yield listening(config, local.holder(config.local_dir) if config.local else None)
    if config.local:
        yield folder(config.local_dir)
        yield probe_local(local_database(), connect, config.mongo_db_name)
        if config.notify_url:
            yield receiver(config)
        return
    yield connect_and_probe(connect, config.mongo_url, config.mongo_db_name)
    import botocore.exceptions
    try:
        client = s3_client()
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        yield Finding("S3 client", "cannot be made: %s" % exc, misconfigured=True)
        return
    yield bucket(client, config.upload_bucket, "S3_UPLOAD_BUCKET")
    yield bucket(client, config.dataset_bucket, "S3_DATASET_BUCKET")
    if config.notify_url:
        yield receiver(config)


def receiver(config):
    """With NOTIFY_URL set: the webhook settings, and whether the receiver accepts a connection.

    Only a TCP connection is opened: a request the receiver cannot verify
    would reach the backend's alerts. One that does not answer is a
    problem: events wait in MongoDB meanwhile, and are given up after
    NOTIFY_MAX_AGE.
    """
    what = "webhooks: %s" % notify.describe(config)
    parts = urllib.parse.urlsplit(config.notify_url)
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    try:
        socket.create_connection(address, timeout=min(config.notify_timeout, 5.0)).close()
    except OSError as exc:
        return Finding(what, "cannot connect to %s:%d (%s: %s); until it answers, events wait in MongoDB, and each is "
                             "given up %s after it was recorded" % (address[0], address[1], type(exc).__name__,
                                                                    exc.strerror or exc,
                                                                    notify.duration(config.notify_max_age)))
    return Finding(what)


def report(findings, out):
    """Print one line per finding as it comes, then a verdict; returns the exit status (0: ready)."""
    problems = []
    for finding in findings:
        out.write(finding.line() + "\n")
        out.flush()
        if not finding.ok:
            problems.append(finding)
    if problems:
        out.write("not ready: %d problem%s\n" % (len(problems), "" if len(problems) == 1 else "s"))
        return 1
    out.write("ready\n")
    return 0
