"""Store: the submission's states, its transitions and the leases that fence them.

Most tests use mongomock; the races run against SecantusDB (``real_db``),
because mongomock serialises every operation and so cannot show one.
"""
import datetime
import threading

import pymongo
import pytest
from bson import ObjectId
from pymongo import monitoring

from queues import store as store_module
from queues.store import (CHECKS, DONE, FAILED, PENDING, QUEUED, SCORING, Claim, LeaseLost, Store,
                          utcnow)

ROUND = 41
T0 = datetime.datetime(2017, 3, 20, 12, 0)


def add_submission(db, username, created=None, competition_id=ROUND, **fields):
    """A submissions document as the backend writes it (no file); returns its id string."""
    oid = ObjectId()
    doc = {"_id": oid, "username": username, "competition_id": competition_id,
           "filename": "predictions-%s.csv" % str(oid)[-6:], "created": created or T0}
    doc.update(fields)
    db.submissions.insert_one(doc)
    return str(oid)


def accepted(store, sid):
    """Accept one id through the intake's call; returns the batch token."""
    token = ObjectId()
    assert store.accept_many([sid], token) == ["queued"]
    return token


def claimed(store, sid):
    """Accept and claim, as intake and dispatcher do."""
    return store.claim(sid, token=accepted(store, sid))


def expire(db, sid):
    db.submissions.update_one({"_id": ObjectId(sid)},
                              {"$set": {"processing.lease.expires": utcnow() - datetime.timedelta(seconds=1)}})


# -- intake -----------------------------------------------------------------------
def test_accept_queues_and_leases_new_ids_and_tells_the_rest_apart(store, db):
    new, busy = add_submission(db, "alice"), add_submission(db, "bob")
    accepted(store, busy)
    missing = str(ObjectId())
    token = ObjectId()
    assert store.accept_many([new, busy, missing, new], token) == ["queued", "already", "missing", "already"]
    processing = store.get(new)["processing"]
    assert processing["state"] == QUEUED
    assert processing["lease"]["token"] == token and processing["lease"]["owner"] == store.owner
    assert processing["lease"]["expires"] > utcnow()
    assert processing["attempts"] == 1 and processing.get("error") is None
    assert store.get(busy)["processing"]["lease"]["token"] != token  # not re-leased


@pytest.mark.parametrize("settle", ["done", "failed"])
def test_a_settled_submission_is_queued_again(store, db, settle):
    sid = add_submission(db, "alice")
    claim = claimed(store, sid)
    if settle == "done":
        store.dispatched(claim, 50.0, 0.69)
        store.judged(claim, {"concordant": True, "original": True})
    else:
        store.failed(claim, "broken file")
    before = store.get(sid)
    token = ObjectId()
    assert store.accept_many([sid], token) == ["queued"]
    processing = store.get(sid)["processing"]
    assert processing["state"] == QUEUED and processing["lease"]["token"] == token
    assert processing["fence"] == before["processing"]["fence"] + 1
    # the next transition keeps the judgement the re-POST replaces, as a re-score does, in the same write
    again = store.claim(sid, token=token)
    store.dispatched(again, 60.0, 0.68)
    after = store.get(sid)
    assert after["processing"]["error"] is None and after["consistency"] == 60.0
    (kept,) = after["history"]
    assert kept["run"] is None and kept["state"] == settle and kept["replaced_at"] == processing["queued_at"]
    assert kept["finished_at"] == before["processing"]["finished_at"]
    assert kept["error"] == (None if settle == "done" else "broken file")
    for field in ("consistency", "concordant", "original"):
        assert kept.get(field) == before.get(field)


# -- leases -----------------------------------------------------------------------
def test_claim_carries_on_under_the_intake_lease_with_its_token_only(store, db):
    sid = add_submission(db, "alice")
    token = accepted(store, sid)
    before = store.get(sid)["processing"]
    assert store.claim(sid) is None  # leased to the intake's job, not expired
    assert store.claim(sid, token=ObjectId()) is None
    claim = store.claim(sid, token=token)
    assert isinstance(claim, Claim) and claim.token == token
    assert store.get(sid)["processing"] == before  # read back under the lease: nothing written
    assert before["attempts"] == 1 and before["fence"] == 1
    assert claim.doc["username"] == "alice" and not claim.dispatched and claim.pending == set(CHECKS)
    store.failed(claim, "broken file")
    assert store.claim(sid, token=token) is None  # settled: nothing left to claim


def test_giving_one_submission_up_leaves_the_rest_of_its_intake_batch_leased(real_db):
    """On SecantusDB: mongomock's update_many gives every document of a batch the same lease
    object, so changing one document's lease there changes them all."""
    store, db = Store(real_db, owner="test-host:5151:1"), real_db
    first, second = add_submission(db, "alice"), add_submission(db, "bob")
    token = ObjectId()
    assert store.accept_many([first, second], token) == ["queued", "queued"]
    store.release([token], ObjectId(first))
    assert store.claim(first) is not None  # released: anyone may take it
    assert store.claim(second) is None     # still the intake's


def test_claim_takes_expired_or_missing_leases_and_never_settled_ones(store, db):
    sid = add_submission(db, "alice")
    accepted(store, sid)
    expire(db, sid)
    first = store.claim(sid)
    assert first is not None
    assert store.claim(sid) is None  # live again
    expire(db, sid)
    second = store.claim(sid)
    assert second.token != first.token
    assert store.get(sid)["processing"]["fence"] > 2
    db.submissions.update_one({"_id": ObjectId(sid)}, {"$unset": {"processing.lease": ""}})
    assert store.claim(sid) is not None
    never = add_submission(db, "bob")
    assert store.claim(never) is None  # never accepted
    store.failed(store.claim(sid, owner=store.owner), "x")
    assert store.claim(sid) is None  # settled


def test_a_stale_claim_writes_nothing(store, db):
    """Fencing: once someone else claimed, every transition of the old claim raises and changes nothing."""
    sid = add_submission(db, "alice")
    stale = claimed(store, sid)
    expire(db, sid)
    fresh = store.claim(sid)
    before = store.get(sid)
    with pytest.raises(LeaseLost):
        store.dispatched(stale, 10.0, 0.7)
    with pytest.raises(LeaseLost):
        store.failed(stale, "stale reason")
    store.dispatched(fresh, 60.0, 0.68)
    with pytest.raises(LeaseLost):
        store.judged(stale, {"concordant": False, "original": False})
    after = store.get(sid)
    assert after["consistency"] == 60.0 and after["processing"]["state"] == SCORING
    assert after["processing"]["lease"]["token"] == fresh.token
    assert before["processing"]["lease"]["token"] == fresh.token


def test_extend_and_release_touch_only_the_given_leases(store, db):
    mine, other = add_submission(db, "alice"), add_submission(db, "bob")
    claim = claimed(store, mine)
    other_claim = claimed(store, other)
    expire(db, mine)
    expire(db, other)
    assert store.extend([claim.token]) == 1
    assert store.get(mine)["processing"]["lease"]["expires"] > utcnow()
    assert store.get(other)["processing"]["lease"]["expires"] < utcnow()
    assert store.claim(mine) is None and store.claim(other) is not None
    store.release([claim.token])
    assert store.claim(mine) is not None
    assert other_claim.token != store.get(other)["processing"]["lease"]["token"]


def test_claimable_lists_free_work_oldest_first_and_the_orphans_of_given_owners(store, db):
    ids = [add_submission(db, "u%d" % i, created=T0 + datetime.timedelta(hours=3 - i)) for i in range(3)]
    for sid in ids:
        accepted(store, sid)
    assert store.claimable(10) == []
    for sid in ids[:2]:
        expire(db, sid)
    free = store.claimable(10)
    assert [sid for sid, _ in free] == [ids[1], ids[0]]  # oldest created first
    assert store.claimable(1) == [(ids[1], store.owner)]
    dead = Store(db, owner="test-host:5151:999")
    orphan = add_submission(db, "orphan")
    accepted(dead, orphan)
    assert orphan not in [sid for sid, _ in store.claimable(10)]
    assert orphan in [sid for sid, _ in store.claimable(10, owners=[dead.owner])]


def test_orphaned_owners_are_this_servers_dead_processes_only(store, db):
    for owner in ("test-host:5151:7", "test-host:5151:8", "test-host:5152:9", "other:5151:7"):
        accepted(Store(db, owner=owner), add_submission(db, owner))
    accepted(store, add_submission(db, "me"))
    alive = {8}
    assert store.orphaned_owners("test-host:5151:", lambda pid: pid in alive) == ["test-host:5151:7"]


# -- transitions --------------------------------------------------------------------
def test_dispatched_writes_the_whole_step_at_once(store, db):
    sid = add_submission(db, "alice", validationLogloss=0.5)
    claim = claimed(store, sid)
    store.dispatched(claim, 41.5, 0.69)
    doc = store.get(sid)
    assert doc["consistency"] == 41.5
    assert doc["validationLogloss"] == 0.5  # the backend's own is kept
    assert doc["concordant"] == PENDING and doc["original"] == PENDING
    assert doc["processing"]["state"] == SCORING and doc["processing"]["dispatched"] is True
    assert isinstance(doc["processing"]["board"], ObjectId)
    other = add_submission(db, "bob")
    store.dispatched(claimed(store, other), 30.0, 0.71)
    assert store.get(other)["validationLogloss"] == 0.71


def test_judged_needs_every_pending_verdict_and_ends_done(store, db):
    sid = add_submission(db, "alice")
    claim = claimed(store, sid)
    store.dispatched(claim, 50.0, 0.69)
    stamp = store.get(sid)["processing"]["board"]
    with pytest.raises(ValueError):
        store.judged(claim, {"original": True})
    assert store.get(sid)["processing"]["state"] == SCORING
    store.judged(claim, {"concordant": True, "original": False})
    doc = store.get(sid)
    assert doc["concordant"] == {"pending": False, "value": True}
    assert doc["original"] == {"pending": False, "value": False}
    assert doc["processing"]["state"] == DONE and "lease" not in doc["processing"]
    assert doc["processing"]["board"] != stamp


def test_failed_before_dispatch_leaves_no_check_pending(store, db):
    sid = add_submission(db, "alice", consistency=12.0, concordant={"pending": False, "value": True})
    store.failed(claimed(store, sid), "probability 1.5 on data row 8 is outside [0, 1]")
    doc = store.get(sid)
    assert doc["processing"]["state"] == FAILED and doc["processing"]["dispatched"] is False
    assert doc["processing"]["error"].startswith("probability 1.5")
    for check in CHECKS:
        assert doc[check] == {"pending": False, "value": None, "error": doc["processing"]["error"]}


def test_failed_after_dispatch_keeps_the_verdicts_reached(store, db):
    sid = add_submission(db, "alice")
    claim = claimed(store, sid)
    store.dispatched(claim, 50.0, 0.69)
    store.failed(claim, "the round has no cluster to compare", {"original": True})
    doc = store.get(sid)
    assert doc["processing"]["state"] == FAILED and doc["processing"]["dispatched"] is True
    assert doc["original"] == {"pending": False, "value": True}
    assert doc["concordant"]["error"] == "the round has no cluster to compare"


def test_a_claim_of_a_dispatched_submission_knows_which_checks_are_left(store, db):
    sid = add_submission(db, "alice")
    claim = claimed(store, sid)
    store.dispatched(claim, 50.0, 0.69)
    db.submissions.update_one({"_id": ObjectId(sid)}, {"$set": {"original": {"pending": False, "value": True}}})
    expire(db, sid)
    again = store.claim(sid)
    assert again.dispatched and again.pending == {"concordant"}


def test_board_stamps_are_cleared_only_when_unchanged(store, db):
    sid = add_submission(db, "alice")
    claim = claimed(store, sid)
    store.dispatched(claim, 50.0, 0.69)
    old = store.get(sid)["processing"]["board"]
    assert store.stamped(10) == {(ROUND, "alice", ObjectId(sid), store.get(sid)["processing"]["board"])}
    store.judged(claim, {"concordant": True, "original": True})
    store.clear_board_stamps([(ObjectId(sid), old)])
    assert "board" in store.get(sid)["processing"]  # re-stamped since: kept
    store.clear_board_stamps([(ObjectId(sid), store.get(sid)["processing"]["board"])])
    assert "board" not in store.get(sid)["processing"]
    assert store.stamped(10) == set()



def test_long_id_lists_go_in_short_commands_and_miss_nothing(store, db, monkeypatch):
    """The leaderboard's reads and stamp clearing split their ids into commands of IDS_PER_COMMAND
    (SecantusDB's $in costs more than linearly); every listed document is still read or cleared."""
    monkeypatch.setattr(store_module, "IDS_PER_COMMAND", 2)
    sids = [add_submission(db, "user%d" % number) for number in range(5)]
    oids = [ObjectId(sid) for sid in sids]
    assert sorted(doc["_id"] for doc in store.board_docs(oids)) == sorted(oids)
    db.submissions.update_many({}, {"$set": {"processing.board": "stamp"}})
    sent = []
    original = store.submissions.update_many
    monkeypatch.setattr(store.submissions, "update_many", lambda *args, **kwargs: sent.append(1) or original(*args, **kwargs))
    store.clear_board_stamps([(oid, "stamp") for oid in oids])
    assert len(sent) == 3
    assert db.submissions.count_documents({"processing.board": {"$exists": True}}) == 0

# -- races on a real server ------------------------------------------------------------
def run_together(functions):
    """Start every function on its own thread at the same instant; return results or exceptions."""
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)

    def run(i, function):
        barrier.wait()
        try:
            results[i] = function()
        except Exception as exc:  # reported to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    return results


def test_racing_claims_give_each_submission_to_one_worker(real_db):
    stores = [Store(real_db, owner="host:1:%d" % i) for i in range(6)]
    for _ in range(3):
        sid = add_submission(real_db, "alice")
        stores[0].accept_many([sid], ObjectId())
        expire(real_db, sid)
        results = run_together([lambda s=s: s.claim(sid) for s in stores])
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and isinstance(winners[0], Claim), results
        assert real_db.submissions.find_one({"_id": ObjectId(sid)})["processing"]["lease"]["token"] == winners[0].token


def test_racing_accepts_queue_a_submission_once(real_db):
    store = Store(real_db)
    sid = add_submission(real_db, "alice")
    results = run_together([lambda: store.accept_many([sid], ObjectId()) for _ in range(8)])
    assert sorted(r[0] for r in results) == ["already"] * 7 + ["queued"]


class Filters(monitoring.CommandListener):
    """The filters of the commands sent while ``watching`` is set: ``[(command name, filter)]``."""

    def __init__(self):
        self.watching = False
        self.sent = []

    def started(self, event):
        if not self.watching:
            return
        if event.command_name in ("update", "delete"):
            self.sent += [(event.command_name, spec["q"]) for spec in event.command[event.command_name + "s"]]
        elif event.command_name != "endSessions":
            self.sent.append((event.command_name, event.command.get("filter", event.command.get("query", {}))))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass

    def during(self, action):
        """What ``action`` sends."""
        self.sent, self.watching = [], True
        try:
            action()
        finally:
            self.watching = False
        return self.sent


def test_claims_and_stamp_clearing_look_documents_up_by_their_id(real_mongo_url):
    """SecantusDB serves a filter from the _id index only when it names _id and has no $or or $and at
    its top, and it runs every findAndModify as a scan of the whole collection: with a round's
    thousand documents each such command costs about 100 ms of its CPU instead of one or two."""
    filters = Filters()
    client = pymongo.MongoClient(real_mongo_url, event_listeners=[filters], serverSelectionTimeoutMS=5000)
    db = client["t_%s" % ObjectId()]
    try:
        store = Store(db, owner="host:1:1")
        sid, other = add_submission(db, "alice"), add_submission(db, "bob")
        token = accepted(store, sid)
        claims = []
        sent = filters.during(lambda: claims.append(store.claim(sid, token=token)))  # the intake's lease
        expire(db, sid)
        sent += filters.during(lambda: claims.append(store.claim(sid)))  # an expired lease
        sent += filters.during(lambda: claims.append(store.claim(sid, owner="host:1:1")))  # its owner's
        sent += filters.during(lambda: claims.append(store.claim(other)))  # never accepted: nothing taken
        assert [claim is not None for claim in claims] == [True, True, True, False]
        assert store.get(sid)["processing"]["lease"]["token"] == claims[2].token
        sent += filters.during(lambda: store.clear_board_stamps([(claims[2].oid, ObjectId()), (ObjectId(other), ObjectId())]))
        assert {name for name, _ in sent} == {"update", "find"}, sent
        for name, query in sent:
            assert "_id" in query and not any(key.startswith("$") for key in query), (name, query)
    finally:
        client.drop_database(db.name)
        client.close()


def test_a_lease_without_an_expiry_is_free_to_claim(store, db):
    """Claiming treats a lease as held only while its expiry lies ahead (the service always writes one)."""
    sid = add_submission(db, "alice")
    accepted(store, sid)
    db.submissions.update_one({"_id": ObjectId(sid)}, {"$unset": {"processing.lease.expires": ""}})
    assert store.claim(sid) is not None
    assert store.claim(sid) is None  # its fresh lease has an expiry ahead
