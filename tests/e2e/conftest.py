"""End-to-end fixtures: a real database, a real S3 endpoint, the real server.

Everything runs on 127.0.0.1. SecantusDB (MongoDB wire protocol) and
moto's S3 server are started once per session; every test gets its own
database name and its own buckets, and starts ``./server`` as a
subprocess in production mode against them.

Nothing here sleeps in place of synchronisation: waiting is always
polling a condition with a deadline (:func:`wait_for`).
"""
import dataclasses
import datetime
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import numpy as np
import pandas as pd
import pymongo
import pytest
import requests
from bson import ObjectId

from queues import demo
from queues.local import answers
from scoring import concordance, dataset
from scoring.rules import Rules
from tests.oracle import Oracle

REPO = Path(__file__).resolve().parents[2]
#: The script under test: the real entry point.
SERVER = REPO / "server"

HOST = "127.0.0.1"
POLL = 0.05
#: Small rounds keep a whole round's judging well under a second.
SMALL = dict(features=8, train_rows=1500, validation_rows=1200, test_rows=1200, live_rows=600)
FIRST_CREATED = datetime.datetime(2017, 3, 20, 9, 0)
S3_KEYS = dict(aws_access_key_id="e2e-access-key", aws_secret_access_key="e2e-secret-key-not-for-logs")
#: Environment variables the server reads; stripped from the inherited environment.
SERVER_VARIABLES = ("MONGO_URL", "MONGO_DB_NAME", "S3_UPLOAD_BUCKET", "S3_DATASET_BUCKET", "S3_ACCESS_KEY",
                    "S3_SECRET_KEY", "S3_ENDPOINT_URL", "PORT", "HOST", "API_KEY", "CACHE_DIR", "RECOVERY_INTERVAL",
                    "STOP_TIMEOUT", "MONGO_TIMEOUT_MS", "ORIGINALITY_THREADS", "HTTP_THREADS", "LOG_LEVEL",
                    "SERVER_NAME", "LEASE_SECONDS", "NOTIFY_URL", "NOTIFY_SECRET", "NOTIFY_TIMEOUT", "NOTIFY_MAX_AGE")


def pytest_collection_modifyitems(items):
    """Every end-to-end test starts real servers: mark them all ``slow``, so that
    ``python -m pytest -m "not slow"`` is the quick subset."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


# -- small utilities ------------------------------------------------------------
def free_port():
    """A loopback port nothing listens on right now (bound to port 0, then released)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def listening(port, timeout=0.2):
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, what, detail=None, interval=POLL):
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises AssertionError naming ``what`` (and ``detail()``, when given,
    e.g. a server log tail) if the deadline passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ("\n" + detail()) if detail else ""
            raise AssertionError("timed out after %.1fs waiting for %s%s" % (timeout, what, extra))
        time.sleep(interval)


def tail(path, lines=60):
    """The last ``lines`` lines of a log file, for assertion messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log at %s)" % path
    return "--- last lines of %s ---\n%s" % (path, "\n".join(text.splitlines()[-lines:]))


def end_process_group(process, grace=10.0):
    """SIGTERM the process group of ``process``, then SIGKILL it if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # also whatever the leader left behind in its group
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(10)


# -- database ---------------------------------------------------------------------
class Database:
    """SecantusDB on a fixed loopback port; ``stop``/``start`` keep port and storage."""

    def __init__(self, storage, log_path, options=()):
        self.port = free_port()
        self.url = "mongodb://%s:%d" % (HOST, self.port)
        self.storage = storage
        self.log_path = log_path
        self.options = list(options)  # e.g. ["--auth"]
        self.process = None

    def answers(self):
        return answers(self.url, 300)

    def start(self, timeout=60):
        assert self.process is None or self.process.poll() is not None, "database already running"
        command = [sys.executable, "-m", "secantus", "--host", HOST, "--port", str(self.port),
                   "--storage-path", str(self.storage), "--log-level", "WARNING"] + self.options
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

        def up():
            assert self.process.poll() is None, "SecantusDB exited with %s\n%s" % (self.process.returncode, tail(self.log_path))
            return self.answers()
        wait_for(up, timeout, "SecantusDB to answer on %s" % self.url, lambda: tail(self.log_path))

    def stop(self):
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port is closed."""
        if self.process is not None:
            end_process_group(self.process)
        wait_for(lambda: not listening(self.port), 10, "the database port to close")

    def client(self, **options):
        options.setdefault("serverSelectionTimeoutMS", 5000)
        return pymongo.MongoClient(self.url, **options)


@pytest.fixture(scope="session")
def database(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secantus")
    db = Database(folder / "data", folder / "secantus.log")
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="session")
def mongo(database):
    client = database.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def e2e_db(mongo, request):
    """A fresh database (by name) for one test; dropped afterwards."""
    name = "e2e_%s_%s" % (request.node.name[:30].replace("[", "_").replace("]", "_"), uuid.uuid4().hex[:8])
    try:
        yield mongo[name]
    finally:
        try:
            mongo.drop_database(name)
        except pymongo.errors.PyMongoError:
            pass


# -- S3 ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    log_path = folder / "moto.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(["moto_server", "-H", HOST, "-p", str(port)], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = "http://%s:%d" % (HOST, port)
    try:
        def up():
            assert process.poll() is None, "moto_server exited with %s\n%s" % (process.returncode, tail(log_path))
            try:
                return requests.get(url + "/moto-api/", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(up, 60, "moto_server to answer on %s" % url, lambda: tail(log_path))
        yield url
    finally:
        end_process_group(process)


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                        config=botocore.config.Config(retries={"max_attempts": 2}), **S3_KEYS)


@dataclasses.dataclass
class Storage:
    """One test's database and buckets, as the server will see them."""

    db: object
    s3: object
    endpoint: str
    upload_bucket: str
    dataset_bucket: str


@pytest.fixture
def storage(e2e_db, s3, s3_endpoint):
    tag = uuid.uuid4().hex[:12]
    upload, datasets = "e2e-uploads-" + tag, "e2e-datasets-" + tag
    s3.create_bucket(Bucket=upload)
    s3.create_bucket(Bucket=datasets)
    return Storage(e2e_db, s3, s3_endpoint, upload, datasets)


# -- rounds -------------------------------------------------------------------------
@dataclasses.dataclass
class Sub:
    """One submission: its document and file as the tournament backend leaves them."""

    submission_id: str
    username: str
    competition_id: int
    created: datetime.datetime
    values: object = None          # predictions in round row order (float64), None for broken files
    raw: bytes = None              # the uploaded file; None means nothing is uploaded
    reported_logloss: float = None  # a validationLogloss the backend already wrote

    @property
    def filename(self):
        return "predictions-%s.csv" % self.submission_id[-6:]

    @property
    def oid(self):
        return ObjectId(self.submission_id)

    def document(self):
        doc = demo.submission_document(self.submission_id, self.username, self.created, self.competition_id)
        assert doc["filename"] == self.filename
        if self.reported_logloss is not None:
            doc["validationLogloss"] = self.reported_logloss
        return doc


@dataclasses.dataclass
class Round:
    competition_id: int
    training: pd.DataFrame
    tournament: pd.DataFrame
    submissions: list = dataclasses.field(default_factory=list)
    has_dataset: bool = True
    storage: object = None  # where load_round put it

    @property
    def ids(self):
        return self.tournament["id"].to_numpy()

    def add(self, username, values=None, raw=None, shuffle_seed=None, created=None, reported_logloss=None):
        """Add a submission; its file is written from ``values`` unless ``raw`` is given."""
        created = created or FIRST_CREATED + datetime.timedelta(minutes=17 * (len(self.submissions) + 1))
        if raw is None and values is not None:
            values = np.asarray(values, dtype=np.float64)
            raw = submission_csv(self.ids, values, shuffle_seed)
        sub = Sub(str(ObjectId()), username, self.competition_id, created, values, raw, reported_logloss)
        self.submissions.append(sub)
        return sub


def submission_csv(ids, values, shuffle_seed=None):
    """A submission file; rows in round order unless ``shuffle_seed`` shuffles them."""
    if shuffle_seed is None:
        frame = pd.DataFrame({"id": ids, "probability": values})
        return frame.to_csv(index=False).encode()
    return demo.submission_csv(ids, values, shuffle_seed)


def make_round(competition_id, seed, integer_ids=False, **sizes):
    """A fresh small round; ``integer_ids`` gives the tournament integer ids."""
    training, tournament = demo.make_round(seed, **{**SMALL, **sizes})
    if integer_ids:
        rng = np.random.default_rng(seed + 1000)
        tournament["id"] = rng.choice(10 ** 9, size=len(tournament), replace=False) + 10 ** 6
    return Round(competition_id, training, tournament)


class Predictor:
    """Prediction vectors of different characters for a round, from a seed."""

    def __init__(self, rnd, seed):
        self.rnd = rnd
        self.rng = np.random.default_rng(seed)
        self.columns = [c for c in rnd.tournament.columns if c.startswith("feature")]

    def model(self, width=5, noise=0.01):
        """A linear model on a random subset of features plus a little noise."""
        columns = list(self.rng.choice(self.columns, size=width, replace=False))
        weights = demo.linear_model(self.rnd.training, columns)
        base = demo.predict(weights, self.rnd.tournament, columns)
        base = 0.5 + 3.0 * (base - 0.5) + self.rng.normal(scale=noise, size=len(base))
        return np.clip(base, 0.01, 0.99).round(5)

    def near_copy(self, values):
        return np.clip(values + self.rng.normal(scale=1e-4, size=len(values)), 0, 1).round(5)

    def noise(self):
        return np.clip(0.5 + self.rng.normal(scale=0.02, size=len(self.rnd.tournament)), 0, 1).round(5)

    def discordant(self, values):
        """Live rows shifted away from validation and test: fails concordance."""
        live = (self.rnd.tournament["data_type"] == "live").to_numpy()
        return np.clip(values + np.where(live, 0.25, 0.0), 0, 1).round(5)


def load_round(storage, rnd, career=None):
    """Put a round where production keeps it: dataset zip and files in S3, documents in MongoDB."""
    rnd.storage = storage
    if rnd.has_dataset:
        storage.s3.put_object(Bucket=storage.dataset_bucket, Key="%d/numerai_datasets.zip" % rnd.competition_id,
                              Body=demo.dataset_zip(rnd.training, rnd.tournament))
    for sub in rnd.submissions:
        if sub.raw is not None:
            storage.s3.put_object(Bucket=storage.upload_bucket, Key="%s/%s" % (sub.username, sub.filename), Body=sub.raw)
        storage.db.submissions.insert_one(sub.document())
    for number, username in enumerate(sorted({sub.username for sub in rnd.submissions})):
        usd, nmr = (career or {}).get(username, (round(12.5 * number, 2), round(0.75 * number, 2)))
        storage.db.users.update_one({"username": username},
                                    {"$setOnInsert": {"username": username, "earnings": {"career": {"usd": usd, "nmr": nmr}}}},
                                    upsert=True)
    storage.db.competitions.update_one({"_id": rnd.competition_id}, {"$setOnInsert": {"leaderboard": []}}, upsert=True)


# -- expected verdicts, computed directly with scoring/ ---------------------------------
@dataclasses.dataclass
class Expected:
    consistency: float
    logloss: float
    concordant: bool
    original: bool


class S3Reader:
    """Submission files as the server reads them, from the test's upload bucket (for the oracle)."""

    def __init__(self, storage):
        self.storage = storage

    def submission(self, username, filename):
        try:
            return self.storage.s3.get_object(Bucket=self.storage.upload_bucket,
                                              Key="%s/%s" % (username, filename))["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise LookupError("%s/%s is not in storage" % (username, filename)) from None
            raise


def expected_verdicts(rnd, rules=Rules()):
    """What each submission of the round that must end done should be judged: the one oracle.

    :class:`tests.oracle.Oracle` over the round's documents in MongoDB and
    files in S3, as the server sees them (so documents a test wrote
    directly count as they would for the server). The round's tournament
    rows are read back from the CSV the dataset zip holds, and its clusters
    computed from the same data and settings as the server's.
    """
    assert rnd.storage is not None, "load_round(storage, rnd) first: the oracle reads what the server reads"
    t = rnd.tournament
    tournament = dataset.read_tournament(io.BytesIO(t.to_csv(index=False).encode()))
    columns = [c for c in t.columns if "feature" in c]
    labels = concordance.fit_clusters(rnd.training[columns].to_numpy(dtype=np.float32),
                                      t[columns].to_numpy(dtype=np.float32), rules)
    groups = concordance.cluster_groups(labels, t["data_type"].to_numpy())
    oracle = Oracle(rnd.storage.db, S3Reader(rnd.storage), rules, groups, tournament, rnd.competition_id)
    result = {}
    for sub in rnd.submissions:
        want = oracle.verdicts(sub.submission_id)
        if want is not None:
            result[sub.submission_id] = Expected(consistency=want["consistency"], logloss=want["logloss"],
                                                 concordant=bool(want["concordant"]), original=bool(want["original"]))
    return result


# -- the server ------------------------------------------------------------------------
class Server:
    """``./server`` as a subprocess in production mode, in its own process group."""

    def __init__(self, env, log_path):
        self.env = env
        self.log_path = log_path
        self.port = int(env["PORT"])
        self.url = "http://%s:%d" % (HOST, self.port)
        self.api_key = env["API_KEY"]
        self.process = None
        self.starts = 0

    def tail(self, lines=60):
        return tail(self.log_path, lines)

    def log_text(self):
        return Path(self.log_path).read_text(errors="replace")

    def start(self, timeout=60):
        assert self.process is None or self.process.poll() is not None, "server already running"
        self.starts += 1
        with open(self.log_path, "ab") as log_file:
            log_file.write(b"\n===== e2e: start %d =====\n" % self.starts)
            log_file.flush()
            self.process = subprocess.Popen([sys.executable, str(SERVER)], env=self.env, cwd=str(REPO),
                                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout=60):
        def healthy():
            assert self.process.poll() is None, "server exited with %s\n%s" % (self.process.returncode, self.tail())
            try:
                return requests.get(self.url + "/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, timeout, "GET /health to answer 200", self.tail)

    def stop(self, timeout=None):
        """Graceful stop: SIGTERM to the master; it must exit 0 within the bound."""
        timeout = timeout or float(self.env["STOP_TIMEOUT"]) + 15
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("server did not exit within %.0fs of SIGTERM\n%s" % (timeout, self.tail()))
        assert code == 0, "server exited with %s after SIGTERM\n%s" % (code, self.tail())
        end_process_group(self.process)  # nothing of the group may outlive it
        return code

    def kill(self):
        """SIGKILL the whole process group: the gunicorn master and its worker."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        wait_for(lambda: not listening(self.port), 10, "the server port to close after SIGKILL")

    def cleanup(self):
        if self.process is not None:
            end_process_group(self.process)

    # -- HTTP helpers --
    def post(self, submission_id, session=None, timeout=30, **extra):
        body = {"submission_id": submission_id, "api_key": self.api_key, **extra}
        return (session or requests).post(self.url + "/", json=body, timeout=timeout)

    def show(self, submission_id, timeout=10):
        return requests.get(self.url + "/submissions/" + submission_id, headers={"X-API-Key": self.api_key}, timeout=timeout)


def server_env(storage, database_url, tmp_path, **overrides):
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES and not key.startswith("RULE_")}
    env.update({
        "MONGO_URL": database_url,
        "MONGO_DB_NAME": storage.db.name,
        "S3_UPLOAD_BUCKET": storage.upload_bucket,
        "S3_DATASET_BUCKET": storage.dataset_bucket,
        "S3_ACCESS_KEY": S3_KEYS["aws_access_key_id"],
        "S3_SECRET_KEY": S3_KEYS["aws_secret_access_key"],
        "S3_ENDPOINT_URL": storage.endpoint,
        "PORT": str(free_port()),
        "HOST": HOST,
        "API_KEY": "e2e-key-" + uuid.uuid4().hex,
        "CACHE_DIR": str(tmp_path / "cache"),
        "RECOVERY_INTERVAL": "1",
        "STOP_TIMEOUT": "5",
        "MONGO_TIMEOUT_MS": "1000",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


@pytest.fixture
def start_server(storage, database, tmp_path):
    """Factory: ``start_server(**env_overrides)`` starts ``./server`` and returns a :class:`Server`."""
    servers = []

    def start(**overrides):
        env = server_env(storage, database.url, tmp_path, **overrides)
        server = Server(env, tmp_path / ("server-%d.log" % len(servers)))
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.cleanup()


# -- waiting on submissions -------------------------------------------------------------
FINAL = ("done", "failed")


def states(db, subs):
    """``{submission_id: processing.state}`` read from MongoDB."""
    docs = db.submissions.find({"_id": {"$in": [sub.oid for sub in subs]}}, {"processing.state": 1})
    return {str(doc["_id"]): (doc.get("processing") or {}).get("state") for doc in docs}


def wait_finished(db, subs, timeout, detail=None):
    """Wait until every submission is done or failed; returns their documents by id."""
    def finished():
        found = states(db, subs)
        return len(found) == len(subs) and all(state in FINAL for state in found.values())

    def why():
        found = states(db, subs)
        unfinished = {sid: state for sid, state in found.items() if state not in FINAL}
        return "unfinished: %s\n%s" % (unfinished, detail() if detail else "")
    wait_for(finished, timeout, "%d submissions to finish" % len(subs), why, interval=0.1)
    return {str(doc["_id"]): doc for doc in db.submissions.find({"_id": {"$in": [sub.oid for sub in subs]}})}


def assert_verdicts(doc, expected, context=""):
    """A done submission carries exactly the directly computed verdicts."""
    sid = str(doc["_id"])
    assert doc["processing"]["state"] == "done", "%s not done: %s %s" % (sid, doc.get("processing"), context)
    assert doc["consistency"] == pytest.approx(expected.consistency, abs=1e-9), sid
    assert doc["concordant"] == {"pending": False, "value": expected.concordant}, sid
    assert doc["original"] == {"pending": False, "value": expected.original}, sid


def wait_board_settled(db, competition_id, timeout=30, detail=None):
    """Wait until no submission of the round has a leaderboard change still unconfirmed."""
    wait_for(lambda: db.submissions.count_documents({"competition_id": competition_id,
                                                      "processing.board": {"$exists": True}}) == 0,
             timeout, "the leaderboard of round %s to catch up" % competition_id, detail)


def leaderboard(db, competition_id):
    return (db.competitions.find_one({"_id": competition_id}) or {}).get("leaderboard", [])
