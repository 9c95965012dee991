"""Who is in a round: every check's answer is a fresh query's, at a cost that does not grow with the round.

Each test compares ``RoundMembers.latest_others`` with the answer of a
plain query of the database at the same instant (``fresh``). The change
stream runs against SecantusDB (a real MongoDB-wire server); mongomock,
which has no change streams, shows the fallback.
"""
import datetime
import os
import threading
import time

import pymongo
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queues import members as members_module
from queues.members import STREAM, RoundMembers, StreamStuck, latest_before
from queues.store import Store

ROUND = 41
T0 = datetime.datetime(2017, 3, 20, 9, 0)


def at(hours):
    return T0 + datetime.timedelta(hours=hours)


def add(db, username, created, competition_id=ROUND, oid=None, **fields):
    doc = {"_id": oid or ObjectId(), "username": username, "competition_id": competition_id,
           "filename": "%s.csv" % username, "created": created, **fields}
    db.submissions.insert_one(doc)
    return doc["_id"]


def old_id(when):
    """An id from the past (its time is ``when``), unique like any other."""
    return ObjectId(ObjectId.from_datetime(when).binary[:4] + os.urandom(8))


def fresh(db, username, created, competition_id=ROUND):
    """What a plain query of the round answers right now: (compared, left out)."""
    docs = list(db.submissions.find({"competition_id": competition_id}))
    return tuple(sorted(found, key=lambda o: o["submission_id"]) for found in latest_before(docs, username, created))


def answer(members, username, created, competition_id=ROUND):
    return tuple(sorted(found, key=lambda o: o["submission_id"])
                 for found in members.latest_others(competition_id, username, created))


def wait_for(predicate, what, timeout=20.0):
    """Poll a state until it holds (never a fixed sleep); fail naming ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        time.sleep(0.01)


class Following:
    """A RoundMembers whose stream thread runs for the test; stopped and joined afterwards."""

    def __init__(self, store, **options):
        self.stop = threading.Event()
        self.members = RoundMembers(store, self.stop, **options)
        self.thread = threading.Thread(target=self.members.loop, name="members", daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.members.feed == STREAM or self.members.unavailable, "the stream to open")
        return self.members

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


# -- the rule itself --------------------------------------------------------------------
def doc_of(username, created, **fields):
    return {"_id": ObjectId(), "username": username, "filename": "%s.csv" % username, "created": created, **fields}


def test_latest_before_takes_each_other_users_latest_earlier_submission():
    docs = [doc_of("bob", at(1)), doc_of("bob", at(2)),
            doc_of("carol", at(5)),   # after the candidate
            doc_of("alice", at(1)),   # the candidate's own user
            doc_of("dave", None)]     # no time: never compared, and said so
    compared, left_out = latest_before(docs, "alice", at(3))
    assert [o["submission_id"] for o in compared] == [str(docs[1]["_id"])]
    assert left_out == [{"submission_id": str(docs[4]["_id"]), "username": "dave", "field": "created",
                         "reason": "created is null"}]


def test_latest_before_breaks_equal_created_times_by_id_and_is_strict():
    ids = sorted(ObjectId() for _ in range(3))
    docs = [{"_id": oid, "username": "bob", "filename": "b.csv", "created": T0} for oid in ids]
    assert [o["submission_id"] for o in latest_before(docs, "alice", at(1))[0]] == [str(ids[-1])]
    assert latest_before(docs, "alice", T0) == ([], [])  # the same instant is not earlier


def test_a_document_whose_fields_cannot_be_used_is_left_out_saying_which_and_why():
    text_time = doc_of("bob", "2017-03-20T09:00:00Z")
    number_time = doc_of("carol", 1490000000)
    nameless = doc_of(None, at(1))
    listed = doc_of(["x"], at(1))
    bad_file = doc_of("dave", at(2), filename=7)
    dave_before = doc_of("dave", at(1))  # dave's latest cannot be read: the earlier one does not stand in
    erin = doc_of("erin", at(1))
    erin_bad_time = doc_of("erin", None)  # can't be placed: erin's usable latest is compared
    compared, left_out = latest_before([text_time, number_time, nameless, listed, bad_file, dave_before, erin,
                                        erin_bad_time, doc_of("alice", "junk")], "alice", at(3))
    assert [o["username"] for o in compared] == ["erin"]
    assert {(o["submission_id"], o["field"], o["reason"]) for o in left_out} == {
        (str(text_time["_id"]), "created", "created is the text '2017-03-20T09:00:00Z', not a date"),
        (str(number_time["_id"]), "created", "created is the number 1490000000, not a date"),
        (str(nameless["_id"]), "username", "username is null"),
        (str(listed["_id"]), "username", "username is a list, not text"),
        (str(bad_file["_id"]), "filename", "filename is the number 7, not text"),
        (str(erin_bad_time["_id"]), "created", "created is null")}


# -- the fallback: no change streams ------------------------------------------------------
def test_without_change_streams_every_check_reads_its_round_and_says_so(store, db, caplog):
    add(db, "bob", at(1))
    with Following(store) as members:
        assert members.unavailable and members.feed is None
        assert answer(members, "alice", at(3)) == fresh(db, "alice", at(3))
        gone = add(db, "carol", at(2))
        assert answer(members, "alice", at(3)) == fresh(db, "alice", at(3))
        db.submissions.delete_one({"_id": gone})  # a deleted document leaves at once
        assert answer(members, "alice", at(3)) == fresh(db, "alice", at(3))
        assert members.stats["full_reads"] == 3
    assert "no change streams" in caplog.text


# -- the change stream: one full read, then only what changes ----------------------------
@pytest.fixture
def real_store(real_db):
    return Store(real_db, owner="test-host:5151:1")


def test_a_round_is_read_once_then_each_check_costs_one_marker(real_store, real_db):
    add(real_db, "bob", at(1))
    newest_bob = add(real_db, "bob", at(2))
    add(real_db, "carol", at(5))
    add(real_db, "dave", at(1), competition_id=ROUND + 1)
    with Following(real_store) as members:
        found = answer(members, "alice", at(3))
        assert [o["submission_id"] for o in found[0]] == [str(newest_bob)]
        assert found == fresh(real_db, "alice", at(3))
        for _ in range(3):
            assert answer(members, "alice", at(3)) == found
        assert members.stats["full_reads"] == 1
        assert members.stats["markers"] == 4


def test_every_kind_of_backend_change_is_seen_at_once(real_store, real_db):
    bob = add(real_db, "bob", at(1))
    carol = add(real_db, "carol", at(1))
    with Following(real_store) as members:
        assert answer(members, "alice", at(3)) == fresh(real_db, "alice", at(3))
        changes = [
            # inserted late, with an older created time and an id from the past
            lambda: add(real_db, "erin", at(0), oid=old_id(T0 - datetime.timedelta(days=30))),
            lambda: real_db.submissions.delete_one({"_id": carol}),
            lambda: real_db.submissions.replace_one({"_id": bob}, {"username": "bobby", "competition_id": ROUND,
                                                                   "filename": "b2.csv", "created": at(2)}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"created": at(4)}}),  # now after alice
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"created": at(1)}}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$unset": {"created": ""}}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"created": at(1), "filename": "b3.csv"}}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"competition_id": ROUND + 1}}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"competition_id": ROUND}}),
            lambda: real_db.submissions.update_one({"_id": bob}, {"$set": {"processing.state": "queued"}}),
            lambda: real_db.submissions.insert_many([{"username": "u%d" % i, "competition_id": ROUND,
                                                      "filename": "f.csv", "created": at(i % 4)} for i in range(8)]),
            lambda: real_db.submissions.delete_many({"username": {"$in": ["u1", "u2"]}}),
        ]
        for change in changes:
            change()
            assert answer(members, "alice", at(3)) == fresh(real_db, "alice", at(3))
        assert members.stats["full_reads"] == 1


class CuttableStore:
    """A store whose change streams can be cut, as a lost connection or a lost resume token cuts them."""

    def __init__(self, store):
        self.store = store
        self.cut = threading.Event()
        self.opened = 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def watch_members(self, await_ms):
        self.opened += 1
        return CuttableStream(self.store.watch_members(await_ms), self.cut)


class CuttableStream:
    def __init__(self, stream, cut):
        self.stream = stream
        self.cut = cut

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def try_next(self):
        if self.cut.is_set():
            self.cut.clear()
            raise pymongo.errors.OperationFailure("resume token not found", code=286)  # ChangeStreamHistoryLost
        return self.stream.try_next()


def test_a_stream_cut_mid_round_is_reopened_and_the_round_read_again(real_store, real_db, monkeypatch):
    monkeypatch.setattr(members_module, "REOPEN_SECONDS", 0.05)
    store = CuttableStore(real_store)
    add(real_db, "bob", at(1))
    with Following(store) as members:
        assert answer(members, "alice", at(3)) == fresh(real_db, "alice", at(3))
        store.cut.set()
        # what happens while the stream is down is never missed
        add(real_db, "carol", at(2))
        real_db.submissions.delete_one({"username": "bob"})
        wait_for(lambda: store.opened == 2 and members.feed == STREAM, "the stream to be reopened")
        add(real_db, "dave", at(2))
        assert answer(members, "alice", at(3)) == fresh(real_db, "alice", at(3))
        assert {o["username"] for o in answer(members, "alice", at(3))[0]} == {"carol", "dave"}
        assert members.stats["full_reads"] == 2


def test_checks_during_a_break_read_the_round_themselves(real_store, real_db):
    add(real_db, "bob", at(1))
    members = RoundMembers(real_store)  # no stream thread: as while a broken stream is being reopened
    assert members.feed is None
    assert answer(members, "alice", at(3)) == fresh(real_db, "alice", at(3))
    assert members.stats["full_reads"] == 1 and members.stats["markers"] == 0


class HeldMarkers:
    """A store whose marker writes wait until the test lets each go."""

    def __init__(self, store):
        self.store = store
        self.entered = threading.Semaphore(0)
        self.proceed = threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self.store, name)

    def write_marker(self, token):
        self.entered.release()
        assert self.proceed.acquire(timeout=20)
        self.store.write_marker(token)


def test_checks_arriving_during_a_marker_write_share_the_next_marker(real_store, real_db):
    add(real_db, "bob", at(1))
    store = HeldMarkers(real_store)
    with Following(store) as members:
        results = []
        first = threading.Thread(target=lambda: results.append(answer(members, "alice", at(3))))
        first.start()
        assert store.entered.acquire(timeout=20)  # the first check leads and is writing its marker
        later = [threading.Thread(target=lambda: results.append(answer(members, "carol", at(3)))) for _ in range(3)]
        for thread in later:
            thread.start()
        wait_for(lambda: members._requested == 4, "the later checks to queue behind the marker")
        store.proceed.release()
        assert store.entered.acquire(timeout=20)  # one of the later checks leads the next marker
        store.proceed.release()
        for thread in [first] + later:
            thread.join(20)
        assert len(results) == 4
        assert members.stats["markers"] == 2


def test_a_marker_the_stream_never_delivers_is_a_transient_error(real_store, real_db):
    class Lost:
        def __getattr__(self, name):
            return getattr(real_store, name)

        def write_marker(self, token):
            pass  # never written: the stream cannot deliver it

    with Following(Lost(), marker_timeout=0.3) as members:
        with pytest.raises(StreamStuck):
            members.latest_others(ROUND, "alice", at(3))
        assert isinstance(StreamStuck("x"), TimeoutError)  # what the workers retry


# -- property: any sequence of backend writes, any check, a fresh query's answer -----------
USERS = ("alice", "bob", "carol")
operations = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(USERS), st.integers(0, 6), st.sampled_from([ROUND, ROUND + 1]),
              st.booleans()),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("replace"), st.integers(0, 20), st.sampled_from(USERS), st.integers(0, 6)),
    st.tuples(st.just("move"), st.integers(0, 20), st.sampled_from([ROUND, ROUND + 1])),
    st.tuples(st.just("retime"), st.integers(0, 20), st.one_of(st.none(), st.integers(0, 6))),
    st.tuples(st.just("check"), st.sampled_from(USERS), st.integers(0, 7)),
), min_size=1, max_size=25)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_any_backend_history_gives_a_fresh_querys_answer(real_store, real_db, ops):
    real_db.submissions.delete_many({})
    with Following(real_store) as members:
        for op in ops:
            ids = [doc["_id"] for doc in real_db.submissions.find({}, {"_id": 1}).sort("_id", 1)]
            pick = (lambda number: ids[number % len(ids)]) if ids else None
            if op[0] == "insert":
                _, user, hour, competition_id, past = op
                add(real_db, user, at(hour), competition_id,
                    oid=old_id(T0 - datetime.timedelta(days=hour + 1)) if past else None)
            elif op[0] == "check":
                assert answer(members, op[1], at(op[2])) == fresh(real_db, op[1], at(op[2]))
            elif pick is None:
                continue
            elif op[0] == "delete":
                real_db.submissions.delete_one({"_id": pick(op[1])})
            elif op[0] == "replace":
                real_db.submissions.replace_one({"_id": pick(op[1])}, {"username": op[2], "competition_id": ROUND,
                                                                        "filename": "r.csv", "created": at(op[3])})
            elif op[0] == "move":
                real_db.submissions.update_one({"_id": pick(op[1])}, {"$set": {"competition_id": op[2]}})
            elif op[2] is None:
                real_db.submissions.update_one({"_id": pick(op[1])}, {"$unset": {"created": ""}})
            else:
                real_db.submissions.update_one({"_id": pick(op[1])}, {"$set": {"created": at(op[2])}})
        assert answer(members, "alice", at(7)) == fresh(real_db, "alice", at(7))
        assert members.stats["full_reads"] <= 1
