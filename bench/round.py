"""round: a whole round through the real pipeline, from files to verdicts.

Each user's submission (n rows) is written as a CSV file in a folder laid
out like the buckets, the round's documents go into mongomock (in this
process, as the intake benchmark uses it), and every submission is POSTed
through the app that ``server``'s ``build_service`` builds, with its
dispatcher, concordance and originality threads. The clock runs from the
first request until every submission is done. Verdicts of a sample of
late submissions are checked against the plain rules.

The baseline is only the 2017 optimized originality loop for the same
round (each submission against every earlier user's), timed on a sample
of pairs and scaled; the rest of the 2017 pipeline is not counted, so
the speedup understates the difference.
"""
import concurrent.futures
import datetime
import os
import tempfile
import time

import mongomock
import numpy as np
import pandas as pd
from bson import ObjectId

from bench import data, intake_server
from bench.locked import LockedDatabase
from bench.originality import baseline_pair
from bench.timing import BenchmarkError, result
from queues import demo
from queues.config import Config
from scoring.ks import ks_statistic
from scoring.originality import too_correlated
from scoring.rules import Rules

ROUND = 7
API_KEY = "bench-round-key"
VALIDATION_ERAS = 12


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="tournament rows (n)")
    parser.add_argument("--users", type=int, default=1000, help="submissions in the round, one per user")
    parser.add_argument("--train-rows", type=int, default=50000)
    parser.add_argument("--features", type=int, default=21)
    parser.add_argument("--verify", type=int, default=3, help="late submissions checked against the plain rules")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    parser.add_argument("--seed", type=int, default=0)


def frames(generator, args):
    """Training and tournament frames in the 2017 layout."""
    rng = np.random.default_rng(args.seed + 1)
    features, data_types = data.tournament_features(args.rows, args.features, seed=args.seed)
    columns = ["feature%d" % (i + 1) for i in range(args.features)]
    tournament = pd.DataFrame(features, columns=columns)
    eras = np.where(data_types == "validation", np.char.add("era", (np.arange(args.rows) % VALIDATION_ERAS + 86).astype(str)), "eraX")
    target = (generator.target + rng.normal(size=args.rows) > 0).astype(float)
    tournament.insert(0, "data_type", data_types)
    tournament.insert(0, "era", eras)
    tournament.insert(0, "id", ["n%015x" % v for v in rng.choice(16 ** 12, size=args.rows, replace=False)])
    tournament["target"] = np.where(data_types == "live", np.nan, target)
    training = pd.DataFrame(data.training_features(args.train_rows, args.features), columns=columns)
    training.insert(0, "data_type", "train")
    training.insert(0, "era", np.char.add("era", (np.arange(args.train_rows) % 85 + 1).astype(str)))
    training.insert(0, "id", np.char.add("t", np.arange(args.train_rows).astype(str)))
    training["target"] = rng.integers(0, 2, size=args.train_rows).astype(float)
    return training, tournament


def write_csv(path, ids, values):
    with open(path, "w") as handle:
        handle.write("id,probability\n")
        handle.write("\n".join(map("%s,%r".__mod__, zip(ids, values.tolist()))))
        handle.write("\n")


def prepare(root, args):
    """Write the round into ``root``; returns (documents, predictions by user, tournament)."""
    generator = data.RoundGenerator(args.rows, seed=args.seed)
    training, tournament = frames(generator, args)
    os.makedirs(os.path.join(root, "datasets", str(ROUND)))
    with open(os.path.join(root, "datasets", str(ROUND), "numerai_datasets.zip"), "wb") as handle:
        handle.write(demo.dataset_zip(training, tournament))
    predictions = generator.round(args.users).predictions
    ids = tournament["id"].tolist()
    created = datetime.datetime(2017, 5, 1)
    docs = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for number, (user, values) in enumerate(predictions.items()):
            doc = {"_id": ObjectId(), "username": user, "competition_id": ROUND,
                   "filename": "%s.csv" % user, "created": created + datetime.timedelta(seconds=number)}
            os.makedirs(os.path.join(root, "uploads", user))
            pool.submit(write_csv, os.path.join(root, "uploads", user, doc["filename"]), ids, values)
            docs.append(doc)
    return docs, predictions


def run_round(root, docs, timeout):
    """Score every document through the real service; returns (seconds, database, database busy seconds)."""
    db = mongomock.MongoClient().bench
    db.submissions.insert_many(docs)
    db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
    config = Config(api_key=API_KEY, local=True, local_dir=root, cache_dir=os.path.join(root, "cache"))
    locked = LockedDatabase(db)
    app, stop = intake_server.load_server().build_service(config, lambda: locked)
    client = app.test_client()
    started = time.perf_counter()
    try:
        for doc in docs:
            answer = client.post("/", json={"submission_id": str(doc["_id"]), "api_key": API_KEY})
            if answer.status_code != 202:
                raise BenchmarkError("POST answered %s: %s" % (answer.status_code, answer.get_data()))
        finished = {"processing.state": {"$in": ["done", "failed"]}}
        while locked.submissions.count_documents(finished) < len(docs):
            if time.perf_counter() - started > timeout:
                raise BenchmarkError("round not finished after %.0fs" % timeout)
            time.sleep(0.5)
        return time.perf_counter() - started, db, locked.busy
    finally:
        stop()


def verify(db, docs, predictions, count, rules):
    """Originality of the last ``count`` submissions equals the plain rule's; returns pairs checked."""
    pairs = 0
    for doc in docs[-count:]:
        stored = db.submissions.find_one({"_id": doc["_id"]})
        if stored["processing"]["state"] != "done":
            raise BenchmarkError("%s ended %s: %s" % (doc["username"], stored["processing"]["state"], stored["processing"].get("error")))
        candidate = predictions[doc["username"]]
        ordered = np.sort(candidate)
        similar, original = 0, True
        for other in docs:
            if other["created"] >= doc["created"]:
                continue
            values = predictions[other["username"]]
            pairs += 1
            ks = ks_statistic(ordered, np.sort(values))
            if too_correlated(candidate, values, rules) or ks < rules.duplicate_ks:
                original = False
                break
            similar += ks <= rules.similar_ks
            if similar >= max(rules.max_similar, 1):
                original = False
                break
        if stored["original"]["value"] is not original:
            raise BenchmarkError("%s: pipeline says original=%s, plain rule %s" % (doc["username"], stored["original"]["value"], original))
    return pairs


def baseline_ms(predictions, users, rules, sample=200):
    """The 2017 optimized originality loop for the whole round, from a timed sample of pairs."""
    vectors = list(predictions.values())
    rng = np.random.default_rng(1)
    chosen = [tuple(rng.choice(len(vectors), size=2, replace=False)) for _ in range(sample)]
    presorted = {i: np.sort(vectors[i]) for pair in chosen for i in pair}
    started = time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        for a, b in chosen:
            baseline_pair(vectors[a], presorted[a], vectors[b], presorted[b], rules)
    per_pair = (time.perf_counter() - started) / sample * 1e3
    return per_pair * users * (users - 1) / 2


def run(args):
    rules = Rules()
    with tempfile.TemporaryDirectory() as root:
        docs, predictions = prepare(root, args)
        seconds, db, busy = run_round(root, docs, args.timeout)
        pairs = verify(db, docs, predictions, args.verify, rules)
        failed = db.submissions.count_documents({"processing.state": "failed"})
        board = db.competitions.find_one({"_id": ROUND})["leaderboard"]
    if failed or len(board) != args.users:
        raise BenchmarkError("%d failed, %d leaderboard entries for %d users" % (failed, len(board), args.users))
    fields = {"rows": args.rows, "users": args.users, "store": "mongomock", "seconds": round(seconds, 1),
              "per_submission_ms": round(seconds * 1e3 / args.users, 1), "db_busy_s": round(busy, 1),
              "verified_pairs": pairs}
    return [result("round", fields, seconds * 1e3, baseline_ms(predictions, args.users, rules))]
