"""What judging costs the database, counted by pymongo's command monitoring.

A judged submission costs at most six round trips besides the leaderboard
writer's (accept, claim and its read back, dispatched, the round's new
members, judged), and
the writer's cost for a burst does not grow with the number of changes.
Counted on SecantusDB, the way the server talks to it.
"""
import collections

import numpy as np
import pymongo
import pytest
from bson import ObjectId
from pymongo import monitoring

from queues.files import LocalFiles
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY

from tests.queues.harness import ROUND, Node, World

#: The budget the issue sets for one judged submission, leaderboard aside.
MAX_ROUND_TRIPS = 6


class Commands(monitoring.CommandListener):
    """Counts the commands sent, by name, and the documents reads returned, while ``counting`` is set."""

    def __init__(self):
        self.counting = False
        self.names = collections.Counter()
        self.returned = 0

    def started(self, event):
        if self.counting and event.command_name not in ("endSessions", "hello", "isMaster", "ismaster"):
            self.names[event.command_name] += 1

    def succeeded(self, event):
        if self.counting and event.command_name in ("find", "getMore"):
            cursor = event.reply.get("cursor") or {}
            self.returned += len(cursor.get("firstBatch") or cursor.get("nextBatch") or [])

    def failed(self, event):
        pass

    def count(self, action):
        """The commands ``action`` sends."""
        self.names.clear()
        self.returned = 0
        self.counting = True
        try:
            action()
        finally:
            self.counting = False
        return collections.Counter(self.names)


@pytest.fixture
def counted(real_mongo_url, round_frames, round_zip, tmp_path):
    commands = Commands()
    client = pymongo.MongoClient(real_mongo_url, event_listeners=[commands], serverSelectionTimeoutMS=5000)
    db = client["trips_%s" % ObjectId()]
    files = LocalFiles(str(tmp_path / "files"))
    files.put_dataset(ROUND, str(round_zip))
    node = Node(db, files, str(tmp_path / "cache"), pid=1)
    yield commands, node, World(files, round_frames[1]), db
    client.drop_database(db.name)
    client.close()


def judge(node, sid):
    """POST and every stage, as the server's threads would; the leaderboard writer does not run."""
    assert node.post(sid).status_code == 202
    for stage in (DISPATCH, CONCORDANCE, ORIGINALITY):
        assert node.step(stage) == "ok"


def plausible(world, rng):
    """A plausible prediction vector for the round."""
    return np.clip(rng.normal(0.5, 0.05, len(world.tournament)), 0.01, 0.99).round(5)


def judged_users(node, world, db, rng, count):
    """``count`` users' submissions, each judged by ``node``; their ids."""
    ids = [world.submit(db, "user%02d" % i, plausible(world, rng)) for i in range(count)]
    for sid in ids:
        judge(node, sid)
    return ids


def test_a_judged_submission_costs_at_most_six_round_trips(counted):
    commands, node, world, db = counted
    rng = np.random.default_rng(5)
    judged_users(node, world, db, rng, 15)
    node.board.flush(node.board.take(0))
    late = world.submit(db, "zed", plausible(world, rng))
    sent = commands.count(lambda: judge(node, late))
    assert db.submissions.find_one({"_id": ObjectId(late)})["processing"]["state"] == "done"
    print("\nround trips for one judged submission:", dict(sent))
    assert sum(sent.values()) <= MAX_ROUND_TRIPS, dict(sent)
    # in particular, originality did not read the other fifteen documents again: the reads
    # returned this submission twice (the claim reads it back; it is all that is new to the round)
    assert commands.returned <= 2, (commands.returned, dict(sent))


def test_a_burst_of_changes_costs_the_leaderboard_a_few_writes(counted):
    commands, node, world, db = counted
    ids = judged_users(node, world, db, np.random.default_rng(6), 30)
    changes = node.board.pending()
    assert changes == 30
    sent = commands.count(lambda: node.board.flush(node.board.take(0)))
    print("\nleaderboard flush of 30 changes:", dict(sent))
    writes = sent["update"]
    assert writes <= 4, dict(sent)  # create the leaderboard, push the entries, one grouped write, clear the stamps
    assert sum(sent.values()) <= 8, dict(sent)
    board = db.competitions.find_one({"_id": ROUND})["leaderboard"]
    assert sorted(entry["username"] for entry in board) == ["user%02d" % i for i in range(30)]
    # sixty transitions (dispatched and judged for each) touched thirty entries; after another
    # round of verdict changes the cost is the same, not one write per change
    for sid in ids:
        node.board.touch(ROUND, db.submissions.find_one({"_id": ObjectId(sid)})["username"])
    again = commands.count(lambda: node.board.flush(node.board.take(0)))
    assert again["update"] <= 2 and sum(again.values()) <= 4, dict(again)
