"""What judging costs the database, counted by pymongo's command monitoring.

A judged submission costs five round trips (accept, the dispatcher's read
under the intake's lease, dispatched, originality's marker, judged) plus
its share of the members' change stream, and none of them reads the
round's other documents; the leaderboard writer's cost for a burst does
not grow with the number of changes. Counted on SecantusDB, the way the
server talks to it.
"""
import collections
import datetime
import math
import time

import numpy as np
import pymongo
import pytest
from bson import ObjectId
from pymongo import monitoring

from queues.files import LocalFiles
from queues.members import STREAM
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY
from queues.store import IDS_PER_COMMAND

from tests.queues.harness import ROUND, Node, World

#: Commands the judging threads send for one submission, leaderboard and change stream aside.
JUDGING_ROUND_TRIPS = 5
#: The budget for one judged submission, the change stream's getMores included.
MAX_ROUND_TRIPS = 6


class Commands(monitoring.CommandListener):
    """Counts the commands sent, by name, and the documents reads returned, while ``counting`` is set."""

    def __init__(self):
        self.counting = False
        self.names = collections.Counter()
        self.returned = 0
        self.streamed = 0
        self.stream_waits = 0

    def started(self, event):
        if self.counting and event.command_name not in ("endSessions", "hello", "isMaster", "ismaster"):
            self.names[event.command_name] += 1

    def succeeded(self, event):
        if self.counting and event.command_name in ("find", "getMore"):
            cursor = event.reply.get("cursor") or {}
            batch = cursor.get("firstBatch") or cursor.get("nextBatch") or []
            if event.command_name == "find":
                self.returned += len(batch)
            else:
                self.streamed += len(batch)
                self.stream_waits += not batch  # a getMore that waited its time and found nothing

    def failed(self, event):
        pass

    def count(self, action):
        """The commands ``action`` sends."""
        self.names.clear()
        self.returned = self.streamed = self.stream_waits = 0
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
    node = Node(db, files, str(tmp_path / "cache"), pid=1, follow=True)
    yield commands, node, World(files, round_frames[1]), db
    node.pipeline.stop.set()
    client.drop_database(db.name)
    client.close()


def wait_until(predicate, what, timeout=20.0):
    """Poll a state until it holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.01)


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


def test_a_judged_submission_costs_five_round_trips_and_reads_nothing_else(counted):
    commands, node, world, db = counted
    rng = np.random.default_rng(5)
    wait_until(lambda: node.members.feed == STREAM, "the members' change stream to open")
    judged_users(node, world, db, rng, 15)
    node.board.flush(node.board.take(0))
    late = world.submit(db, "zed", plausible(world, rng))
    node.members.latest_others(ROUND, "nobody", datetime.datetime.max)  # the stream has delivered zed's insert
    sent = commands.count(lambda: judge(node, late))
    assert db.submissions.find_one({"_id": ObjectId(late)})["processing"]["state"] == "done"
    print("\nround trips for one judged submission:", dict(sent))
    judging = sum(sent.values()) - sent["getMore"]
    assert judging == JUDGING_ROUND_TRIPS, dict(sent)
    # the getMore that delivered the marker shares the budget; a getMore that only waited
    # out its time is the stream idling, not work for this submission
    assert judging + sent["getMore"] - commands.stream_waits <= MAX_ROUND_TRIPS, dict(sent)
    # originality did not read the other fifteen documents again: the only document read is
    # zed's own (the dispatcher's read under the intake's lease)
    assert commands.returned == 1, (commands.returned, dict(sent))
    assert node.members.stats["full_reads"] == 1  # the round, once, at its first check


def test_a_burst_of_changes_costs_the_leaderboard_a_few_commands(counted):
    commands, node, world, db = counted
    wait_until(lambda: node.members.feed == STREAM, "the members' change stream to open")
    ids = judged_users(node, world, db, np.random.default_rng(6), 30)
    changes = node.board.pending()
    assert changes == 30
    sent = commands.count(lambda: node.board.flush(node.board.take(0)))
    sent.pop("getMore", None)  # the members' stream, on its own thread
    print("\nleaderboard flush of 30 changes:", dict(sent))
    # read the round's entries (none yet: create the document), read the thirty users' submissions
    # by id (IDS_PER_COMMAND at a time) and their career earnings, one write of all thirty entries,
    # clear the stamps (IDS_PER_COMMAND at a time)
    chunks = math.ceil(30 / IDS_PER_COMMAND)
    assert sent == {"find": 2 + chunks, "update": 2 + chunks}, dict(sent)
    assert node.board.writes == 1
    board = db.competitions.find_one({"_id": ROUND})["leaderboard"]
    assert sorted(entry["username"] for entry in board) == ["user%02d" % i for i in range(30)]
    # sixty transitions (dispatched and judged for each) touched thirty entries; touched again,
    # the writer reads the submissions (its copy of the entries is current) and writes nothing
    for sid in ids:
        node.board.touch(ROUND, db.submissions.find_one({"_id": ObjectId(sid)})["username"])
    again = commands.count(lambda: node.board.flush(node.board.take(0)))
    again.pop("getMore", None)
    assert again == {"find": chunks}, dict(again)
