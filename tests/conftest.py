"""Shared fixtures, in the spirit of flaskr's: an app built from in-process collaborators.

Unit tests use mongomock for the database and a temporary folder (or
moto's in-process S3) for files; the end-to-end tests in ``tests/e2e``
use the real servers instead.
"""
import datetime
import os

import mongomock
import numpy as np
import pymongo
import pytest
from bson import ObjectId

from queues import demo
from queues.app import create_app
from queues.config import Config
from queues.files import LocalFiles
from queues.local import embedded
from queues.metrics import Metrics
from queues.pipeline import Pipeline
from queues.rounds import Rounds
from queues.store import Store
from queues.supervisor import Supervisor
from scoring.prepared import PreparedRound
from scoring.rules import Rules

API_KEY = "test-key-9f8e7d6c5b4a"
#: The 2017 samples, in the shared/ folder that sits beside a checkout (absent in a bare clone).
SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")


def sample_paths(*names):
    """Paths of 2017 sample files, skipping the calling test when any is absent."""
    paths = [os.path.join(SAMPLES, name) for name in names]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        pytest.skip("real 2017 samples not available: %s" % ", ".join(missing))
    return paths
ROUND = 41


@pytest.fixture(scope="session")
def round_frames():
    """A small real-shaped round: (training, tournament) frames."""
    return demo.make_round(seed=7, features=6, train_rows=800, validation_eras=4,
                           validation_rows=800, test_rows=800, live_rows=400)


@pytest.fixture(scope="session")
def round_zip(round_frames, tmp_path_factory):
    path = tmp_path_factory.mktemp("round") / "numerai_datasets.zip"
    path.write_bytes(demo.dataset_zip(*round_frames))
    return path


@pytest.fixture
def rules():
    return Rules()


@pytest.fixture
def files(tmp_path, round_zip):
    local = LocalFiles(str(tmp_path / "files"))
    local.put_dataset(ROUND, str(round_zip))
    return local


@pytest.fixture
def db():
    return mongomock.MongoClient().numerai


@pytest.fixture
def store(db):
    return Store(db, owner="test-host:5151:1", lease_seconds=30)


@pytest.fixture(scope="session")
def real_mongo_url(tmp_path_factory):
    """SecantusDB (a real MongoDB wire server) on a free loopback port, for the whole session.

    For what mongomock cannot show: races between threads, and updates with
    array filters (the leaderboard's grouped writes).
    """
    with embedded(str(tmp_path_factory.mktemp("secantus"))) as url:
        yield url


@pytest.fixture
def real_db(real_mongo_url):
    """A fresh database on the session's SecantusDB, dropped afterwards."""
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    name = "t_%s" % ObjectId()
    yield client[name]
    client.drop_database(name)
    client.close()


@pytest.fixture
def rounds(files, tmp_path, rules):
    return Rounds(files, str(tmp_path / "cache"), rules, PreparedRound)


@pytest.fixture
def pipeline():
    return Pipeline()


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def supervisor(pipeline, metrics):
    return Supervisor(pipeline.stop, metrics)


@pytest.fixture
def config():
    return Config(api_key=API_KEY)


@pytest.fixture
def app(store, pipeline, config, supervisor, metrics):
    metrics.watch(pipeline, supervisor)
    return create_app(store, pipeline, config, supervisor, metrics)


@pytest.fixture
def client(app):
    return app.test_client()


class Submitter:
    """Makes submissions: a document in the store and a file in ``files``."""

    def __init__(self, db, files, tournament):
        self.db = db
        self.files = files
        self.tournament = tournament
        self.clock = datetime.datetime(2017, 3, 20)
        self.count = 0

    def __call__(self, username, values=None, raw=None, competition_id=ROUND, **fields):
        """Create a submission with ``values`` (round order) or raw file bytes; returns its id."""
        self.count += 1
        self.clock += datetime.timedelta(minutes=1)
        submission_id = "%024x" % (0x58d411e57278611200000000 + self.count)
        doc = demo.submission_document(submission_id, username, self.clock, competition_id)
        doc.update(fields)
        if raw is None:
            raw = demo.submission_csv(self.tournament["id"], np.asarray(values), seed=self.count)
        if raw is not False:
            self.files.put_submission(username, doc["filename"], raw)
        self.db.submissions.insert_one(doc)
        self.db.users.update_one({"username": username},
                                 {"$setOnInsert": {"earnings": {"career": {"usd": 3.0, "nmr": 2.0}}}}, upsert=True)
        return submission_id


@pytest.fixture
def submit(db, files, round_frames):
    db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
    return Submitter(db, files, round_frames[1])


@pytest.fixture
def model(round_frames):
    """A function making a plausible prediction vector (round order) from a seed."""
    training, tournament = round_frames
    columns = [c for c in tournament.columns if c.startswith("feature")]

    def make(seed, noise=0.02):
        rng = np.random.default_rng(seed)
        subset = sorted(rng.choice(len(columns), size=4, replace=False))
        chosen = [columns[i] for i in subset]
        base = demo.predict(demo.linear_model(training, chosen), tournament, chosen)
        return np.clip(base + rng.normal(scale=noise, size=len(base)), 0.001, 0.999).round(5)

    return make
