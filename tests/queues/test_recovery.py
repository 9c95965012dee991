"""Recovery: where an unfinished submission stopped, and putting it back there."""
import datetime
import logging
import threading

import pymongo.errors
import pytest
from bson import ObjectId

from queues.pipeline import CONCORDANCE, LEADERBOARD, ORIGINALITY, STAGES, Job
from queues.recovery import Recovery, stages_for
from queues.store import DONE, FAILED, QUEUED, SCORING, STAGE_CHECKS, STAGE_CONSISTENCY

PENDING = {"pending": True}
JUDGED = {"pending": False, "value": True}
T0 = datetime.datetime(2017, 3, 20, 12, 0)


@pytest.mark.parametrize("doc, expected", [
    ({"processing": {"state": QUEUED, "stage": STAGE_CONSISTENCY}}, [LEADERBOARD]),
    # queued again after a finished run: old verdicts and stage do not matter
    ({"processing": {"state": QUEUED, "stage": STAGE_CHECKS}, "concordant": JUDGED, "original": JUDGED}, [LEADERBOARD]),
    ({"processing": {"state": SCORING, "stage": STAGE_CONSISTENCY}, "concordant": PENDING, "original": PENDING},
     [LEADERBOARD]),
    ({"processing": {"state": SCORING}}, [LEADERBOARD]),
    ({}, [LEADERBOARD]),
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}, "concordant": PENDING, "original": PENDING},
     [CONCORDANCE, ORIGINALITY]),
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}, "concordant": JUDGED, "original": PENDING},
     [ORIGINALITY]),
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}, "concordant": PENDING, "original": JUDGED},
     [CONCORDANCE]),
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}, "concordant": JUDGED,
      "original": {"pending": False, "value": False}}, []),
    # a check field that is absent has not been judged
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}, "original": JUDGED}, [CONCORDANCE]),
    ({"processing": {"state": SCORING, "stage": STAGE_CHECKS}}, [CONCORDANCE, ORIGINALITY]),
], ids=["queued", "requeued-after-done", "scoring-consistency", "scoring-no-stage", "no-processing",
        "checks-both-pending", "checks-original-pending", "checks-concordant-pending", "checks-none-pending",
        "checks-concordant-absent", "checks-both-absent"])
def test_stages_for(doc, expected):
    assert stages_for(doc) == expected


def add(db, hours, processing, **checks):
    oid = ObjectId()
    db.submissions.insert_one({"_id": oid, "username": "u%s" % str(oid)[-4:], "competition_id": 41,
                               "filename": "p.csv", "created": T0 + datetime.timedelta(hours=hours),
                               "processing": processing, **checks})
    return str(oid)


def queued_ids(pipeline, stage):
    return [job.submission_id for job in list(pipeline.queues[stage].queue)]


@pytest.fixture
def recovery(pipeline, store):
    return Recovery(pipeline, store, interval=60)


@pytest.fixture
def left_behind(db):
    """What a killed server leaves: one document for each place a submission can stop."""
    return {
        "consistency": add(db, 2, {"state": SCORING, "stage": STAGE_CONSISTENCY}, concordant=PENDING, original=PENDING),
        "queued": add(db, 1, {"state": QUEUED, "stage": STAGE_CONSISTENCY}),
        "original": add(db, 3, {"state": SCORING, "stage": STAGE_CHECKS}, concordant=JUDGED, original=PENDING),
        "both": add(db, 4, {"state": SCORING, "stage": STAGE_CHECKS}, concordant=PENDING, original=PENDING),
        "judged": add(db, 5, {"state": SCORING, "stage": STAGE_CHECKS}, concordant=JUDGED,
                      original={"pending": False, "value": False}),
        "done": add(db, 0, {"state": DONE, "stage": STAGE_CHECKS}, concordant=PENDING, original=PENDING),
        "failed": add(db, 0, {"state": FAILED, "stage": STAGE_CONSISTENCY}),
    }


def test_sweep_routes_every_unfinished_document(recovery, pipeline, store, left_behind):
    assert recovery.sweep() == 4
    ids = left_behind
    assert queued_ids(pipeline, LEADERBOARD) == [ids["queued"], ids["consistency"]]  # oldest first
    assert queued_ids(pipeline, CONCORDANCE) == [ids["both"]]
    assert queued_ids(pipeline, ORIGINALITY) == [ids["original"], ids["both"]]
    # nothing pending: finished in place rather than queued
    assert store.get(ids["judged"])["processing"]["state"] == DONE
    # done and failed submissions are left alone
    assert store.get(ids["done"])["processing"]["state"] == DONE
    assert store.get(ids["failed"])["processing"]["state"] == FAILED


def test_a_second_sweep_queues_nothing_while_the_first_is_in_flight(recovery, pipeline, left_behind):
    recovery.sweep()
    sizes = {stage: pipeline.queues[stage].qsize() for stage in STAGES}
    assert recovery.sweep() == 0
    assert {stage: pipeline.queues[stage].qsize() for stage in STAGES} == sizes

    # once a worker is done with a job that is still unfinished, the next sweep takes it again
    job = pipeline.queues[LEADERBOARD].get_nowait()
    pipeline.done(LEADERBOARD, job)
    assert recovery.sweep() == 1
    assert queued_ids(pipeline, LEADERBOARD)[-1] == job.submission_id


def test_sweep_skips_what_the_dispatcher_is_working_on(recovery, pipeline, db):
    # the dispatcher has written the checks stage but not yet queued the checks
    sid = add(db, 1, {"state": SCORING, "stage": STAGE_CHECKS}, concordant=PENDING, original=PENDING)
    pipeline.put(LEADERBOARD, Job(sid))
    assert recovery.sweep() == 0
    assert pipeline.queues[CONCORDANCE].qsize() == 0
    assert pipeline.queues[ORIGINALITY].qsize() == 0
    assert pipeline.queues[LEADERBOARD].qsize() == 1


def test_sweep_of_nothing_unfinished(recovery, pipeline, db):
    add(db, 0, {"state": DONE})
    assert recovery.sweep() == 0
    assert all(pipeline.depth(stage) == 0 for stage in STAGES)


def test_sweep_fails_rather_than_finishes_a_document_whose_check_errored(recovery, store, db):
    sid = add(db, 1, {"state": SCORING, "stage": STAGE_CHECKS}, concordant=JUDGED,
              original={"pending": False, "value": None, "error": "the submission file is not in storage"})
    recovery.sweep()
    assert store.get(sid)["processing"]["state"] == FAILED


class FlakyStore:
    """A store whose database is away for the first sweep, then back."""

    def __init__(self, pipeline, doc):
        self.pipeline = pipeline
        self.doc = doc
        self.calls = 0

    def unfinished(self):
        self.calls += 1
        if self.calls == 1:
            raise pymongo.errors.AutoReconnect("connection refused")
        self.pipeline.stop.set()  # the second sweep is the last one
        return [self.doc]

    def finish_if_complete(self, oid):
        raise AssertionError("nothing here is complete")


def test_loop_survives_a_failing_sweep(pipeline, caplog):
    sid = str(ObjectId())
    stub = FlakyStore(pipeline, {"_id": ObjectId(sid), "processing": {"state": QUEUED}})
    recovery = Recovery(pipeline, stub, interval=0.01)
    caplog.set_level(logging.WARNING, logger="queues.recovery")
    thread = threading.Thread(target=recovery.loop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert stub.calls == 2
    assert queued_ids(pipeline, LEADERBOARD) == [sid]
    assert any("AutoReconnect" in record.getMessage() for record in caplog.records)


def test_loop_returns_promptly_when_stopped_during_the_wait(pipeline, store):
    recovery = Recovery(pipeline, store, interval=3600)
    thread = threading.Thread(target=recovery.loop)
    thread.start()
    pipeline.stop.set()
    thread.join(10)
    assert not thread.is_alive()
