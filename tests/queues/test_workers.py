"""The pipeline stages, one job at a time: each worker's ``run`` is called directly."""
import threading

import numpy as np
import pymongo.errors
import pytest

from queues import workers
from queues.explain import named_originality
from queues.pipeline import CONCORDANCE, LEADERBOARD, ORIGINALITY, Job
import dataclasses
import os
import socket

import scoring
from scoring import concordance, consistency, evidence, originality
from scoring.submission import parse_submission

from tests.conftest import ROUND


@pytest.fixture
def stages(pipeline, store, rounds, rules, metrics):
    parts = (store, rounds, rules, metrics)
    return {LEADERBOARD: workers.Dispatcher(pipeline, *parts),
            CONCORDANCE: workers.ConcordanceWorker(pipeline, *parts),
            ORIGINALITY: workers.OriginalityWorker(pipeline, *parts)}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(workers, "BACKOFF_BASE", 0.001)
    monkeypatch.setattr(workers, "BACKOFF_CAP", 0.002)


def drain(pipeline, stages):
    """Run every queued job through its stage until all queues are empty; returns outcomes."""
    outcomes = []
    progress = True
    while progress:
        progress = False
        for stage in (LEADERBOARD, CONCORDANCE, ORIGINALITY):
            inbox = pipeline.queues[stage]
            while not inbox.empty():
                job = inbox.get_nowait()
                outcomes.append((stage, job.submission_id, stages[stage].run(job)))
                pipeline.done(stage, job)
                progress = True
    return outcomes


def score(store, pipeline, stages, *ids):
    for sid in ids:
        assert store.accept(sid) == "queued"
        pipeline.put(LEADERBOARD, Job(sid))
    return drain(pipeline, stages)


def expected_verdicts(rounds, store, sid, rules):
    """What the plain rules say, computed straight from the files and documents."""
    doc = store.get(sid)
    rnd = rounds.get(ROUND)
    t = rnd.tournament
    values = rounds.predictions(rnd, doc["username"], doc["filename"])
    valid = t.validation
    groups = concordance.cluster_groups(rounds._labels(rnd), t.data_types)
    others = [rounds.predictions(rnd, o["username"], o["filename"])
              for o in store.latest_others(ROUND, doc["username"], doc["created"])]
    return {
        "consistency": consistency.consistency(t.eras[valid], t.targets[valid], values[valid], rules),
        "logloss": consistency.logloss(t.targets[valid], values[valid]),
        "concordant": concordance.concordance(groups, values, rules)[1],
        "original": originality.is_original(values, others, rules),
    }


def test_a_round_is_judged_exactly_by_the_rules(submit, store, pipeline, stages, rounds, rules, model, metrics):
    first = model(1)
    ids = [submit("alice", first), submit("bob", model(2)),
           submit("carol", np.clip(first + 1e-5, 0, 1)),  # a near copy of alice's
           submit("dave", model(3), validationLogloss=0.5)]
    outcomes = score(store, pipeline, stages, *ids)
    assert {outcome for *_, outcome in outcomes} == {"ok"}
    assert len(outcomes) == 3 * len(ids)
    board = store.competitions.find_one({"_id": ROUND})["leaderboard"]
    assert sorted(entry["username"] for entry in board) == ["alice", "bob", "carol", "dave"]
    verdicts = {}
    for sid in ids:
        doc = store.get(sid)
        want = expected_verdicts(rounds, store, sid, rules)
        verdicts[doc["username"]] = want["original"]
        assert doc["processing"]["state"] == "done"
        assert doc["processing"]["attempts"] == 1
        assert doc["consistency"] == pytest.approx(want["consistency"], abs=1e-12)
        assert doc["concordant"] == {"pending": False, "value": want["concordant"]}
        assert doc["original"] == {"pending": False, "value": want["original"]}
        entry = next(e for e in board if e["username"] == doc["username"])
        assert entry["submission_id"] == doc["_id"]
        assert entry["logloss"]["consistency"] == doc["consistency"]
        assert entry["concordant"] == doc["concordant"] and entry["original"] == doc["original"]
        assert entry["earnings"] == {"career": {"usd": 3.0, "nmr": 2.0}, "competition": {"usd": 0, "nmr": 0}}
    assert store.get(ids[0])["validationLogloss"] == pytest.approx(expected_verdicts(rounds, store, ids[0], rules)["logloss"])
    assert store.get(ids[3])["validationLogloss"] == 0.5  # the backend's own figure is kept
    assert verdicts["carol"] is False and verdicts["alice"] is True
    assert metrics.outcomes.labels("done")._value.get() == len(ids)


def test_own_earlier_submissions_never_count(submit, store, pipeline, stages, model):
    values = model(1)
    first, second = submit("alice", values), submit("alice", values)
    score(store, pipeline, stages, first, second)
    assert store.get(second)["original"]["value"] is True
    board = store.competitions.find_one({"_id": ROUND})["leaderboard"]
    assert [entry["submission_id"] for entry in board] == [store.get(second)["_id"]]


def test_scoring_twice_leaves_the_same_documents(submit, store, pipeline, stages, model):
    ids = [submit("alice", model(1)), submit("bob", model(1))]
    score(store, pipeline, stages, *ids)

    def snapshot():
        docs = [{k: v for k, v in store.get(sid).items() if k != "processing"} for sid in ids]
        for doc in docs:
            doc["provenance"].pop("judged_at")  # the one thing meant to change
        return docs, store.competitions.find_one({"_id": ROUND})

    before = snapshot()
    score(store, pipeline, stages, *ids)
    assert snapshot() == before


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
def test_broken_files_end_failed_with_a_reason(submit, store, pipeline, stages, round_frames, how, reason, model):
    sid = submit("mallory", raw=broken_file(round_frames[1], how))
    outcomes = score(store, pipeline, stages, sid)
    assert outcomes == [(LEADERBOARD, sid, "failed")]
    doc = store.get(sid)
    assert doc["processing"]["state"] == "failed"
    assert reason in doc["processing"]["error"]
    for check in ("concordant", "original"):
        assert doc[check]["pending"] is False and doc[check]["value"] is None
        assert reason in doc[check]["error"]
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
    assert "lacks filename" in store.get(no_user)["processing"]["error"]
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


@pytest.mark.parametrize("method", ["begin", "update_leaderboard", "record_consistency"])
def test_transient_database_errors_are_retried(submit, store, pipeline, rounds, rules, metrics, model, method):
    sid = submit("alice", model(1))
    store.accept(sid)
    dispatcher = workers.Dispatcher(pipeline, Flaky(store, method, 2), rounds, rules, metrics)
    assert dispatcher.run(Job(sid)) == "ok"
    assert metrics.outcomes.labels("retried")._value.get() == 2
    assert store.get(sid)["consistency"] is not None
    assert len(store.competitions.find_one({"_id": ROUND})["leaderboard"]) == 1


def test_a_lasting_outage_defers_to_recovery_without_failing(submit, store, pipeline, rounds, rules, metrics, model):
    sid = submit("alice", model(1))
    store.accept(sid)
    dispatcher = workers.Dispatcher(pipeline, Flaky(store, "begin", 10 ** 6), rounds, rules, metrics)
    assert dispatcher.run(Job(sid)) == "deferred"
    assert store.get(sid)["processing"]["state"] == "queued"
    assert metrics.outcomes.labels("retried")._value.get() == workers.MAX_ATTEMPTS


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
    for sid in (first, second):
        store.accept(sid)
        pipeline.put(LEADERBOARD, Job(sid))
    finished = threading.Event()
    put = pipeline.put

    def watch(stage, job):
        if stage == CONCORDANCE and job.submission_id == second:
            finished.set()
        return put(stage, job)

    pipeline.put = watch
    thread = threading.Thread(target=stages[LEADERBOARD].loop)
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


def test_checks_already_judged_are_not_redone(submit, store, pipeline, stages, model, monkeypatch):
    sid = submit("alice", model(1))
    score(store, pipeline, stages, sid)
    monkeypatch.setattr(workers.concordance, "concordance_evidence", lambda *a, **k: pytest.fail("recomputed"))
    assert stages[CONCORDANCE].run(Job(sid)) == "ok"


def test_stages_after_a_restart_load_what_they_need(submit, store, pipeline, stages, rounds, rules, model):
    """Jobs without the dispatcher's document and predictions (as recovery queues them)."""
    sid = submit("alice", model(1))
    store.accept(sid)
    stages[LEADERBOARD].run(Job(sid))
    for stage in (CONCORDANCE, ORIGINALITY):
        assert stages[stage].run(Job(sid)) == "ok"
    doc = store.get(sid)
    want = expected_verdicts(rounds, store, sid, rules)
    assert doc["processing"]["state"] == "done"
    assert doc["concordant"]["value"] == want["concordant"]
    values = parse_submission(rounds.files.submission("alice", doc["filename"]), rounds.get(ROUND).tournament.ids)
    assert sid in rounds.get(ROUND).index and len(values) == len(rounds.get(ROUND).tournament.ids)


def test_originality_reads_no_file_the_dispatcher_already_read(submit, store, pipeline, stages, rounds, model):
    """The dispatcher prepares each submission for originality, so no check re-reads a file."""
    ids = [submit("alice", model(1)), submit("bob", model(2)), submit("carol", model(3))]
    for sid in ids:
        store.accept(sid)
        assert stages[LEADERBOARD].run(Job(sid)) == "ok"
        assert sid in rounds.get(ROUND).index
    reads = []
    real = rounds.files.submission
    rounds.files.submission = lambda *args: reads.append(args) or real(*args)
    drain(pipeline, stages)
    assert reads == []
    assert all(store.get(sid)["processing"]["state"] == "done" for sid in ids)


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
        others = store.latest_others(ROUND, doc["username"], doc["created"])
        readable = [o for o in others if o["username"] != "mallory"]
        plain = evidence.originality_evidence(
            values, [(o["submission_id"], rounds.predictions(rnd, o["username"], o["filename"])) for o in readable], rules)
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
    carol = store.get(ids[2])["evidence"]["originality"]
    assert carol["original"] is False
    assert carol["counted_against"][0]["username"] == "alice"
    assert carol["counted_against"][0]["submission_id"] == ids[0]
    assert {"duplicate", "too correlated"} & set(carol["counted_against"][0]["clauses"])
