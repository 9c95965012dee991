"""A small, real-shaped demo round (41) for local mode, made from a fixed seed.

The data mimic the 2017 tournament files: ids, eras, ``data_type``,
``feature1..featureN`` in [0, 1] with five decimals, and a 0/1 target that
the features predict weakly. A handful of users have submitted; among
them ``zuz``'s submission ``58d411e57278611200ee49a6``, the one the
README's example request asks to judge.
"""
import datetime
import io
import logging
import os
import tempfile
import zipfile

import numpy as np
import pandas as pd
from bson import ObjectId

from scoring.dataset import TOURNAMENT_FILE, TRAINING_FILE

log = logging.getLogger(__name__)

DEMO_ROUND = 41
DEMO_SUBMISSION = "58d411e57278611200ee49a6"
SEED = 41
#: (username, submission id, created, how the predictions are made)
DEMO_SUBMISSIONS = (
    ("alice", "58d2c1e57278611200ee4901", datetime.datetime(2017, 3, 20, 9, 0), "model"),
    ("bob", "58d2c1e57278611200ee4902", datetime.datetime(2017, 3, 21, 9, 0), "other-model"),
    ("carol", "58d2c1e57278611200ee4903", datetime.datetime(2017, 3, 22, 9, 0), "copy-of-bob"),
    ("dave", "58d2c1e57278611200ee4904", datetime.datetime(2017, 3, 22, 18, 0), "noise"),
    ("zuz", DEMO_SUBMISSION, datetime.datetime(2017, 3, 23, 10, 5), "third-model"),
)


def make_round(seed=SEED, features=21, train_rows=6000, validation_eras=12, validation_rows=4800,
               test_rows=4800, live_rows=2400):
    """Training and tournament frames in the tournament's CSV layout."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(features, features)) / np.sqrt(features)
    weights = rng.normal(size=features)

    def rows(count):
        latent = rng.normal(size=(count, features))
        values = np.clip(0.5 + 0.1 * latent @ mixing, 0, 1).round(5)
        signal = latent @ weights / np.sqrt(features)
        target = (signal + rng.normal(scale=4.0, size=count) > 0).astype(int)
        return values, target

    def frame(count, eras, data_type, id_prefix):
        values, target = rows(count)
        data = pd.DataFrame(values, columns=["feature%d" % (i + 1) for i in range(features)])
        data.insert(0, "data_type", data_type)
        data.insert(0, "era", eras)
        data.insert(0, "id", ["%s%015x" % (id_prefix, v) for v in rng.integers(0, 16 ** 15, size=count)])
        data["target"] = target.astype(float)
        return data

    train_eras = np.repeat(["era%d" % (i + 1) for i in range(20)], -(-train_rows // 20))[:train_rows]
    val_eras = np.repeat(["era%d" % (86 + i) for i in range(validation_eras)], -(-validation_rows // validation_eras))[:validation_rows]
    training = frame(train_rows, train_eras, "train", "t")
    tournament = pd.concat([
        frame(validation_rows, val_eras, "validation", "n"),
        frame(test_rows, "eraX", "test", "n"),
        frame(live_rows, "eraX", "live", "n"),
    ], ignore_index=True)
    tournament.loc[tournament.data_type == "live", "target"] = np.nan
    return training, tournament


def dataset_zip(training, tournament):
    """The round's ``numerai_datasets.zip`` as bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(TRAINING_FILE, training.to_csv(index=False))
        archive.writestr(TOURNAMENT_FILE, tournament.to_csv(index=False))
    return buffer.getvalue()


def linear_model(training, columns):
    """Least-squares weights of the target on some feature columns (a plain, fast model)."""
    x = np.column_stack([training[columns].to_numpy(), np.ones(len(training))])
    weights, *_ = np.linalg.lstsq(x, training["target"].to_numpy(), rcond=None)
    return weights


def predict(weights, tournament, columns):
    x = np.column_stack([tournament[columns].to_numpy(), np.ones(len(tournament))])
    return np.clip(x @ weights, 0.001, 0.999)


def demo_predictions(training, tournament, seed=SEED):
    """Prediction vectors for the demo users, keyed by how they were made."""
    rng = np.random.default_rng(seed + 1)
    columns = [c for c in tournament.columns if c.startswith("feature")]
    made = {}
    made["model"] = predict(linear_model(training, columns[:14]), tournament, columns[:14])
    made["other-model"] = predict(linear_model(training, columns[7:]), tournament, columns[7:])
    made["copy-of-bob"] = np.clip(made["other-model"] + rng.normal(scale=1e-4, size=len(tournament)), 0, 1)
    made["noise"] = np.clip(0.5 + rng.normal(scale=0.02, size=len(tournament)), 0, 1)
    half = columns[::2]
    made["third-model"] = np.clip(0.5 + 1.6 * (predict(linear_model(training, half), tournament, half) - 0.5), 0.001, 0.999)
    return {name: values.round(5) for name, values in made.items()}


def submission_csv(ids, values, seed=0):
    """A submission file, rows shuffled as participants' files often are."""
    order = np.random.default_rng(seed).permutation(len(ids))
    return pd.DataFrame({"id": np.asarray(ids)[order], "probability": np.asarray(values)[order]}).to_csv(index=False).encode()


def submission_document(submission_id, username, created, competition_id=DEMO_ROUND):
    """A submissions document as the tournament backend writes it."""
    return {"_id": ObjectId(submission_id), "username": username, "competition_id": competition_id,
            "filename": "predictions-%s.csv" % submission_id[-6:], "created": created}


def seed(db, files, competition_id=DEMO_ROUND):
    """Load the demo round into an empty-of-it database and the local files; True if loaded."""
    if db.competitions.count_documents({"_id": competition_id}, limit=1):
        return False
    training, tournament = make_round()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "numerai_datasets.zip")
        with open(path, "wb") as handle:
            handle.write(dataset_zip(training, tournament))
        files.put_dataset(competition_id, path)
    predictions = demo_predictions(training, tournament)
    for number, (username, submission_id, created, how) in enumerate(DEMO_SUBMISSIONS):
        doc = submission_document(submission_id, username, created, competition_id)
        files.put_submission(username, doc["filename"], submission_csv(tournament["id"], predictions[how], number))
        db.submissions.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        db.users.update_one({"username": username}, {"$setOnInsert": {
            "username": username, "earnings": {"career": {"usd": 10.0 * number, "nmr": 1.5 * number}}}}, upsert=True)
    db.competitions.insert_one({"_id": competition_id, "leaderboard": []})
    log.info("loaded demo round %d: %d tournament rows, %d submissions", competition_id, len(tournament), len(DEMO_SUBMISSIONS))
    return True
