"""The demo round for local mode: seeded once, shaped like the backend's data, files that parse."""
import os

import mongomock
import numpy as np
import pytest
from bson import ObjectId

from queues import demo
from queues.files import LocalFiles
from queues.rounds import read_zip_member
from scoring import dataset
from scoring.originality import too_correlated
from scoring.submission import parse_submission


def snapshot(db, root):
    """Every document and every file (bytes and mtime) under ``root``."""
    documents = {name: sorted(db[name].find(), key=lambda d: str(d["_id"]))
                 for name in ("submissions", "users", "competitions")}
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[path] = (handle.read(), os.stat(path).st_mtime_ns)
    return documents, files


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    db = mongomock.MongoClient().numerai
    files = LocalFiles(root)
    assert demo.seed(db, files) is True
    tournament = read_zip_member(files.dataset(demo.DEMO_ROUND)[0], dataset.TOURNAMENT_FILE, dataset.read_tournament)
    return db, files, root, tournament


def test_seed_loads_round_41_once(seeded):
    db, files, root, _ = seeded
    before = snapshot(db, root)
    assert demo.seed(db, files) is False
    assert snapshot(db, root) == before


def test_seed_writes_the_competition_users_and_submissions(seeded):
    db, _, _, _ = seeded
    assert db.competitions.find_one({"_id": demo.DEMO_ROUND}) == {"_id": demo.DEMO_ROUND, "leaderboard": []}
    submissions = list(db.submissions.find())
    assert len(submissions) == len(demo.DEMO_SUBMISSIONS)
    assert sorted(doc["username"] for doc in submissions) == sorted(u for u, *_ in demo.DEMO_SUBMISSIONS)
    # one user document per submitter, with the career earnings the leaderboard copies
    assert sorted(u["username"] for u in db.users.find()) == sorted(u for u, *_ in demo.DEMO_SUBMISSIONS)
    for user in db.users.find():
        assert set(user["earnings"]["career"]) == {"usd", "nmr"}


def test_documents_have_the_fields_the_backend_writes(seeded):
    db, _, _, _ = seeded
    for doc in db.submissions.find():
        assert set(doc) == {"_id", "username", "competition_id", "filename", "created"}
        assert isinstance(doc["_id"], ObjectId)
        assert doc["competition_id"] == demo.DEMO_ROUND
        assert doc["filename"].endswith(".csv")
        assert doc["created"].tzinfo is None  # naive UTC, as MongoDB returns it
    created = [doc["created"] for doc in db.submissions.find().sort("created", 1)]
    assert len(set(created)) == len(created)  # a strict order, for originality


def test_zuz_judged_in_the_readme_is_there(seeded):
    db, _, _, _ = seeded
    doc = db.submissions.find_one({"_id": ObjectId("58d411e57278611200ee49a6")})
    assert doc is not None and doc["username"] == "zuz"
    # the latest one, so everyone else's counts in its originality check
    assert doc["created"] == max(d["created"] for d in db.submissions.find())


def test_every_file_parses_against_the_rounds_ids(seeded):
    db, files, _, tournament = seeded
    assert (tournament.data_types == "validation").any() and (tournament.data_types == "live").any()
    parsed = {}
    for doc in db.submissions.find():
        values = parse_submission(files.submission(doc["username"], doc["filename"]), tournament.ids)
        assert values.shape == (len(tournament.ids),)
        assert ((values >= 0) & (values <= 1)).all()
        parsed[doc["username"]] = values
    # carol's is a copy of bob's (the demo's unoriginal submission); zuz's is not a copy of anyone's
    assert too_correlated(parsed["carol"], parsed["bob"])
    assert not any(too_correlated(parsed["zuz"], parsed[name]) for name in ("alice", "bob", "carol", "dave"))


def test_the_dataset_holds_training_features_matching_the_tournament(seeded):
    _, files, _, tournament = seeded
    training = read_zip_member(files.dataset(demo.DEMO_ROUND)[0], dataset.TRAINING_FILE, dataset.read_training_features)
    assert training.shape[1] == tournament.features.shape[1]
    assert len(training) > 0


def test_make_round_is_reproducible():
    small = dict(features=4, train_rows=100, validation_eras=2, validation_rows=100, test_rows=50, live_rows=50)
    first, again, other = (demo.make_round(seed=s, **small) for s in (3, 3, 4))
    for a, b in zip(first, again):
        assert a.equals(b)
    assert not first[1].equals(other[1])
    training, tournament = first
    assert list(tournament.columns) == ["id", "era", "data_type", "feature1", "feature2", "feature3", "feature4", "target"]
    assert tournament.loc[tournament.data_type == "live", "target"].isna().all()
    assert tournament.loc[tournament.data_type != "live", "target"].isin([0.0, 1.0]).all()
    assert np.isin(training["target"], [0.0, 1.0]).all()
