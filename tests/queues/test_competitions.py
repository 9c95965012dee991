"""Competitions: the re-score run lock on the round's document, and its leaderboard's reads and writes.

The runs' whole life (re-queue, judge, close) is in test_rescore.py and
the writer's in test_leaderboard.py; these pin each operation's one
conditional write.
"""
import datetime

import pytest
from bson import ObjectId

from queues.competitions import Competitions
from queues.store import utcnow

ROUND = 41


@pytest.fixture
def competitions(db):
    return Competitions(db, owner="host:5151:1", lease_seconds=30)


def request():
    return {"run": ObjectId(), "competition_id": ROUND, "only": None, "requested_at": utcnow()}


def test_only_one_run_of_a_round_is_open_at_a_time(competitions, db):
    first, second = request(), request()
    assert competitions.start_run(ROUND, first) is True
    assert competitions.start_run(ROUND, second) is False
    assert competitions.open_runs() == {ROUND: first}
    assert competitions.runs_of(ROUND) == (first, [])
    assert db.competitions.find_one({"_id": ROUND})["leaderboard"] == []  # the document was made for it


def test_starting_a_run_keeps_the_boards_entries(competitions, db):
    db.competitions.insert_one({"_id": ROUND, "leaderboard": [{"username": "alice"}]})
    assert competitions.start_run(ROUND, request())
    assert db.competitions.find_one({"_id": ROUND})["leaderboard"] == [{"username": "alice"}]


def test_a_run_closes_once_and_only_under_its_own_id(competitions):
    run = request()
    competitions.start_run(ROUND, run)
    assert competitions.close_run(ROUND, ObjectId(), {"run": "other"}) is False
    assert competitions.close_run(ROUND, run["run"], {"run": run["run"], "changed": 0}) is True
    assert competitions.close_run(ROUND, run["run"], {"run": run["run"], "changed": 0}) is False
    assert competitions.runs_of(ROUND) == (None, [{"run": run["run"], "changed": 0}])
    assert competitions.open_runs() == {}


def test_a_live_drivers_lease_keeps_others_out_until_it_expires_or_is_released(competitions, db):
    run = request()
    competitions.start_run(ROUND, run)
    other = Competitions(db, owner="elsewhere:5151:9", lease_seconds=30)
    assert competitions.drive_run(ROUND, run["run"]) is True
    assert other.drive_run(ROUND, run["run"]) is False
    assert other.drive_run(ROUND, run["run"], owners=["host:5151:1"]) is True  # a dead process of its server
    assert competitions.drive_run(ROUND, run["run"]) is False
    other.release_runs()
    assert competitions.drive_run(ROUND, run["run"]) is True
    db.competitions.update_one({"_id": ROUND}, {"$set": {"rescore.lease.expires": utcnow() - datetime.timedelta(seconds=1)}})
    assert other.drive_run(ROUND, run["run"]) is True


def test_a_closed_or_unknown_run_cannot_be_driven(competitions):
    run = request()
    competitions.start_run(ROUND, run)
    assert competitions.drive_run(ROUND, ObjectId()) is False
    competitions.close_run(ROUND, run["run"], {"run": run["run"]})
    assert competitions.drive_run(ROUND, run["run"]) is False


def test_the_board_is_replaced_only_while_it_is_exactly_as_read(competitions, db):
    assert competitions.board_entries(ROUND) is None  # no document yet
    db.competitions.insert_one({"_id": ROUND, "leaderboard": [{"username": "alice", "paid": False}]})
    read = competitions.board_entries(ROUND)
    db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard.0.paid": True}})  # the backend, meanwhile
    assert competitions.replace_board(ROUND, read, read + [{"username": "bob"}]) is False
    assert competitions.board_entries(ROUND) == [{"username": "alice", "paid": True}]
    read = competitions.board_entries(ROUND)
    assert competitions.replace_board(ROUND, read, read + [{"username": "bob"}]) is True
    assert [entry["username"] for entry in competitions.board_entries(ROUND)] == ["alice", "bob"]


def test_a_board_that_is_not_an_array_reads_as_empty(competitions, db):
    db.competitions.insert_one({"_id": ROUND, "leaderboard": "rewritten by hand"})
    assert competitions.board_entries(ROUND) == []


def test_career_earnings_are_zero_for_users_without_any(competitions, db):
    db.users.insert_one({"username": "alice", "earnings": {"career": {"usd": 7.5, "nmr": 2}}})
    assert competitions.career_earnings(["alice", "bob"]) == {"alice": {"usd": 7.5, "nmr": 2}, "bob": {"usd": 0, "nmr": 0}}
