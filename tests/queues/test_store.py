"""Store: the submission lifecycle and the leaderboard, in MongoDB documents.

Most tests use mongomock; the concurrency tests run against a real
MongoDB wire server (SecantusDB on a free loopback port), because
mongomock serialises every operation and so cannot show a race.
"""
import datetime
import threading

import pymongo
import pytest
from bson import ObjectId

from queues.local import embedded
from queues.store import (CHECKS, DONE, FAILED, QUEUED, SCORING, STAGE_CHECKS, STAGE_CONSISTENCY, Store,
                          utcnow)

ROUND = 41
T0 = datetime.datetime(2017, 3, 20, 12, 0)


# -- helpers ------------------------------------------------------------------
def add_submission(db, username, created=None, competition_id=ROUND, **fields):
    """A submissions document as the backend writes it (no file); returns its id string."""
    oid = ObjectId()
    doc = {"_id": oid, "username": username, "competition_id": competition_id,
           "filename": "predictions-%s.csv" % str(oid)[-6:], "created": created or T0}
    doc.update(fields)
    db.submissions.insert_one(doc)
    return str(oid)


def entries(db, competition_id=ROUND):
    competition = db.competitions.find_one({"_id": competition_id})
    return competition["leaderboard"] if competition else None


def entry_of(db, username, competition_id=ROUND):
    found = [e for e in entries(db, competition_id) if e["username"] == username]
    assert len(found) == 1, found
    return found[0]


def begin(store, sid):
    """What intake and the dispatcher do: accept (unless already), then begin."""
    if (store.get(sid) or {}).get("processing") is None:
        store.accept(sid)
    return store.begin(sid)


def test_begin_takes_only_what_is_still_to_dispatch(store, db):
    """A stale recovery read must not send a finished or checked submission back through."""
    sid = add_submission(db, "alice")
    assert store.begin(sid) is None  # never accepted
    store.accept(sid)
    doc = scored(store, sid)
    store.enter_checks(doc)
    assert store.begin(sid) is None  # past consistency: the checks own it now
    store.record_check(doc, "concordant", True)
    store.record_check(doc, "original", True)
    assert store.begin(sid) is None  # done
    assert store.get(sid)["processing"]["attempts"] == 1


def scored(store, sid, consistency=75.0, logloss=0.69):
    """begin + consistency + leaderboard: the dispatcher's writes; returns the fresh doc."""
    doc = begin(store, sid)
    store.record_consistency(doc, consistency, logloss)
    store.update_leaderboard(doc, consistency, logloss)
    return store.get(sid)


@pytest.fixture
def user(db):
    db.users.insert_one({"username": "alice", "earnings": {"career": {"usd": 12.5, "nmr": 3.0}}})
    return "alice"


# -- accept -------------------------------------------------------------------
def test_accept_queues_and_records_processing_fields(store, db):
    sid = add_submission(db, "alice")
    before = utcnow()
    assert store.accept(sid) == "queued"
    after = utcnow()
    processing = store.get(sid)["processing"]
    assert processing["state"] == QUEUED
    assert processing["stage"] == STAGE_CONSISTENCY
    assert before <= processing["queued_at"] <= after
    assert processing["updated_at"] == processing["queued_at"]
    assert processing["attempts"] == 0
    assert processing["error"] is None


def test_accept_while_queued_or_scoring_is_already(store, db):
    sid = add_submission(db, "alice")
    assert store.accept(sid) == "queued"
    queued_at = store.get(sid)["processing"]["queued_at"]
    assert store.accept(sid) == "already"
    begin(store, sid)
    assert store.accept(sid) == "already"
    processing = store.get(sid)["processing"]
    assert processing["state"] == SCORING
    assert processing["queued_at"] == queued_at
    assert processing["attempts"] == 1


def test_accept_unknown_id_is_missing_and_creates_nothing(store, db):
    assert store.accept(str(ObjectId())) == "missing"
    assert db.submissions.count_documents({}) == 0


@pytest.mark.parametrize("outcome", [DONE, FAILED])
def test_accept_requeues_finished_submissions_and_resets_attempts(store, db, outcome):
    sid = add_submission(db, "alice")
    store.accept(sid)
    begin(store, sid)  # a first attempt, interrupted before consistency was written
    doc = scored(store, sid)  # the second attempt
    if outcome == DONE:
        store.record_check(doc, "concordant", True)
        store.record_check(doc, "original", True)
    else:
        store.fail(sid, "the file is broken")
    processing = store.get(sid)["processing"]
    assert processing["state"] == outcome
    assert processing["attempts"] == 2

    assert store.accept(sid) == "queued"
    processing = store.get(sid)["processing"]
    assert processing["state"] == QUEUED
    assert processing["stage"] == STAGE_CONSISTENCY
    assert processing["attempts"] == 0
    assert processing["error"] is None


def test_accept_of_a_submission_without_processing_fields_from_before_us(store, db):
    sid = add_submission(db, "alice", processing={})
    assert store.accept(sid) == "queued"
    assert store.get(sid)["processing"]["state"] == QUEUED


# -- begin / consistency ----------------------------------------------------------
def test_begin_moves_to_scoring_counts_attempts_and_marks_checks_pending(store, db):
    sid = add_submission(db, "alice", concordant={"pending": False, "value": True})
    store.accept(sid)
    before = utcnow()
    doc = begin(store, sid)
    assert doc["_id"] == ObjectId(sid)
    assert doc["processing"]["state"] == SCORING
    assert doc["processing"]["stage"] == STAGE_CONSISTENCY
    assert doc["processing"]["started_at"] >= before
    assert doc["processing"]["attempts"] == 1
    assert doc["concordant"] == {"pending": True}
    assert doc["original"] == {"pending": True}
    assert store.get(sid) == doc  # the returned document is the stored one, after the update
    assert begin(store, sid)["processing"]["attempts"] == 2


def test_begin_of_a_gone_submission_is_none(store):
    assert begin(store, str(ObjectId())) is None


@pytest.mark.parametrize("backend_logloss", [None, "absent", 0.6812])
def test_record_consistency_writes_logloss_only_when_the_backend_gave_none(store, db, backend_logloss):
    fields = {} if backend_logloss == "absent" else {"validationLogloss": backend_logloss}
    sid = add_submission(db, "alice", **fields)
    doc = begin(store, sid)
    store.record_consistency(doc, 83.3, 0.6931)
    stored = store.get(sid)
    assert stored["consistency"] == 83.3
    assert stored["processing"]["stage"] == STAGE_CONSISTENCY  # until enter_checks, a retry dispatches again
    store.enter_checks(doc)
    assert store.get(sid)["processing"]["stage"] == STAGE_CHECKS
    expected = 0.6812 if backend_logloss == 0.6812 else 0.6931
    assert stored["validationLogloss"] == expected


# -- leaderboard ----------------------------------------------------------------
def test_first_submission_creates_an_entry_with_career_earnings(store, db, user):
    db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
    sid = add_submission(db, user)
    doc = begin(store, sid)
    store.update_leaderboard(doc, 66.7, 0.6925)
    assert entries(db) == [{
        "username": "alice", "submission_id": ObjectId(sid),
        "earnings": {"career": {"usd": 12.5, "nmr": 3.0}, "competition": {"usd": 0, "nmr": 0}},
        "logloss": {"validation": 0.6925, "consistency": 66.7},
        "concordant": {"pending": True}, "original": {"pending": True},
    }]


@pytest.mark.parametrize("user_doc", [None, {"username": "bob"}, {"username": "bob", "earnings": {}},
                                      {"username": "bob", "earnings": {"career": {"usd": 4}}}])
def test_career_earnings_default_to_zero(store, db, user_doc):
    if user_doc is not None:
        db.users.insert_one(user_doc)
    sid = add_submission(db, "bob")
    store.update_leaderboard(begin(store, sid), 50.0, 0.7)
    usd = (user_doc or {}).get("earnings", {}).get("career", {}).get("usd", 0)
    assert entry_of(db, "bob")["earnings"] == {"career": {"usd": usd, "nmr": 0}, "competition": {"usd": 0, "nmr": 0}}


def test_a_users_second_submission_updates_the_same_entry(store, db, user):
    first = add_submission(db, user, created=T0)
    doc = scored(store, first, 50.0, 0.70)
    store.record_check(doc, "concordant", True)
    assert entry_of(db, user)["concordant"] == {"pending": False, "value": True}

    second = add_submission(db, user, created=T0 + datetime.timedelta(hours=1))
    store.update_leaderboard(begin(store, second), 91.7, 0.689)
    board = entries(db)
    assert len(board) == 1
    entry = board[0]
    assert entry["submission_id"] == ObjectId(second)
    assert entry["logloss"] == {"validation": 0.689, "consistency": 91.7}
    # the new submission's checks are not judged yet
    assert entry["concordant"] == {"pending": True} and entry["original"] == {"pending": True}
    assert entry["earnings"]["career"] == {"usd": 12.5, "nmr": 3.0}


def test_other_users_get_their_own_entries(store, db):
    ids = {name: add_submission(db, name) for name in ("alice", "bob", "carol")}
    for name, sid in ids.items():
        store.update_leaderboard(begin(store, sid), 50.0, 0.7)
    board = entries(db)
    assert sorted(e["username"] for e in board) == ["alice", "bob", "carol"]
    assert {e["username"]: e["submission_id"] for e in board} == {n: ObjectId(s) for n, s in ids.items()}


def test_update_leaderboard_creates_the_competition_when_missing(store, db):
    sid = add_submission(db, "alice", competition_id=42)
    assert db.competitions.find_one({"_id": 42}) is None
    store.update_leaderboard(begin(store, sid), 50.0, 0.7)
    assert [e["username"] for e in entries(db, 42)] == ["alice"]
    assert entries(db, ROUND) is None  # and only that one


def test_update_leaderboard_keeps_other_competition_fields(store, db):
    db.competitions.insert_one({"_id": ROUND, "leaderboard": [], "start_date": T0, "dataset_id": "abc"})
    store.update_leaderboard(begin(store, add_submission(db, "alice")), 50.0, 0.7)
    competition = db.competitions.find_one({"_id": ROUND})
    assert competition["start_date"] == T0 and competition["dataset_id"] == "abc"


# -- checks -------------------------------------------------------------------
def test_record_check_writes_both_places_and_finishes_exactly_once(store, db, user):
    sid = add_submission(db, user)
    store.accept(sid)
    doc = scored(store, sid)

    assert store.record_check(doc, "concordant", True) is False
    stored = store.get(sid)
    assert stored["concordant"] == {"pending": False, "value": True}
    assert stored["original"] == {"pending": True}
    assert stored["processing"]["state"] == SCORING
    assert entry_of(db, user)["concordant"] == {"pending": False, "value": True}

    assert store.record_check(doc, "original", False) is True
    stored = store.get(sid)
    assert stored["original"] == {"pending": False, "value": False}
    assert stored["processing"]["state"] == DONE
    assert stored["processing"]["finished_at"] >= stored["processing"]["started_at"]
    assert entry_of(db, user)["original"] == {"pending": False, "value": False}

    # repeating a verdict (a redelivered job) never finishes it a second time
    assert store.record_check(doc, "original", False) is False
    assert store.record_check(doc, "concordant", True) is False
    assert store.finish_if_complete(ObjectId(sid)) is False


def test_record_check_with_an_error_fails_the_submission(store, db, user):
    sid = add_submission(db, user)
    doc = scored(store, sid)
    assert store.record_check(doc, "concordant", None, "the round has no clusters") is False
    stored = store.get(sid)
    assert stored["concordant"] == {"pending": False, "value": None, "error": "the round has no clusters"}
    assert stored["processing"]["state"] == FAILED
    assert stored["processing"]["error"] == "the round has no clusters"
    assert entry_of(db, user)["concordant"] == stored["concordant"]
    # the other check arriving later does not turn it into done
    assert store.record_check(doc, "original", True) is False
    assert store.get(sid)["processing"]["state"] == FAILED


def test_record_check_leaves_an_entry_that_points_at_a_newer_submission(store, db, user):
    old = add_submission(db, user, created=T0)
    old_doc = scored(store, old)
    new = add_submission(db, user, created=T0 + datetime.timedelta(hours=1))
    scored(store, new)
    store.record_check(old_doc, "original", False)
    assert store.get(old)["original"] == {"pending": False, "value": False}
    entry = entry_of(db, user)
    assert entry["submission_id"] == ObjectId(new)
    assert entry["original"] == {"pending": True}


def test_fail_gives_pending_checks_the_reason_and_keeps_judged_ones(store, db, user):
    sid = add_submission(db, user)
    doc = scored(store, sid)
    store.record_check(doc, "concordant", True)
    store.fail(sid, "storage lost the file")
    stored = store.get(sid)
    assert stored["concordant"] == {"pending": False, "value": True}
    assert stored["original"] == {"pending": False, "value": None, "error": "storage lost the file"}
    assert stored["processing"]["state"] == FAILED
    assert stored["processing"]["error"] == "storage lost the file"
    entry = entry_of(db, user)
    assert entry["concordant"] == {"pending": False, "value": True}
    assert entry["original"] == stored["original"]


def test_fail_before_scoring_started_marks_both_checks(store, db):
    sid = add_submission(db, "alice")
    store.accept(sid)
    store.fail(sid, "the submission document lacks filename")
    stored = store.get(sid)
    for check in CHECKS:
        assert stored[check] == {"pending": False, "value": None, "error": "the submission document lacks filename"}
    assert stored["processing"]["state"] == FAILED
    assert db.competitions.count_documents({}) == 0  # nothing on the leaderboard to touch


def test_fail_of_a_gone_submission_does_nothing(store, db):
    store.fail(str(ObjectId()), "whatever")
    assert db.submissions.count_documents({}) == 0


# -- originality query ------------------------------------------------------------
def test_latest_others_is_each_other_users_latest_earlier_submission(store, db):
    at = lambda minutes: T0 + datetime.timedelta(minutes=minutes)  # noqa: E731
    alice = add_submission(db, "alice", at(1))
    add_submission(db, "bob", at(2))
    bob_latest = add_submission(db, "bob", at(3))
    add_submission(db, "dave", at(4), competition_id=42)  # another round
    carol = add_submission(db, "carol", at(5))
    add_submission(db, "eve", at(6))  # eve's own earlier one
    mine = at(10)
    eve = add_submission(db, "eve", mine)
    add_submission(db, "bob", mine)  # same instant: not strictly before
    add_submission(db, "frank", at(11))  # later
    docs = {str(d["_id"]): d for d in db.submissions.find()}

    found = store.latest_others(ROUND, "eve", mine)
    assert sorted(found, key=lambda r: r["username"]) == [
        {"submission_id": sid, "username": docs[sid]["username"], "filename": docs[sid]["filename"]}
        for sid in (alice, bob_latest, carol)
    ]
    assert eve not in {r["submission_id"] for r in found}
    # the round id may arrive as a string
    assert len(store.latest_others(str(ROUND), "eve", mine)) == 3
    assert [r["username"] for r in store.latest_others(42, "eve", mine)] == ["dave"]
    assert store.latest_others(ROUND, "eve", at(1)) == []


# -- recovery query ------------------------------------------------------------------
def test_unfinished_returns_queued_and_scoring_oldest_first(store, db):
    at = lambda hours: T0 + datetime.timedelta(hours=hours)  # noqa: E731
    late_queued = add_submission(db, "a", at(5), processing={"state": QUEUED})
    early_scoring = add_submission(db, "b", at(1), processing={"state": SCORING, "stage": STAGE_CHECKS},
                                   concordant={"pending": True}, original={"pending": False, "value": True})
    add_submission(db, "c", at(2), processing={"state": DONE})
    add_submission(db, "d", at(3), processing={"state": FAILED})
    add_submission(db, "e", at(0))  # never accepted
    middle_queued = add_submission(db, "f", at(4), processing={"state": QUEUED})

    found = list(store.unfinished())
    assert [str(d["_id"]) for d in found] == [early_scoring, middle_queued, late_queued]
    # recovery can route from what is returned
    assert found[0]["processing"] == {"state": SCORING, "stage": STAGE_CHECKS}
    assert found[0]["concordant"] == {"pending": True}
    assert found[0]["original"] == {"pending": False, "value": True}


# -- against a real MongoDB wire server ---------------------------------------------
@pytest.fixture(scope="module")
def real_mongo_url(tmp_path_factory):
    """SecantusDB on a free loopback port with its data in a temporary folder."""
    with embedded(str(tmp_path_factory.mktemp("secantus"))) as url:
        yield url


@pytest.fixture
def real_db(real_mongo_url):
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    name = "t_%s" % ObjectId()  # a fresh database per test
    client.drop_database(name)
    yield client[name]
    client.drop_database(name)
    client.close()


def run_together(functions):
    """Start every function on its own thread at the same instant; return results/exceptions."""
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)

    def run(i, function):
        barrier.wait()
        try:
            results[i] = function()
        except Exception as exc:  # reported to the test, which asserts there are none
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    return results


@pytest.mark.parametrize("competition_exists", [True, False])
def test_racing_writers_for_one_user_leave_one_entry(real_db, competition_exists):
    store = Store(real_db)
    for attempt in range(3):
        real_db.competitions.delete_many({})
        if competition_exists:
            real_db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
        docs = [store.get(add_submission(real_db, "alice")) for _ in range(12)]
        results = run_together([lambda d=d: store.update_leaderboard(d, 50.0, 0.7) for d in docs])
        assert [r for r in results if isinstance(r, Exception)] == []
        board = entries(real_db)
        assert len(board) == 1, board
        assert board[0]["username"] == "alice"
        assert board[0]["submission_id"] in {d["_id"] for d in docs}
        assert real_db.competitions.count_documents({}) == 1


def test_racing_writers_for_several_users_leave_one_entry_each(real_db):
    store = Store(real_db)
    real_db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
    users = ["u%d" % i for i in range(4)]
    docs = [store.get(add_submission(real_db, name)) for name in users for _ in range(3)]
    results = run_together([lambda d=d: store.update_leaderboard(d, 50.0, 0.7) for d in docs])
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sorted(e["username"] for e in entries(real_db)) == users


def test_racing_checks_finish_the_submission_exactly_once(real_db):
    store = Store(real_db)
    for attempt in range(5):
        sid = add_submission(real_db, "alice")
        doc = scored(store, sid)
        results = run_together([lambda: store.record_check(doc, "concordant", True),
                                lambda: store.record_check(doc, "original", True)])
        assert sorted(results) == [False, True]
        assert store.get(sid)["processing"]["state"] == DONE
