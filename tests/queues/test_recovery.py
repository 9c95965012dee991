"""Recovery: claiming what nobody holds (and what this server's dead processes held), and keeping leases alive."""
import datetime
import logging
import threading

import pymongo.errors
import pytest
from bson import ObjectId

from queues import workers
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY, STAGES, Job
from queues.recovery import LeaseKeeper, Recovery
from queues.store import DONE, FAILED, QUEUED, SCORING, utcnow

PENDING = {"pending": True}
JUDGED = {"pending": False, "value": True}
T0 = datetime.datetime(2017, 3, 20, 12, 0)
ME = "test-host:5151:1"  # the store fixture's owner
PREFIX = "test-host:5151:"


def lease(owner="other-host:5151:9", seconds=-60, token=None):
    """A lease that expired ``-seconds`` ago (or runs ``seconds`` more)."""
    return {"owner": owner, "token": token or ObjectId(), "expires": utcnow() + datetime.timedelta(seconds=seconds)}


def add(db, hours, processing, **checks):
    oid = ObjectId()
    db.submissions.insert_one({"_id": oid, "username": "u%s" % str(oid)[-4:], "competition_id": 41,
                               "filename": "p.csv", "created": T0 + datetime.timedelta(hours=hours),
                               "processing": processing, **checks})
    return str(oid)


def queued_ids(pipeline, stage):
    return [job.submission_id for job in list(pipeline.queues[stage].queue)]


def held_by(store, sid):
    return (store.get(sid)["processing"].get("lease") or {}).get("owner")


class Board:
    """Records what the sweep touches."""

    def __init__(self):
        self.touched = []

    def touch(self, competition_id, username, submission_id=None):
        self.touched.append((competition_id, username))


@pytest.fixture
def recovery(pipeline, store):
    return Recovery(pipeline, store, interval=60)


@pytest.fixture
def left_behind(db):
    """What killed and stopped servers leave: one document for each kind of lease and state."""
    dispatched = {"state": SCORING, "dispatched": True}
    return {
        "expired-scoring": add(db, 2, {**dispatched, "lease": lease()}, concordant=PENDING, original=PENDING),
        "expired-queued": add(db, 1, {"state": QUEUED, "lease": lease()}),
        "unleased": add(db, 3, {"state": QUEUED}),  # queued by a version without leases
        "live": add(db, 0, {"state": QUEUED, "lease": lease(seconds=60)}),
        "live-scoring": add(db, 0, {**dispatched, "lease": lease(seconds=60)}, concordant=PENDING, original=PENDING),
        "done": add(db, 0, {"state": DONE, "lease": lease()}, concordant=JUDGED, original=JUDGED),
        "failed": add(db, 0, {"state": FAILED}),
    }


def test_sweep_claims_expired_and_unleased_work_oldest_first(recovery, pipeline, store, left_behind):
    ids = left_behind
    before = {name: store.get(sid)["processing"] for name, sid in ids.items()}
    start = utcnow()
    assert recovery.sweep() == 3
    assert queued_ids(pipeline, DISPATCH) == [ids["expired-queued"], ids["expired-scoring"], ids["unleased"]]
    assert pipeline.depth(CONCORDANCE) == pipeline.depth(ORIGINALITY) == 0  # the dispatcher routes them
    for job in list(pipeline.queues[DISPATCH].queue):
        processing = store.get(job.submission_id)["processing"]
        # each job holds a fresh lease of this process: the old owner's writes no longer match
        assert job.claim is not None and job.lease == job.claim.token
        assert processing["lease"]["token"] == job.claim.token and processing["lease"]["owner"] == ME
        assert processing["lease"]["expires"] >= start + datetime.timedelta(seconds=store.lease_seconds)
        assert processing["attempts"] == 1 and processing["fence"] == 1
        assert processing["state"] == (SCORING if job.submission_id == ids["expired-scoring"] else QUEUED)
    # live leases, finished and failed submissions are left alone
    for name in ("live", "live-scoring", "done", "failed"):
        assert store.get(ids[name])["processing"] == before[name]


def test_a_second_sweep_queues_nothing_while_the_first_is_in_flight(recovery, pipeline, store, left_behind):
    recovery.sweep()
    sizes = {stage: pipeline.queues[stage].qsize() for stage in STAGES}
    assert recovery.sweep() == 0
    assert {stage: pipeline.queues[stage].qsize() for stage in STAGES} == sizes

    # a job a worker let go of while its lease runs on is not taken again before the lease ends
    job = pipeline.queues[DISPATCH].get_nowait()
    pipeline.done(DISPATCH, job)
    assert recovery.sweep() == 0
    # once that lease is given up (a worker gave up, or its server stopped), the next sweep takes it again
    store.release([job.claim.token])
    assert recovery.sweep() == 1
    again = list(pipeline.queues[DISPATCH].queue)[-1]
    assert again.submission_id == job.submission_id and again.claim.token != job.claim.token


def test_sweep_skips_ids_in_flight_in_this_process(recovery, pipeline, store, db):
    """A check still at work here whose lease lapsed (say, the database was away) is not claimed twice."""
    sid = add(db, 1, {"state": SCORING, "dispatched": True, "lease": lease(owner=ME)},
              concordant=PENDING, original=PENDING)
    before = store.get(sid)["processing"]
    pipeline.put(ORIGINALITY, Job(sid))
    assert recovery.sweep() == 0
    assert store.get(sid)["processing"] == before
    assert pipeline.depth(DISPATCH) == 0 and pipeline.depth(CONCORDANCE) == 0


def test_sweep_of_nothing_unfinished(recovery, pipeline, db):
    add(db, 0, {"state": DONE})
    assert recovery.sweep() == 0
    assert all(pipeline.depth(stage) == 0 for stage in STAGES)


def test_sweep_fills_the_dispatch_queue_only_up_to_its_batch(pipeline, store, db):
    ids = [add(db, hours, {"state": QUEUED}) for hours in range(5)]
    recovery = Recovery(pipeline, store, interval=60, batch=3)
    pipeline.put(DISPATCH, Job(str(ObjectId())))  # one already waiting
    assert recovery.sweep() == 2
    assert queued_ids(pipeline, DISPATCH)[1:] == ids[:2]
    assert [held_by(store, sid) for sid in ids] == [ME, ME, None, None, None]  # the rest stay for other servers


def test_orphaned_leases_of_this_server_are_taken_back_at_the_first_sweep(pipeline, store, db):
    """A restart takes back what its own dead process held, without waiting for the leases to expire."""
    alive = {88}
    asked = []

    def is_alive(pid):
        asked.append(pid)
        return pid in alive

    ids = {
        "dead": add(db, 1, {"state": QUEUED, "lease": lease(owner=PREFIX + "77", seconds=60)}),
        "dead-scoring": add(db, 2, {"state": SCORING, "dispatched": True, "lease": lease(owner=PREFIX + "77", seconds=60)},
                            concordant=JUDGED, original=PENDING),
        "running": add(db, 3, {"state": QUEUED, "lease": lease(owner=PREFIX + "88", seconds=60)}),
        "other-port": add(db, 4, {"state": QUEUED, "lease": lease(owner="test-host:5152:77", seconds=60)}),
        "other-host": add(db, 5, {"state": QUEUED, "lease": lease(owner="elsewhere:5151:77", seconds=60)}),
        "mine": add(db, 6, {"state": QUEUED, "lease": lease(owner=ME, seconds=60)}),
        "not-a-pid": add(db, 7, {"state": QUEUED, "lease": lease(owner=PREFIX + "x", seconds=60)}),
    }
    before = {name: store.get(sid)["processing"] for name, sid in ids.items()}
    recovery = Recovery(pipeline, store, interval=60, owner_prefix=PREFIX, alive=is_alive)
    assert recovery.sweep() == 2
    assert queued_ids(pipeline, DISPATCH) == [ids["dead"], ids["dead-scoring"]]
    for name in ("dead", "dead-scoring"):
        processing = store.get(ids[name])["processing"]
        assert processing["lease"]["owner"] == ME and processing["lease"]["token"] != before[name]["lease"]["token"]
    # a live process of this server, another server, our own live lease and a foreign name are left alone
    for name in ("running", "other-port", "other-host", "mine", "not-a-pid"):
        assert store.get(ids[name])["processing"] == before[name]
    assert sorted(asked) == [77, 88]  # only this server's own owners are looked at, never our own pid

    # the owners are looked up once, at start: a process that dies later leaves leases that expire as usual
    alive.clear()
    asked.clear()
    assert recovery.sweep() == 0
    assert asked == [] and held_by(store, ids["running"]) == PREFIX + "88"


def test_without_an_owner_prefix_no_live_lease_is_taken(pipeline, store, db):
    sid = add(db, 1, {"state": QUEUED, "lease": lease(owner=PREFIX + "77", seconds=60)})
    recovery = Recovery(pipeline, store, interval=60, alive=lambda pid: pytest.fail("asked about %d" % pid))
    assert recovery.sweep() == 0
    assert held_by(store, sid) == PREFIX + "77"


def test_sweep_retouches_unconfirmed_leaderboard_entries(pipeline, store, db):
    stamped = add(db, 1, {"state": DONE, "board": ObjectId()})
    add(db, 2, {"state": DONE})
    board = Board()
    recovery = Recovery(pipeline, store, interval=60, board=board)
    recovery.sweep()
    assert board.touched == [(41, store.get(stamped)["username"])]


class DispatchOnly:
    """Rounds that must not be needed: a dispatched claim goes straight on to its checks."""

    def get(self, competition_id):
        pytest.fail("the dispatcher re-dispatched a submission already dispatched")


def test_recovered_work_goes_on_from_where_its_document_stopped(pipeline, store, db, metrics):
    """The dispatcher sends a recovered, dispatched submission only to the checks still pending."""
    dispatched = {"state": SCORING, "dispatched": True, "lease": lease()}
    ids = {
        "both": add(db, 1, dict(dispatched), concordant=PENDING, original=PENDING),
        "original": add(db, 2, dict(dispatched), concordant=JUDGED, original=PENDING),
        "concordant": add(db, 3, dict(dispatched), concordant=PENDING, original=JUDGED),
        "judged": add(db, 4, dict(dispatched), concordant=JUDGED, original={"pending": False, "value": False}),
    }
    board = Board()
    Recovery(pipeline, store, interval=60).sweep()
    dispatcher = workers.Dispatcher(pipeline, store, DispatchOnly(), None, metrics, board=board)
    while not pipeline.queues[DISPATCH].empty():
        job = pipeline.queues[DISPATCH].get_nowait()
        assert dispatcher.run(job) == "ok"
        pipeline.done(DISPATCH, job)
    assert queued_ids(pipeline, CONCORDANCE) == [ids["both"], ids["concordant"]]
    assert queued_ids(pipeline, ORIGINALITY) == [ids["both"], ids["original"]]
    for stage in (CONCORDANCE, ORIGINALITY):  # the checks carry the recovery's claim and one meeting point per claim
        for job in list(pipeline.queues[stage].queue):
            assert job.claim.token == store.get(job.submission_id)["processing"]["lease"]["token"]
    both = [job for stage in (CONCORDANCE, ORIGINALITY) for job in list(pipeline.queues[stage].queue)
            if job.submission_id == ids["both"]]
    assert both[0].verdicts is both[1].verdicts and both[0].verdicts.needed == {"concordant", "original"}
    # nothing pending: finished in place with the verdicts it has
    judged = store.get(ids["judged"])
    assert judged["processing"]["state"] == DONE and "lease" not in judged["processing"]
    assert judged["original"] == {"pending": False, "value": False}
    assert (41, judged["username"]) in board.touched
    assert metrics.outcomes.labels("done")._value.get() == 1


class FlakyStore:
    """A store whose database is away for the first sweep, then back."""

    def __init__(self, pipeline, store):
        self.pipeline = pipeline
        self.store = store
        self.calls = 0

    def claimable(self, limit, owners=()):
        self.calls += 1
        if self.calls == 1:
            raise pymongo.errors.AutoReconnect("connection refused")
        self.pipeline.stop.set()  # the second sweep is the last one
        return self.store.claimable(limit, owners)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_loop_survives_a_failing_sweep(pipeline, store, db, caplog):
    sid = add(db, 1, {"state": QUEUED})
    stub = FlakyStore(pipeline, store)
    recovery = Recovery(pipeline, stub, interval=0.01)
    caplog.set_level(logging.WARNING, logger="queues.recovery")
    thread = threading.Thread(target=recovery.loop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert stub.calls == 2
    assert queued_ids(pipeline, DISPATCH) == [sid]
    assert any("AutoReconnect" in record.getMessage() for record in caplog.records)


def test_loop_returns_promptly_when_stopped_during_the_wait(pipeline, store):
    recovery = Recovery(pipeline, store, interval=3600)
    thread = threading.Thread(target=recovery.loop)
    thread.start()
    pipeline.stop.set()
    thread.join(10)
    assert not thread.is_alive()


# -- the lease keeper -----------------------------------------------------------------
def test_lease_keeper_extends_only_the_leases_in_flight(pipeline, store, db):
    old = T0  # long expired: extending does not depend on the lease being live
    mine, intake, idle = ObjectId(), ObjectId(), ObjectId()
    ids = {
        "claimed": add(db, 1, {"state": SCORING, "dispatched": True, "lease": lease(owner=ME, token=mine)}),
        "intake-a": add(db, 2, {"state": QUEUED, "lease": lease(owner=ME, token=intake)}),
        "intake-b": add(db, 3, {"state": QUEUED, "lease": lease(owner=ME, token=intake)}),
        "idle": add(db, 4, {"state": QUEUED, "lease": lease(owner=ME, token=idle)}),
        "other": add(db, 5, {"state": QUEUED, "lease": lease(owner="elsewhere:5151:2")}),
    }
    db.submissions.update_many({}, {"$set": {"processing.lease.expires": old}})
    claim = store.claim(ids["claimed"], token=mine)
    db.submissions.update_many({}, {"$set": {"processing.lease.expires": old}})
    pipeline.put(CONCORDANCE, Job(ids["claimed"], claim=claim))
    pipeline.put(DISPATCH, Job(ids["intake-a"], token=intake))  # one batch's lease covers all its documents
    keeper = LeaseKeeper(pipeline, store, period=10)
    start = utcnow()
    assert keeper.keep() == 3
    expires = {name: store.get(sid)["processing"]["lease"]["expires"] for name, sid in ids.items()}
    for name in ("claimed", "intake-a", "intake-b"):
        assert expires[name] >= start + datetime.timedelta(seconds=store.lease_seconds)
    assert expires["idle"] == old and expires["other"] == old


def test_lease_keeper_with_nothing_in_flight_writes_nothing(pipeline):
    class NoDatabase:
        def extend(self, tokens):
            assert not tokens
            return 0

    assert LeaseKeeper(pipeline, NoDatabase(), period=10).keep() == 0


def test_lease_keeper_loop_survives_a_failing_write_and_stops(pipeline, caplog):
    class Away:
        def __init__(self):
            self.calls = 0

        def extend(self, tokens):
            self.calls += 1
            if self.calls == 2:
                pipeline.stop.set()
            raise pymongo.errors.AutoReconnect("connection refused")

    away = Away()
    caplog.set_level(logging.WARNING, logger="queues.recovery")
    thread = threading.Thread(target=LeaseKeeper(pipeline, away, period=0.001).loop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and away.calls == 2
    assert any("AutoReconnect" in record.getMessage() for record in caplog.records)
