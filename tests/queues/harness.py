"""A whole server's objects in one test process, driven one job at a time.

``Node`` is what the server builds, with the server's own wiring
(:mod:`queues.service`: store, pipeline, workers, leaderboard writer,
recovery, rescorer, the Flask app), without threads: a test posts
through the app and runs each queued job by calling the worker's ``run``
itself, so every interleaving is chosen by the test, never by timing.

``Faults`` wraps a pymongo database so that its k-th write crashes the
process: :class:`Crash` is a ``BaseException``, so no worker or handler
catches it, exactly like a SIGKILL between two writes. ``after=True``
crashes once the k-th write is applied but before its answer arrives.
"""
import collections
import dataclasses
import datetime
import threading

import numpy as np
from bson import ObjectId

from queues import demo
from queues.config import Config
from queues.leaderboard import desired_entry, newest
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY
from queues.service import build_app, build_pipeline, build_recovery
from queues.store import ACTIVE, CHECKS, DONE, FAILED, Store

API_KEY = "harness-key"
ROUND = 41
HOST = "harness-host:5151:"
WRITES = {"update_one", "update_many", "find_one_and_update", "insert_one", "insert_many", "delete_many"}


class Crash(BaseException):
    """The process died here."""


class Faults:
    """Counts writes and crashes at the ``fail_at``-th one (before or after it is applied)."""

    def __init__(self, fail_at=None, after=False):
        self.fail_at = fail_at
        self.after = after
        self.writes = 0

    def write(self, call):
        self.writes += 1
        if self.writes == self.fail_at and not self.after:
            raise Crash("write %d lost" % self.writes)
        try:
            return call()
        finally:  # the answer is lost whatever it was: a result, or an error the database sent back
            if self.writes == self.fail_at and self.after:
                raise Crash("write %d applied, answer lost" % self.writes)


class FaultyCollection:
    def __init__(self, collection, faults):
        self._collection = collection
        self._faults = faults

    def __getattr__(self, name):
        found = getattr(self._collection, name)
        if name in WRITES:
            return lambda *args, **kwargs: self._faults.write(lambda: found(*args, **kwargs))
        return found


class FaultyDatabase:
    def __init__(self, db, faults):
        self._db = db
        self._faults = faults

    def __getattr__(self, name):
        if name in ("command", "name", "client", "watch"):
            return getattr(self._db, name)
        return FaultyCollection(getattr(self._db, name), self._faults)


class Node:
    """One server process: its own memory, a lease owner of its own, the shared database."""

    STAGES = (DISPATCH, CONCORDANCE, ORIGINALITY)

    def __init__(self, db, files, cache_dir, pid, faults=None, rules=None, alive=lambda pid: False, follow=False,
                 settings=None):
        self.pid = pid
        self.faults = faults or Faults()
        self.db = FaultyDatabase(db, self.faults)
        self.store = Store(self.db, owner="%s%d" % (HOST, pid), lease_seconds=30)
        config = dataclasses.replace(Config(api_key=API_KEY), cache_dir=cache_dir, **({"rules": rules} if rules else {}),
                                     **(settings or {}))  # e.g. NOTIFY_* as Config fields
        lives = lambda other: other == pid or alive(other)  # noqa: E731
        # the server's own wiring; the supervisor is never started: the test runs each job itself
        parts = build_pipeline(config, self.store, files=files, alive=lives)
        self.pipeline, self.metrics, self.board = parts.pipeline, parts.metrics, parts.board
        self.members, self.rescorer, self.workers = parts.members, parts.rescorer, parts.workers
        self.notifier = parts.notifier  # None unless settings turn webhooks on; a test delivers with it
        self.competitions = parts.competitions
        self.recovery = build_recovery(config, self.store, parts, alive=lives)
        if follow:  # follow the database's change stream as the server's members thread does
            threading.Thread(target=self.members.loop, name="members", daemon=True).start()
        self.client = build_app(config, self.store, parts).test_client()

    def post(self, submission_id):
        return self.client.post("/", json={"submission_id": submission_id, "api_key": API_KEY})

    def waiting(self, stage):
        return self.pipeline.queues[stage].qsize()

    def step(self, stage):
        """Run the next job of ``stage``; returns its outcome, or None when the queue is empty."""
        inbox = self.pipeline.queues[stage]
        if inbox.empty():
            return None
        job = inbox.get_nowait()
        try:
            return self.workers[stage].run(job)
        finally:
            self.pipeline.done(stage, job)

    def drain(self):
        """Run every queued job, then write the leaderboard; repeat until nothing is left."""
        while True:
            ran = False
            for stage in self.STAGES:
                while self.step(stage) is not None:
                    ran = True
            if self.board.pending():
                self.board.flush(self.board.take(0))
                ran = True
            if not ran:
                return

    def rescore(self, passes=20):
        """Drive every open re-score this node may drive, with the jobs it queues and what its
        recovery sweep finds, until none is open."""
        for _ in range(passes):
            self.rescorer.step()
            self.drain()
            self.recover()  # as the server's recovery thread would: work a stale job dropped is claimed again
            if not self.competitions.open_runs():
                return
        raise AssertionError("a re-score is still open after %d passes: %s" % (passes, self.competitions.open_runs()))

    def recover(self):
        """One recovery sweep, then everything it queued."""
        self.recovery.sweep()
        self.drain()


def expire_leases(db):
    """Time passes beyond every lease: the submissions' and the re-score runs'."""
    db.submissions.update_many({"processing.lease": {"$ne": None}},
                               {"$set": {"processing.lease.expires": datetime.datetime(2000, 1, 1)}})
    db.competitions.update_many({"rescore.lease": {"$ne": None}},
                                {"$set": {"rescore.lease.expires": datetime.datetime(2000, 1, 1)}})


class World:
    """A round's data and files, and the submissions a test makes in it."""

    def __init__(self, files, tournament):
        self.files = files
        self.tournament = tournament
        self.clock = datetime.datetime(2017, 3, 20)
        self.count = 0

    def submit(self, db, username, values=None, raw=None, created=None):
        """A backend-shaped submission document and its file; returns the id string."""
        self.count += 1
        self.clock += datetime.timedelta(minutes=1)
        sid = str(ObjectId())
        doc = demo.submission_document(sid, username, created or self.clock, ROUND)
        if raw is None:
            raw = demo.submission_csv(self.tournament["id"], np.asarray(values), seed=self.count)
        self.files.put_submission(username, doc["filename"], raw)
        db.submissions.insert_one(doc)
        db.users.update_one({"username": username}, {"$setOnInsert": {"earnings": {"career": {"usd": 1.0, "nmr": 2.0}}}},
                            upsert=True)
        return sid


def check_settled(db):
    """Invariants of every document at any instant: settled means nothing pending."""
    for doc in db.submissions.find({"processing.state": {"$in": [DONE, FAILED]}}):
        for check in CHECKS:
            assert doc.get(check, {}).get("pending") is False, (doc["_id"], check, doc.get(check))
        if doc["processing"]["state"] == DONE:
            assert all(isinstance(doc[check]["value"], bool) for check in CHECKS), doc
            assert "consistency" in doc
        else:
            assert doc["processing"].get("error"), doc
        assert "lease" not in doc["processing"], doc


def check_quiescent(db, expected):
    """After recovery: nothing unsettled, verdicts as the plain rules say, the leaderboard in line."""
    check_settled(db)
    stuck = list(db.submissions.find({"processing.state": {"$in": list(ACTIVE)}}, {"processing": 1}))
    assert stuck == [], stuck
    assert db.submissions.count_documents({"processing.board": {"$exists": True}}) == 0
    by_user = collections.defaultdict(list)
    for doc in db.submissions.find({"processing": {"$exists": True}}):
        sid = str(doc["_id"])
        want = expected.get(sid)
        if want is None:
            assert doc["processing"]["state"] == FAILED, doc
        else:
            assert doc["processing"]["state"] == DONE, (sid, doc["processing"])
            assert doc["consistency"] == want["consistency"]
            assert doc["concordant"]["value"] == want["concordant"], sid
            assert doc["original"]["value"] == want["original"], sid
    for doc in db.submissions.find({"competition_id": ROUND}):
        by_user[doc["username"]].append(doc)
    board = (db.competitions.find_one({"_id": ROUND}) or {}).get("leaderboard", [])
    counts = collections.Counter(entry["username"] for entry in board)
    assert all(n == 1 for n in counts.values()), counts
    shown = {username for username, docs in by_user.items() if newest(docs) is not None}
    assert set(counts) == shown, (counts, shown)
    for entry in board:
        target = newest(by_user[entry["username"]])
        assert {key: entry.get(key) for key in desired_entry(target)} == desired_entry(target), (entry, desired_entry(target))



#: What ``answered`` holds once the client's re-score request was answered.
RESCORE_ANSWERED = "rescore"


def play(node, actions, ids, answered, extra=None):
    """The client's ``actions`` on ``node``, in order, noting in ``answered`` what got its answer.

    An action is ``"drain"`` (run every queued stage), ``"rescore"`` (request
    a run of round 41, then drive it; RESCORE_ANSWERED once the request
    returned), ``"post <name>"`` (POST ``ids[name]``, its id noted once
    its 202 came back), or a key of ``extra``, a function of the node. A
    crash (:class:`Crash`) ends the play; ``answered`` then says what a
    client would send again.
    """
    for action in actions:
        if action == "drain":
            node.drain()
        elif action == "rescore":
            node.rescorer.request(41)
            answered.add(RESCORE_ANSWERED)
            node.rescore()
        elif extra and action in extra:
            extra[action](node)
        else:
            sid = ids[action.split()[1]]
            assert node.post(sid).status_code == 202
            answered.add(sid)


def crash_at_every_write(attempt, label):
    """Run ``attempt(k)`` for k = 1, 2, ... until a run ends without crashing; the writes it made.

    ``attempt(k)`` runs a path whose k-th write crashes the process,
    recovers, checks the outcome and returns ``(crashed, writes)``. A
    failed check is raised again naming ``label`` and k. The run that did
    not crash must have made exactly k - 1 writes: every write was crashed
    at once.
    """
    k = 1
    while True:
        try:
            crashed, writes = attempt(k)
        except AssertionError as exc:
            raise AssertionError("%s, crash at write %d: %s" % (label, k, exc)) from exc
        if not crashed:
            assert k == writes + 1, (label, k, writes)
            return writes
        k += 1
