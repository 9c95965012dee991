"""The pipeline stages, one job at a time: each worker's ``run`` is called directly.

The leaderboard writer is a recording stand-in here (its grouped writes
need array filters, which mongomock lacks; tests/queues/test_leaderboard.py
covers it): the workers only say which entries changed, and the documents
must carry what the writer builds the entries from.
"""
import collections
import dataclasses
import datetime
import os
import socket
import threading

import numpy as np
import pymongo.errors
import pytest
from bson import ObjectId

from queues import demo, explain, workers
from queues.errors import PermanentError
from queues.explain import named_originality
from queues.leaderboard import desired_entry, newest
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY, Job, Pipeline
from queues.recovery import Recovery
from queues.members import RoundMembers
from queues.rounds import Rounds
from queues.store import DONE, FAILED, PENDING, QUEUED, SCORING, Store, utcnow
import scoring
from scoring import concordance, consistency, evidence
from scoring.prepared import PreparedRound
from scoring.submission import SubmissionError, parse_submission

from tests.conftest import ROUND
from tests.oracle import Oracle

#: Another process of the same server, taking work over from the store fixture's.
OTHER = "test-host:5151:2"


class Board:
    """Records which leaderboard entries the workers say may have changed."""

    def __init__(self):
        self.touched = []

    def touch(self, competition_id, username, submission_id=None):
        self.touched.append((competition_id, username))


@pytest.fixture
def board():
    return Board()


@pytest.fixture
def members(store):
    return RoundMembers(store)


def make_stages(pipeline, store, rounds, rules, metrics, board, members):
    parts = dict(store=store, rounds=rounds, rules=rules, metrics=metrics, board=board, members=members)
    return {DISPATCH: workers.Dispatcher(pipeline, **parts),
            CONCORDANCE: workers.ConcordanceWorker(pipeline, **parts),
            ORIGINALITY: workers.OriginalityWorker(pipeline, **parts)}


@pytest.fixture
def stages(pipeline, store, rounds, rules, metrics, board, members):
    return make_stages(pipeline, store, rounds, rules, metrics, board, members)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(workers, "BACKOFF_BASE", 0.001)
    monkeypatch.setattr(workers, "BACKOFF_CAP", 0.002)


def drain(pipeline, stages, order=(DISPATCH, CONCORDANCE, ORIGINALITY)):
    """Run every queued job through its stage until all queues are empty; returns outcomes."""
    outcomes = []
    progress = True
    while progress:
        progress = False
        for stage in order:
            inbox = pipeline.queues[stage]
            while not inbox.empty():
                job = inbox.get_nowait()
                outcomes.append((stage, job.submission_id, stages[stage].run(job)))
                pipeline.done(stage, job)
                progress = True
    return outcomes


def accept(store, sid):
    """What the intake does: queue and lease to a batch token; returns the token."""
    token = ObjectId()
    assert store.accept_many([sid], token) == ["queued"]
    return token


def queue(store, pipeline, *ids):
    for sid in ids:
        assert pipeline.put(DISPATCH, Job(sid, token=accept(store, sid)))


def score(store, pipeline, stages, *ids):
    queue(store, pipeline, *ids)
    return drain(pipeline, stages)


def expire(db, sid):
    """The lease ran out (its process died or stalled)."""
    db.submissions.update_one({"_id": ObjectId(sid)},
                              {"$set": {"processing.lease.expires": utcnow() - datetime.timedelta(seconds=1)}})


def take_over(db, sid):
    """Another process claims the submission after this one's lease ran out; returns its store and claim."""
    expire(db, sid)
    other = Store(db, owner=OTHER, lease_seconds=30)
    claim = other.claim(sid)
    assert claim is not None
    return other, claim


def expected_verdicts(rounds, store, sid, rules):
    """What the plain rules say (the one oracle, :mod:`tests.oracle`), from the files and documents as they are."""
    rnd = rounds.get(ROUND)
    return Oracle(store.db, rounds.files, rules, rounds.groups(rnd), rnd.tournament).verdicts(sid)


def board_entry(store, username):
    """The entry the leaderboard writer would give ``username`` from the documents as they are."""
    return desired_entry(newest(store.board_submissions(ROUND, [username])))


def test_a_round_is_judged_exactly_by_the_rules(submit, store, pipeline, stages, rounds, rules, model, metrics, board):
    first = model(1)
    ids = [submit("alice", first), submit("bob", model(2)),
           submit("carol", np.clip(first + 1e-5, 0, 1)),  # a near copy of alice's
           submit("dave", model(3), validationLogloss=0.5)]
    outcomes = score(store, pipeline, stages, *ids)
    assert {outcome for *_, outcome in outcomes} == {"ok"}
    assert len(outcomes) == 3 * len(ids)
    # each submission's entry is touched when it is dispatched and when it is judged
    names = ["alice", "bob", "carol", "dave"]
    assert collections.Counter(board.touched) == {(ROUND, name): 2 for name in names}
    verdicts = {}
    for sid in ids:
        doc = store.get(sid)
        want = expected_verdicts(rounds, store, sid, rules)
        verdicts[doc["username"]] = want["original"]
        assert doc["processing"]["state"] == "done"
        assert doc["processing"]["attempts"] == 1
        assert "lease" not in doc["processing"]  # finished work holds no lease
        assert doc["processing"]["board"]  # stamped until the leaderboard writer confirms the entry
        assert doc["consistency"] == pytest.approx(want["consistency"], abs=1e-12)
        assert doc["concordant"] == {"pending": False, "value": want["concordant"]}
        assert doc["original"] == {"pending": False, "value": want["original"]}
        entry = board_entry(store, doc["username"])
        assert entry["submission_id"] == doc["_id"]
        assert entry["logloss"] == {"validation": doc["validationLogloss"], "consistency": doc["consistency"]}
        assert entry["concordant"] == doc["concordant"] and entry["original"] == doc["original"]
    assert store.get(ids[0])["validationLogloss"] == pytest.approx(expected_verdicts(rounds, store, ids[0], rules)["logloss"])
    assert store.get(ids[3])["validationLogloss"] == 0.5  # the backend's own figure is kept
    assert verdicts["carol"] is False and verdicts["alice"] is True
    assert metrics.outcomes.labels("done")._value.get() == len(ids)


def test_own_earlier_submissions_never_count(submit, store, pipeline, stages, model):
    values = model(1)
    first, second = submit("alice", values), submit("alice", values)
    score(store, pipeline, stages, first, second)
    assert store.get(second)["original"]["value"] is True
    assert board_entry(store, "alice")["submission_id"] == store.get(second)["_id"]


def test_scoring_twice_leaves_the_same_documents(submit, store, pipeline, stages, model):
    ids = [submit("alice", model(1)), submit("bob", model(1))]
    score(store, pipeline, stages, *ids)

    def snapshot():
        docs = [{k: v for k, v in store.get(sid).items() if k not in ("processing", "history")} for sid in ids]
        for doc in docs:
            doc["provenance"].pop("judged_at")  # the one thing meant to change
        return docs, store.db.competitions.find_one({"_id": ROUND})

    before, judged = snapshot(), [store.get(sid) for sid in ids]
    assert {outcome for *_, outcome in score(store, pipeline, stages, *ids)} == {"ok"}
    assert snapshot() == before
    assert all(store.get(sid)["processing"]["state"] == DONE for sid in ids)
    for sid, first in zip(ids, judged):  # the first judgement is kept, not overwritten without a trace
        (kept,) = store.get(sid)["history"]
        assert kept["state"] == DONE and kept["run"] is None
        assert (kept["evidence"], kept["provenance"], kept["original"]) == (first["evidence"], first["provenance"],
                                                                            first["original"])


BROKEN = [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "CSV"),
    (b"id,prediction\nx,0.5\n", "probability"),
    (b"identifier,probability\nx,0.5\n", "'id'"),
    ("nan", "missing"),
    ("abc", "not a number"),
    ("1.5", "outside [0, 1]"),
    ("-0.01", "outside [0, 1]"),
    ("duplicate", "more than once"),
    ("missing", "no prediction"),
    ("extra", "not in the round"),
]


def broken_file(tournament, how):
    """A submission file broken in one way, or ``how`` itself when it is bytes."""
    if isinstance(how, bytes):
        return how
    ids = list(tournament["id"])
    values = ["0.5"] * len(ids)
    if how == "duplicate":
        ids[5] = ids[4]
    elif how == "missing":
        ids, values = ids[:-3], values[:-3]
    elif how == "extra":
        ids, values = ids + ["n-not-a-round-id"], values + ["0.5"]
    else:
        values[7] = how
    return ("id,probability\n" + "".join("%s,%s\n" % row for row in zip(ids, values))).encode()


@pytest.mark.parametrize("how, reason", BROKEN)
def test_broken_files_end_failed_with_a_reason(submit, store, pipeline, stages, round_frames, how, reason, model, board):
    sid = submit("mallory", raw=broken_file(round_frames[1], how))
    outcomes = score(store, pipeline, stages, sid)
    assert outcomes == [(DISPATCH, sid, "failed")]
    doc = store.get(sid)
    assert doc["processing"]["state"] == "failed"
    assert reason in doc["processing"]["error"]
    assert "lease" not in doc["processing"] and doc["processing"]["dispatched"] is False
    for check in ("concordant", "original"):
        assert doc[check]["pending"] is False and doc[check]["value"] is None
        assert reason in doc[check]["error"]
    assert board.touched == [(ROUND, "mallory")]  # a failure can change what the entry shows
    good = submit("zuz", model(4))
    score(store, pipeline, stages, good)
    assert store.get(good)["processing"]["state"] == "done"


def test_missing_file_and_missing_round_fail_with_reasons(submit, store, pipeline, stages, db, model):
    no_file = submit("alice", raw=False)
    no_round = submit("bob", model(1), competition_id=99)
    no_user = submit("carol", raw=False, filename=None)
    score(store, pipeline, stages, no_file, no_round, no_user)
    assert "not in storage" in store.get(no_file)["original"]["error"]
    assert "no dataset" in store.get(no_round)["concordant"]["error"]
    assert "filename is null" in store.get(no_user)["processing"]["error"]
    assert all(store.get(s)["processing"]["state"] == "failed" for s in (no_file, no_round, no_user))


def test_a_broken_other_submission_is_skipped_not_fatal(submit, store, pipeline, stages, round_frames, model):
    broken = submit("mallory", raw=b"id,probability\n")
    good = submit("zuz", model(4))
    score(store, pipeline, stages, broken, good)
    assert store.get(good)["original"] == {"pending": False, "value": True}


class Flaky:
    """Wraps a store so that one method fails ``times`` times with a lost connection."""

    def __init__(self, store, method, times):
        self.store, self.method, self.times = store, method, times

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if name != self.method:
            return attribute

        def flaky(*args, **kwargs):
            if self.times:
                self.times -= 1
                raise pymongo.errors.AutoReconnect("connection lost")
            return attribute(*args, **kwargs)
        return flaky


@pytest.mark.parametrize("method", ["claim", "dispatched"])
def test_transient_database_errors_are_retried(submit, store, pipeline, rounds, rules, metrics, model, board, method):
    sid = submit("alice", model(1))
    token = accept(store, sid)
    dispatcher = workers.Dispatcher(pipeline, Flaky(store, method, 2), rounds, rules, metrics, board=board)
    assert dispatcher.run(Job(sid, token=token)) == "ok"
    assert metrics.outcomes.labels("retried")._value.get() == 2
    doc = store.get(sid)
    assert doc["consistency"] is not None and doc["processing"]["state"] == SCORING
    assert doc["processing"]["attempts"] == 1
    assert board.touched == [(ROUND, "alice")]
    assert pipeline.in_flight(CONCORDANCE, sid) and pipeline.in_flight(ORIGINALITY, sid)


@pytest.mark.parametrize("last", [CONCORDANCE, ORIGINALITY])
def test_a_transient_error_writing_the_verdicts_is_retried(submit, store, pipeline, rounds, rules, metrics, model,
                                                           board, members, last):
    """The check that completes the verdicts must write them even when its first try at the write fails."""
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    stages = make_stages(pipeline, Flaky(store, "judged", 2), rounds, rules, metrics, board, members)
    first = ORIGINALITY if last == CONCORDANCE else CONCORDANCE
    outcomes = drain(pipeline, stages, order=(DISPATCH, first, last))
    assert [outcome for *_, outcome in outcomes] == ["ok"] * 3
    assert metrics.outcomes.labels("retried")._value.get() == 2
    doc = store.get(sid)
    assert doc["processing"]["state"] == DONE
    assert doc["concordant"]["pending"] is False and doc["original"]["pending"] is False
    assert metrics.outcomes.labels("done")._value.get() == 1


def test_a_lasting_outage_gives_the_lease_up_to_recovery_without_failing(submit, store, pipeline, rounds, rules,
                                                                          metrics, model, board):
    sid = submit("alice", model(1))
    token = accept(store, sid)
    dispatcher = workers.Dispatcher(pipeline, Flaky(store, "dispatched", 10 ** 6), rounds, rules, metrics, board=board)
    assert dispatcher.run(Job(sid, token=token)) == "deferred"
    doc = store.get(sid)
    assert doc["processing"]["state"] == QUEUED and doc.get("consistency") is None
    assert metrics.outcomes.labels("retried")._value.get() == workers.MAX_ATTEMPTS
    assert metrics.outcomes.labels("failed")._value.get() == 0
    # released: any server's next sweep takes it now rather than when the lease would have run out
    assert doc["processing"]["lease"]["expires"] <= utcnow()
    assert store.claimable(10) == [(sid, store.owner)]
    assert Recovery(Pipeline(), store, interval=60).sweep() == 1


def test_a_check_that_gives_up_closes_its_claim_for_the_other_check(submit, store, pipeline, stages, members, metrics,
                                                                    model, monkeypatch):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    drain(pipeline, stages, order=(DISPATCH,))

    def away(*args, **kwargs):
        raise pymongo.errors.AutoReconnect("connection lost")

    monkeypatch.setattr(members, "latest_others", away)
    original = pipeline.queues[ORIGINALITY].get_nowait()
    assert stages[ORIGINALITY].run(original) == "deferred"
    pipeline.done(ORIGINALITY, original)
    before = store.get(sid)
    assert before["processing"]["lease"]["expires"] <= utcnow()
    # the other check finishes after the give-up: its result waits for the next claim, nothing is written
    assert drain(pipeline, stages) == [(CONCORDANCE, sid, "ok")]
    after = store.get(sid)
    assert after == before
    assert after["processing"]["state"] == SCORING and after["concordant"] == PENDING and after["original"] == PENDING
    assert metrics.outcomes.labels("done")._value.get() == 0


def test_a_bug_is_recorded_as_an_internal_error_and_the_loop_goes_on(
        submit, store, pipeline, stages, model, monkeypatch):
    calls = []

    real = workers.consistency.consistency_evidence

    def explode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("bug")
        return {**real(*args, **kwargs), "consistency": 50.0}

    monkeypatch.setattr(workers.consistency, "consistency_evidence", explode)
    first, second = submit("alice", model(1)), submit("bob", model(2))
    queue(store, pipeline, first, second)
    finished = threading.Event()
    put = pipeline.put

    def watch(stage, job):
        if stage == CONCORDANCE and job.submission_id == second:
            finished.set()
        return put(stage, job)

    pipeline.put = watch
    thread = threading.Thread(target=stages[DISPATCH].loop)
    thread.start()
    try:
        assert finished.wait(20), "the second submission never reached the checks"
    finally:
        pipeline.stop.set()
        thread.join(5)
    assert not thread.is_alive()
    doc = store.get(first)
    assert doc["processing"]["state"] == "failed"
    assert "internal error" in doc["original"]["error"] and "ZeroDivisionError" in doc["original"]["error"]
    assert "bug" not in doc["original"]["error"]
    assert store.get(second)["consistency"] == 50.0
    assert not pipeline.in_flight(DISPATCH, first) and not pipeline.in_flight(DISPATCH, second)


def test_bad_data_found_by_scoring_fails_with_its_reason_not_an_internal_error(submit, store, pipeline, stages,
                                                                               model, monkeypatch):
    """scoring's DataError (here: consistency given no validation eras) is the data's fault: a permanent
    failure whose reason a person can read, where before any ValueError became "internal error"."""
    real = workers.consistency.consistency_evidence

    def no_eras(eras, targets, values, rules):
        return real(eras[:0], targets[:0], values[:0], rules)  # the real rule, on data it cannot judge

    monkeypatch.setattr(workers.consistency, "consistency_evidence", no_eras)
    sid = submit("alice", model(1))
    assert score(store, pipeline, stages, sid) == [(DISPATCH, sid, "failed")]
    doc = store.get(sid)
    assert doc["processing"]["error"] == "no validation eras to judge consistency on"
    assert "internal error" not in doc["original"]["error"]


def test_a_plain_value_error_is_still_an_internal_error(submit, store, pipeline, stages, model, monkeypatch):
    """Only scoring's DataError is the data's fault; a ValueError from anywhere else is a bug."""
    def bug(*args, **kwargs):
        raise ValueError("an index went wrong")

    monkeypatch.setattr(workers.consistency, "consistency_evidence", bug)
    sid = submit("alice", model(1))
    assert score(store, pipeline, stages, sid) == [(DISPATCH, sid, "failed")]
    error = store.get(sid)["processing"]["error"]
    assert "internal error" in error and "ValueError" in error and "index went wrong" not in error


def test_a_finished_submission_is_not_judged_again_by_a_stale_job(submit, store, pipeline, stages, model, monkeypatch):
    sid = submit("alice", model(1))
    token = accept(store, sid)
    score_job = Job(sid, token=token)
    pipeline.put(DISPATCH, score_job)
    drain(pipeline, stages)
    before = store.get(sid)
    monkeypatch.setattr(workers.consistency, "consistency_evidence", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(workers.concordance, "concordance_evidence", lambda *a, **k: pytest.fail("recomputed"))
    # a repeat of the intake's job (or any job) for a finished submission finds nothing to claim
    assert stages[DISPATCH].run(Job(sid, token=token)) == "skipped"
    assert stages[DISPATCH].run(Job(sid)) == "skipped"
    assert store.get(sid) == before
    assert pipeline.depth(CONCORDANCE) == pipeline.depth(ORIGINALITY) == 0


def test_checks_already_judged_are_not_redone(submit, store, db, pipeline, stages, model, monkeypatch):
    """A dispatched submission recovered with one verdict in: only the other check runs, and the verdict stays."""
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    drain(pipeline, stages)
    kept = store.get(sid)["concordant"]
    db.submissions.update_one({"_id": ObjectId(sid)}, {"$set": {"processing.state": SCORING, "original": PENDING}})
    monkeypatch.setattr(workers.concordance, "concordance_evidence", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(workers.consistency, "consistency_evidence", lambda *a, **k: pytest.fail("recomputed"))
    assert Recovery(pipeline, store, interval=60).sweep() == 1
    outcomes = drain(pipeline, stages)
    assert outcomes == [(DISPATCH, sid, "ok"), (ORIGINALITY, sid, "ok")]
    doc = store.get(sid)
    assert doc["processing"]["state"] == DONE and doc["concordant"] == kept
    assert doc["original"] == {"pending": False, "value": True}


def test_stages_after_a_restart_load_what_they_need(submit, store, db, pipeline, stages, rounds, files, rules, model,
                                                    metrics, tmp_path):
    """A server dies after dispatch; the next one claims the expired lease and judges from the documents and files."""
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    assert drain(pipeline, stages, order=(DISPATCH,)) == [(DISPATCH, sid, "ok")]
    assert store.get(sid)["processing"]["state"] == SCORING
    expire(db, sid)  # the process is gone with its queues; its lease runs out
    fresh_pipeline = Pipeline()
    fresh_store = Store(db, owner=OTHER, lease_seconds=30)
    fresh_rounds = Rounds(files, str(tmp_path / "cache-2"), rules, PreparedRound)
    fresh = make_stages(fresh_pipeline, fresh_store, fresh_rounds, rules, metrics, Board(), RoundMembers(fresh_store))
    assert Recovery(fresh_pipeline, fresh_store, interval=60).sweep() == 1
    job = list(fresh_pipeline.queues[DISPATCH].queue)[0]
    assert job.predictions is None and job.claim.dispatched
    outcomes = drain(fresh_pipeline, fresh)
    assert outcomes == [(DISPATCH, sid, "ok"), (CONCORDANCE, sid, "ok"), (ORIGINALITY, sid, "ok")]
    doc = store.get(sid)
    want = expected_verdicts(rounds, store, sid, rules)
    assert doc["processing"]["state"] == "done" and doc["processing"]["attempts"] == 2
    assert doc["concordant"]["value"] == want["concordant"] and doc["original"]["value"] == want["original"]
    values = parse_submission(files.submission("alice", doc["filename"]), fresh_rounds.get(ROUND).tournament.ids)
    assert sid in fresh_rounds.get(ROUND).index and len(values) == len(fresh_rounds.get(ROUND).tournament.ids)


def test_a_document_left_by_the_previous_version_is_judged_again(submit, store, db, pipeline, stages, rounds, rules,
                                                                 model):
    """Mid-checks under the version without leases, one check errored: judged afresh, never finished as is."""
    sid = submit("alice", model(1))
    db.submissions.update_one({"_id": ObjectId(sid)}, {"$set": {
        "processing": {"state": SCORING, "stage": "checks", "attempts": 1},
        "concordant": {"pending": False, "value": True},
        "original": {"pending": False, "value": None, "error": "the submission file is not in storage"}}})
    assert Recovery(pipeline, store, interval=60).sweep() == 1
    assert {outcome for *_, outcome in drain(pipeline, stages)} == {"ok"}
    doc = store.get(sid)
    want = expected_verdicts(rounds, store, sid, rules)
    assert doc["processing"]["state"] == DONE
    assert doc["original"] == {"pending": False, "value": want["original"]}
    assert doc["concordant"] == {"pending": False, "value": want["concordant"]}


def test_originality_reads_no_file_the_dispatcher_already_read(submit, store, pipeline, stages, rounds, model):
    """The dispatcher prepares each submission for originality, so no check re-reads a file."""
    ids = [submit("alice", model(1)), submit("bob", model(2)), submit("carol", model(3))]
    for sid in ids:
        token = accept(store, sid)
        assert stages[DISPATCH].run(Job(sid, token=token)) == "ok"
        assert sid in rounds.get(ROUND).index
    reads = []
    real = rounds.files.submission
    rounds.files.submission = lambda *args: reads.append(args) or real(*args)
    drain(pipeline, stages)
    assert reads == []
    assert all(store.get(sid)["processing"]["state"] == "done" for sid in ids)


# -- the checks meet: the last one writes both verdicts and DONE ---------------------------
class Spy:
    """Wraps a store, recording the transitions called on it."""

    def __init__(self, store):
        self.store = store
        self.calls = []

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if name not in ("judged", "failed", "dispatched"):
            return attribute

        def spy(*args, **kwargs):
            self.calls.append((name, args[1:]))
            return attribute(*args, **kwargs)
        return spy


@pytest.mark.parametrize("last", [CONCORDANCE, ORIGINALITY])
def test_the_last_check_writes_both_verdicts_and_done_in_one_transition(submit, store, pipeline, rounds, rules,
                                                                        metrics, board, members, model, last):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    spy = Spy(store)
    stages = make_stages(pipeline, spy, rounds, rules, metrics, board, members)
    drain(pipeline, stages, order=(DISPATCH,))
    dispatched = store.get(sid)
    first = ORIGINALITY if last == CONCORDANCE else CONCORDANCE
    assert drain(pipeline, stages, order=(first,)) == [(first, sid, "ok")]
    assert store.get(sid) == dispatched  # the first check to finish writes nothing
    assert [name for name, _ in spy.calls] == ["dispatched"]
    assert drain(pipeline, stages, order=(last,)) == [(last, sid, "ok")]
    want = expected_verdicts(rounds, store, sid, rules)
    (name, (verdicts, evidence)), = spy.calls[1:]
    assert name == "judged" and verdicts == {"concordant": want["concordant"], "original": want["original"]}
    assert {"evidence.concordance", "evidence.originality"} <= set(evidence)  # written with the verdicts
    doc = store.get(sid)
    assert doc["processing"]["state"] == DONE
    assert doc["concordant"] == {"pending": False, "value": want["concordant"]}
    assert doc["original"] == {"pending": False, "value": want["original"]}
    assert metrics.outcomes.labels("done")._value.get() == 1


def refuse(*args, **kwargs):
    raise PermanentError("the round's index refused this submission")


@pytest.mark.parametrize("failing_first", [True, False], ids=["failure-first", "failure-last"])
def test_a_failed_check_closes_the_claim_and_the_other_result_is_dropped(submit, store, pipeline, stages, metrics,
                                                                         members, model, monkeypatch, failing_first):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    drain(pipeline, stages, order=(DISPATCH,))
    monkeypatch.setattr(members, "latest_others", refuse)
    order = (ORIGINALITY, CONCORDANCE) if failing_first else (CONCORDANCE, ORIGINALITY)
    outcomes = drain(pipeline, stages, order=order)
    assert dict(((stage, outcome) for stage, _, outcome in outcomes)) == {ORIGINALITY: "failed", CONCORDANCE: "ok"}
    doc = store.get(sid)
    assert doc["processing"]["state"] == FAILED and "refused" in doc["processing"]["error"]
    assert doc["original"]["pending"] is False and doc["original"]["value"] is None
    assert "refused" in doc["original"]["error"]
    if failing_first:  # concordance finished after the failure: its verdict is dropped, the failure's reason stays
        assert doc["concordant"]["value"] is None and "refused" in doc["concordant"]["error"]
    else:  # concordance finished before: the failure keeps its verdict
        assert doc["concordant"]["pending"] is False and doc["concordant"]["value"] in (True, False)
        assert "error" not in doc["concordant"]
    assert metrics.outcomes.labels("failed")._value.get() == 1
    assert metrics.outcomes.labels("done")._value.get() == 0


# -- a lease taken over: the stale worker's result is dropped -------------------------------
def test_a_dispatcher_whose_lease_was_taken_over_drops_its_result(submit, store, db, pipeline, stages, model, board,
                                                                  metrics, monkeypatch):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    real = workers.consistency.consistency_evidence
    taken = {}

    def stall(*args, **kwargs):  # this worker pauses; meanwhile its lease runs out and another process claims it
        other, claim = take_over(db, sid)
        other.dispatched(claim, 12.5, 0.7)
        taken["token"] = claim.token
        return real(*args, **kwargs)

    monkeypatch.setattr(workers.consistency, "consistency_evidence", stall)
    assert drain(pipeline, stages) == [(DISPATCH, sid, "lost")]
    doc = store.get(sid)
    assert doc["consistency"] == 12.5 and doc["validationLogloss"] == 0.7
    assert doc["processing"]["state"] == SCORING and doc["processing"]["lease"]["owner"] == OTHER
    assert doc["processing"]["lease"]["token"] == taken["token"]
    assert pipeline.depth(CONCORDANCE) == pipeline.depth(ORIGINALITY) == 0  # the checks are the new owner's
    assert board.touched == []
    assert metrics.outcomes.labels("failed")._value.get() == 0


def test_checks_whose_lease_was_taken_over_drop_their_verdicts(submit, store, db, pipeline, stages, model, metrics):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)
    drain(pipeline, stages, order=(DISPATCH,))
    other, claim = take_over(db, sid)
    other.dispatched(claim, 12.5, 0.7)
    before = store.get(sid)
    outcomes = drain(pipeline, stages, order=(CONCORDANCE, ORIGINALITY))
    assert outcomes == [(CONCORDANCE, sid, "ok"), (ORIGINALITY, sid, "lost")]
    assert store.get(sid) == before  # the new owner's writes stand
    assert before["processing"]["lease"]["token"] == claim.token and before["concordant"] == PENDING
    assert metrics.outcomes.labels("done")._value.get() == 0
    # and the new owner can still finish the work under its claim
    other.judged(claim, {"concordant": True, "original": False})
    assert store.get(sid)["processing"]["state"] == DONE


def test_a_failure_under_a_lost_lease_is_not_recorded(submit, store, db, pipeline, stages, rounds, model, metrics,
                                                      monkeypatch):
    sid = submit("alice", model(1))
    queue(store, pipeline, sid)

    def broken_while_taken_over(*args, **kwargs):
        take_over(db, sid)
        raise SubmissionError("the file is broken")

    monkeypatch.setattr(rounds, "predictions", broken_while_taken_over)
    assert drain(pipeline, stages) == [(DISPATCH, sid, "lost")]
    doc = store.get(sid)
    assert doc["processing"]["state"] == QUEUED and doc["processing"]["lease"]["owner"] == OTHER
    assert "concordant" not in doc and doc["processing"].get("error") is None
    assert metrics.outcomes.labels("failed")._value.get() == 0


class Rejecting:
    """Wraps an object so that one method raises ``error`` on every call, counting the calls."""

    def __init__(self, inner, method, error):
        self.inner, self.method, self.error, self.calls = inner, method, error, 0

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        def rejected(*args, **kwargs):
            self.calls += 1
            raise self.error
        return rejected


MISCONFIGURED = {
    "credentials": pymongo.errors.OperationFailure("Authentication failed.", code=18),
    "not-authorised": pymongo.errors.OperationFailure("not authorized on numerai to execute command", code=13),
}


@pytest.mark.parametrize("kind", sorted(MISCONFIGURED))
def test_a_database_misconfiguration_defers_once_without_failing(submit, store, pipeline, rounds, rules, metrics,
                                                                model, caplog, kind):
    sid = submit("alice", model(1))
    token = accept(store, sid)
    rejecting = Rejecting(store, "claim", MISCONFIGURED[kind])
    dispatcher = workers.Dispatcher(pipeline, store=rejecting, rounds=rounds, rules=rules, metrics=metrics)
    assert dispatcher.run(Job(sid, token=token)) == "deferred"
    assert rejecting.calls == 1  # not retried in a loop: the recovery sweep comes back later
    doc = store.get(sid)
    assert doc["processing"]["state"] == "queued" and doc["processing"].get("error") is None
    assert metrics.outcomes.labels("failed")._value.get() == 0
    assert metrics.outcomes.labels("retried")._value.get() == 0
    line = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(line) == 1 and sid in line[0] and "MONGO_" in line[0] and "recovery" in line[0]


def test_s3_keys_that_are_refused_do_not_fail_the_submission(submit, store, pipeline, rounds, rules, metrics, model):
    """A wrong S3 key is the operators' to fix: before, every submission failed as an internal error."""
    import botocore.exceptions
    sid = submit("alice", model(1))
    token = accept(store, sid)
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "InvalidAccessKeyId", "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    rounds.files = Rejecting(rounds.files, "submission", denied)
    dispatcher = workers.Dispatcher(pipeline, store=store, rounds=rounds, rules=rules, metrics=metrics)
    assert dispatcher.run(Job(sid, token=token)) == "deferred"
    assert rounds.files.calls == 1
    assert store.get(sid)["processing"]["state"] == "queued"  # recovery dispatches it once the lease runs out
    assert "error" not in (store.get(sid).get("original") or {})


def test_every_verdict_is_written_with_its_evidence_and_provenance(
        submit, store, pipeline, stages, rounds, rules, model, round_frames):
    """The evidence in each document is what the scoring functions give for its
    predictions, in the same update as the verdict; the provenance says who judged."""
    first = model(1)
    broken = submit("mallory", raw=b"id,probability\n")
    ids = [submit("alice", first), submit("bob", model(2)), submit("carol", np.clip(first + 1e-5, 0, 1))]
    score(store, pipeline, stages, broken, *ids)
    rnd = rounds.get(ROUND)
    t = rnd.tournament
    valid = t.validation
    groups = concordance.cluster_groups(rounds._labels(rnd), t.data_types)
    for sid in ids:
        doc = store.get(sid)
        values = rounds.predictions(rnd, doc["username"], doc["filename"])
        found = doc["evidence"]
        assert found["consistency"] == consistency.consistency_evidence(t.eras[valid], t.targets[valid], values[valid], rules)
        assert found["consistency"]["consistency"] == doc["consistency"]
        assert found["concordance"] == concordance.concordance_evidence(groups, values, rules)
        assert found["concordance"]["concordant"] is doc["concordant"]["value"]
        compared = Oracle(store.db, rounds.files, rules, groups, t).compared_with(doc)
        readable = [{"submission_id": str(other["_id"]), "username": other["username"]} for other, _ in compared]
        plain = evidence.originality_evidence(values, [(str(other["_id"]), found) for other, found in compared], rules)
        left_out = found["originality"]["left_out"]
        assert [(o["submission_id"], o["username"]) for o in left_out] == [(broken, "mallory")]
        assert "no predictions" in left_out[0]["reason"]
        assert found["originality"] == named_originality(plain, readable, left_out)
        assert found["originality"]["original"] is doc["original"]["value"]
        provenance = doc["provenance"]
        assert provenance["scorer_version"].startswith(scoring.__version__)
        assert provenance["rules"] == dataclasses.asdict(rules)
        assert provenance["dataset_version"] == rnd.version
        assert provenance["server"] == "%s:%d" % (socket.gethostname(), os.getpid())
        assert set(provenance["judged_at"]) == {"consistency", "concordance", "originality"}
        assert provenance["judged_by"] == {check: {"server": provenance["server"], "scorer_version": provenance["scorer_version"],
                                                   "dataset_version": rnd.version}
                                           for check in ("consistency", "concordance", "originality")}
    carol = store.get(ids[2])["evidence"]["originality"]
    assert carol["original"] is False
    assert carol["counted_against"][0]["username"] == "alice"
    assert carol["counted_against"][0]["submission_id"] == ids[0]
    assert {"duplicate", "too correlated"} & set(carol["counted_against"][0]["clauses"])


# -- never judged on partial data: other users' files that are late, broken or gone ----------------
class Clock:
    """The rounds' naive-UTC ``now``, moved by the test (the late-file wait is counted on it)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_another_users_missing_file_is_waited_for_then_compared(submit, store, files, pipeline, stages, rounds,
                                                                 round_frames, model, metrics):
    """A file not in storage yet may be late: the candidate is judged later, with it, not now without it."""
    values = model(1)
    late = submit("mallory", raw=False)   # the backend wrote the document; the upload is not there yet
    zuz = submit("zuz", values)           # a copy of what mallory uploads
    created = store.get(late)["created"]
    rounds.now = Clock(created + datetime.timedelta(seconds=rounds.late_file_seconds - 1))
    outcomes = score(store, pipeline, stages, zuz)
    assert (ORIGINALITY, zuz, "deferred") in outcomes
    doc = store.get(zuz)
    assert doc["processing"]["state"] == SCORING and doc["original"] == PENDING and doc["concordant"] == PENDING
    assert doc["processing"]["lease"]["expires"] <= utcnow()  # released: the next sweep takes it
    assert metrics.outcomes.labels("failed")._value.get() == 0
    files.put_submission("mallory", store.get(late)["filename"], demo.submission_csv(round_frames[1]["id"], values))
    assert Recovery(pipeline, store, interval=60).sweep() == 1
    assert {outcome for *_, outcome in drain(pipeline, stages)} == {"ok"}
    doc = store.get(zuz)
    assert doc["original"] == {"pending": False, "value": False}  # compared with mallory's copy
    assert doc["evidence"]["originality"]["left_out"] == []
    assert doc["evidence"]["originality"]["counted_against"][0]["submission_id"] == late


def test_a_file_still_missing_after_the_wait_is_left_out_and_said(submit, store, pipeline, stages, rounds, model):
    values = model(1)
    late = submit("mallory", raw=False)
    zuz = submit("zuz", values)
    rounds.now = Clock(store.get(late)["created"] + datetime.timedelta(seconds=rounds.late_file_seconds))
    assert {outcome for *_, outcome in score(store, pipeline, stages, zuz)} == {"ok"}
    doc = store.get(zuz)
    assert doc["original"] == {"pending": False, "value": True}
    found = doc["evidence"]["originality"]
    assert [(o["submission_id"], o["username"]) for o in found["left_out"]] == [(late, "mallory")]
    assert "not in storage" in found["left_out"][0]["reason"] and found["left_out_total"] == 1
    assert "1 earlier submission left out" in explain.sentence(doc, "originality")


def test_a_broken_file_of_another_user_is_left_out_at_once(submit, store, pipeline, stages, rounds, model):
    """Broken is broken: no wait, even for a file submitted a moment ago."""
    broken = submit("mallory", raw=b"id,probability\n")
    zuz = submit("zuz", model(1))
    rounds.now = Clock(store.get(broken)["created"])
    assert {outcome for *_, outcome in score(store, pipeline, stages, zuz)} == {"ok"}
    left_out = store.get(zuz)["evidence"]["originality"]["left_out"]
    assert [o["submission_id"] for o in left_out] == [broken] and "no predictions" in left_out[0]["reason"]


def precise_file(ids, values):
    """A submission file with every digit of float64 values: the index cannot rebuild them from float32."""
    return ("id,probability\n" + "".join("%s,%r\n" % (i, float(v)) for i, v in zip(ids, values))).encode()


def test_a_file_gone_when_its_exact_values_are_read_again_never_fails_the_candidate(
        submit, store, files, pipeline, rules, metrics, board, members, round_frames, model, tmp_path):
    """The index re-reads another user's file for exact values; that file deleted meanwhile is that
    submission's problem: it is left out with the reason, and the candidate is judged without it."""
    ids = round_frames[1]["id"]
    rng = np.random.default_rng(5)
    alice_values = np.clip(model(1) + rng.normal(scale=1e-9, size=len(ids)), 0, 1)
    alice = submit("alice", raw=precise_file(ids, alice_values))
    zuz = submit("zuz", raw=precise_file(ids, alice_values))  # a copy: not original while alice's counts
    # one grid point: no KS bound decides, so exact values are read back for every pair
    rounds = Rounds(files, str(tmp_path / "cache"), rules, lambda fetch_exact: PreparedRound(fetch_exact, grid_points=1))
    stages = make_stages(pipeline, store, rounds, rules, metrics, board, members)
    queue(store, pipeline, alice, zuz)
    drain(pipeline, stages, order=(DISPATCH,))
    assert alice in rounds.get(ROUND).index
    os.remove(files.submission_path("alice", store.get(alice)["filename"]))
    assert {outcome for *_, outcome in drain(pipeline, stages)} == {"ok"}
    doc = store.get(zuz)
    assert doc["processing"]["state"] == DONE
    found = doc["evidence"]["originality"]
    assert [(o["submission_id"], o["username"]) for o in found["left_out"]] == [(alice, "alice")]
    assert "not in storage" in found["left_out"][0]["reason"]
    assert doc["original"]["value"] is True and found["compared"] == 0  # the plain rule over nobody
    assert alice not in rounds.get(ROUND).index


# -- rounds leave memory and come back; a replaced dataset is judged on its new rows -------------------
class Ticks:
    """The rounds' monotonic clock, moved by the test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_round_evicted_by_the_sweep_and_loaded_again_judges_the_same(submit, store, files, pipeline, rules, metrics,
                                                                        board, members, model, tmp_path):
    ticks = Ticks()
    rounds = Rounds(files, str(tmp_path / "cache"), rules, PreparedRound, idle_seconds=600, clock=ticks,
                    metrics=metrics)
    stages = make_stages(pipeline, store, rounds, rules, metrics, board, members)
    first = model(1)
    early = [submit("alice", first), submit("bob", model(2))]
    score(store, pipeline, stages, *early)
    loaded = rounds.get(ROUND)
    ticks.now = 600
    Recovery(Pipeline(), store, interval=60, rounds=rounds).sweep()  # the sweep drops the idle round
    assert rounds.memory() == {} and metrics.round_evictions.labels("idle")._value.get() == 1
    late = [submit("carol", np.clip(first + 1e-5, 0, 1)), submit("dave", model(3)), submit("erin", model(2))]
    score(store, pipeline, stages, *late)
    assert rounds.get(ROUND) is not loaded
    fresh = Rounds(files, str(tmp_path / "cache-2"), rules, PreparedRound)
    for sid in early + late:
        doc = store.get(sid)
        want = expected_verdicts(fresh, store, sid, rules)
        assert doc["processing"]["state"] == DONE
        assert doc["consistency"] == want["consistency"]
        assert (doc["concordant"]["value"], doc["original"]["value"]) == (want["concordant"], want["original"]), sid
    assert store.get(late[0])["original"]["value"] is False  # the copy of alice's, judged after the reload


def new_rows(round_frames):
    """The round's data replaced: the same ids in another order, some validation targets flipped,
    other training rows (so other clusters)."""
    training, tournament = round_frames
    tournament = tournament.sample(frac=1, random_state=5).reset_index(drop=True)
    validation = tournament.index[tournament["data_type"] == "validation"]
    flip = validation[: len(validation) // 3]
    tournament.loc[flip, "target"] = 1 - tournament.loc[flip, "target"]
    return training.sample(frac=0.7, random_state=6), tournament


@pytest.mark.parametrize("replaced", ["after-dispatch", "between-the-checks"])
def test_a_dataset_replaced_mid_round_gives_the_verdicts_of_the_new_data(submit, store, files, pipeline, rules, metrics,
                                                                         board, members, model, round_frames, tmp_path,
                                                                         replaced):
    from tests.queues.test_rounds import replace_dataset
    ticks = Ticks()
    rounds = Rounds(files, str(tmp_path / "cache"), rules, PreparedRound, clock=ticks, version_check_seconds=5)
    stages = make_stages(pipeline, store, rounds, rules, metrics, board, members)
    first = model(1)
    ids = [submit("alice", first), submit("bob", model(2)), submit("carol", np.clip(first + 1e-5, 0, 1)),
           submit("dave", model(3))]
    queue(store, pipeline, *ids)
    drain(pipeline, stages, order=(DISPATCH,))
    old = rounds.get(ROUND)
    before = {sid: expected_verdicts(rounds, store, sid, rules) for sid in ids}
    if replaced == "between-the-checks":
        drain(pipeline, stages, order=(CONCORDANCE,))
    replace_dataset(files, tmp_path, *new_rows(round_frames))
    ticks.now = 5
    assert {outcome for *_, outcome in drain(pipeline, stages)} == {"ok"}
    new = rounds.get(ROUND)
    assert new.version != old.version
    fresh = Rounds(files, str(tmp_path / "cache-2"), rules, PreparedRound)
    changed = 0
    for sid in ids:
        doc = store.get(sid)
        want = expected_verdicts(fresh, store, sid, rules)
        assert doc["processing"]["state"] == DONE
        assert doc["consistency"] == want["consistency"], sid
        assert doc["concordant"]["value"] == want["concordant"] and doc["original"]["value"] == want["original"], sid
        assert doc["evidence"]["consistency"]["consistency"] == want["consistency"]
        provenance = doc["provenance"]
        assert provenance["dataset_version"] == new.version
        assert {check: who["dataset_version"] for check, who in provenance["judged_by"].items()} == \
               dict.fromkeys(("consistency", "concordance", "originality"), new.version)
        changed += want["consistency"] != before[sid]["consistency"]
    assert changed  # the new rows judge differently: the test can tell old verdicts from new
