"""The server the intake benchmark measures, run as ``python -m bench.intake_server``.

It is :func:`queues.service.build_service` under ``queues.serve`` (gunicorn,
one process, the pipeline threads beside the HTTP threads); only the
database differs: mongomock inside the process, or a MongoDB URL. The
round it serves is small and real, so accepted submissions are scored
while the load runs. ``--bare`` serves instead the 2017-style handler
that parses JSON and puts the id on a queue, recording nothing.
"""
import argparse
import datetime
import functools
import logging
import os
import queue

import mongomock
import pymongo
from flask import Flask, jsonify, request

from bench.locked import LockedDatabase
from queues import demo, serve, service
from queues.config import Config
from queues.files import LocalFiles

ROUND = 41
API_KEY = "bench-intake-key"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def submission_ids(count):
    return ["%024x" % (0x5a0000000000000000000000 + number) for number in range(count)]


def seed(db, files, count):
    """A small real round in ``files`` and ``count`` submissions of it in ``db``."""
    training, tournament = demo.make_round(seed=5, features=8, train_rows=1000, validation_eras=4,
                                           validation_rows=800, test_rows=800, live_rows=400)
    path = os.path.join(files.root, "round.zip")
    os.makedirs(files.root, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(demo.dataset_zip(training, tournament))
    files.put_dataset(ROUND, path)
    vectors = list(demo.demo_predictions(training, tournament).values())
    created = datetime.datetime(2017, 3, 20)
    docs = []
    for number, sid in enumerate(submission_ids(count)):
        doc = demo.submission_document(sid, "user%d" % number, created + datetime.timedelta(seconds=number), ROUND)
        files.put_submission(doc["username"], doc["filename"], demo.submission_csv(tournament["id"], vectors[number % len(vectors)]))
        docs.append(doc)
    db.submissions.delete_many({})
    db.submissions.insert_many(docs)
    db.competitions.replace_one({"_id": ROUND}, {"_id": ROUND, "leaderboard": []}, upsert=True)


def bare_app():
    """The 2017 intake's shape: parse JSON, put on a queue, answer; nothing recorded."""
    app = Flask("bare")
    inbox = queue.Queue()

    @app.post("/")
    def submit():
        body = request.get_json(force=True)
        inbox.put(body["submission_id"])
        return jsonify(submission_id=body["submission_id"], status="queued"), 202
    return app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--mongo-url", help="a MongoDB URL; default: mongomock in this process")
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = Config(api_key=API_KEY, local=True, local_dir=args.dir, cache_dir=os.path.join(args.dir, "cache"),
                    port=args.port, host="127.0.0.1")
    options = dict(serve.options(config), loglevel="warning")
    if args.bare:
        app = bare_app()
        serve.Service(lambda: (app, lambda: None), options).run()
        return
    files = LocalFiles(args.dir)
    if args.mongo_url:
        client = pymongo.MongoClient(args.mongo_url)
        seed(client.bench, files, args.submissions)
        client.close()

        def database():
            return pymongo.MongoClient(args.mongo_url).bench
    else:
        def database():
            db = mongomock.MongoClient().bench
            seed(db, files, args.submissions)
            return LockedDatabase(db)
    serve.Service(functools.partial(service.build_service, config, database), options).run()


if __name__ == "__main__":
    main()
