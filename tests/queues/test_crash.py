"""A crash at every write: whatever write a process dies at, recovery finishes the record.

Each path is run once per write k on it: the k-th write crashes the
process, either before it reaches the database or after it is applied
but before its answer arrives. A new process (another pid of the same
server) then recovers with no request sent again, except the POSTs the
client never had an answer to. Then the invariants must hold: nothing
pending in a settled submission, nothing unsettled, verdicts equal to the
plain rules, one leaderboard entry per user showing the newest dispatched
submission with its verdicts. Runs against SecantusDB (the leaderboard's
grouped writes use array filters).
"""
import pytest
from bson import ObjectId

from queues.errors import PermanentError
from queues.pipeline import CONCORDANCE
from scoring.rules import Rules

from tests.oracle import Oracle
from tests.queues.harness import (RESCORE_ANSWERED, Crash, Faults, Node, World, check_quiescent, crash_at_every_write,
                                  play)


class RoundBroken(PermanentError):
    pass


def near_copy(values):
    return values + 1e-6


# Each path: (submissions to create: [(name, user, kind)], the client's actions).
PATHS = {
    "judged": ([("a", "alice", 1), ("b", "bob", 2)], ["post a", "drain", "post b", "drain"]),
    "failed at dispatch": ([("a", "alice", "broken")], ["post a", "drain"]),
    "failed at a check": ([("a", "alice", 1)], ["post a", "drain"]),
    "re-POSTed while queued": ([("a", "alice", 1)], ["post a", "post a", "drain"]),
    "re-POSTed after done": ([("a", "alice", 1), ("b", "bob", "copy 1")], ["post a", "post b", "drain", "post a", "drain"]),
    "older then newer": ([("old", "alice", 1), ("new", "alice", 2)], ["post old", "drain", "post new", "drain"]),
    "newer then older": ([("old", "alice", 1), ("new", "alice", 2)], ["post new", "drain", "post old", "drain"]),
    # The backend wrote processing: null: the batch's write stops on it, then the document is accepted on its own.
    "processing null": ([("a", "alice", "odd 1"), ("b", "bob", 2)], ["post a", "drain", "post b", "drain"]),
    # Judged under the default rules by a process that does not crash, then re-scored under a changed one.
    "re-scored": ([("a", "alice", 1), ("b", "bob", "scaled 1"), ("c", "carol", "broken")], ["rescore"]),
}
#: The rule the re-scoring processes run with: the scaled copy passes it, not the default one.
CHANGED = Rules(correlation_limit=0.9999)


def run_path(crash_setting, model_values, path, fail_at, after):
    """Run ``path`` with the ``fail_at``-th write crashing; returns (crashed, writes, db name)."""
    client, files, cache_dir, tournament, round_zip = crash_setting
    db = client["crash_%s" % ObjectId()]
    world = World(files, tournament)
    made, actions = PATHS[path]
    ids = {}
    for name, user, kind in made:
        if kind == "broken":
            ids[name] = world.submit(db, user, raw=b"id,probability\nx,1.5\n")
        elif kind == "copy 1":
            ids[name] = world.submit(db, user, near_copy(model_values[1]))
        elif kind == "odd 1":
            ids[name] = world.submit(db, user, model_values[1])
            db.submissions.update_one({"_id": ObjectId(ids[name])}, {"$set": {"processing": None}})
        else:
            ids[name] = world.submit(db, user, model_values[kind])

    rescoring = path == "re-scored"

    def node(pid, faults=None):
        built = Node(db, files, cache_dir, pid, faults, rules=CHANGED if rescoring and pid else None)
        if path == "failed at a check":
            def broken(job, doc, rnd):
                raise RoundBroken("the round's clusters cannot be compared")
            built.workers[CONCORDANCE].judge = broken
        return built

    answered = set()
    if rescoring:  # the first judgement, by a process of the old rules that does not crash
        judge = node(0)
        for sid in ids.values():
            assert judge.post(sid).status_code == 202
            answered.add(sid)
        judge.drain()
    faults = Faults(fail_at, after)
    first = node(1, faults)
    crashed = False
    try:
        play(first, actions, ids, answered)
    except Crash:
        crashed = True
    # A new process of the same server; the client re-sends what it had no answer to.
    second = node(2)
    second.recover()
    for sid in ids.values():
        if sid not in answered:
            assert second.post(sid).status_code == 202
    if rescoring and RESCORE_ANSWERED not in answered:  # the operator had no answer: asks again
        second.rescorer.request(41)
    second.drain()
    second.recover()
    if rescoring:
        second.rescore()
    return crashed, faults.writes, db, world, ids, node(3)


def expected_for(db, files, node, ids):
    """The plain rules' verdicts for every submission (None: it must end failed)."""
    rnd = node.workers[CONCORDANCE].rounds.get(41)
    groups = node.workers[CONCORDANCE].rounds.groups(rnd)
    oracle = Oracle(db, files, node.workers[CONCORDANCE].rules, groups, rnd.tournament)
    return {sid: oracle.verdicts(sid) for sid in ids.values()}


def check_rescored_once(db, ids):
    """One run, closed once; every submission judged again by it exactly once, its old judgement kept."""
    competition = db.competitions.find_one({"_id": 41})
    assert "rescore" not in competition, competition.get("rescore")
    runs = [summary["run"] for summary in competition.get("rescores", [])]
    assert len(runs) == 1, runs
    for sid in ids.values():
        doc = db.submissions.find_one({"_id": ObjectId(sid)})
        assert [entry["run"] for entry in doc.get("history", [])] == runs, (sid, doc.get("history"))
        assert doc["history"][0]["state"] in ("done", "failed")
    assert competition["rescores"][0]["submissions"] == len(ids)
    assert competition["rescores"][0]["changed"] >= 1, "the changed rule must flip a verdict"


@pytest.mark.parametrize("after", [False, True], ids=["write lost", "answer lost"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_crash_at_every_write_is_recovered(crash_setting, model_values, path, after):
    files = crash_setting[1]

    def attempt(k):
        crashed, writes, db, world, ids, fresh = run_path(crash_setting, model_values, path, k, after)
        try:
            expected = expected_for(db, files, fresh, ids)
            if path == "failed at a check":
                expected = dict.fromkeys(expected)  # every submission ends failed
            check_quiescent(db, expected)
            if path == "re-scored":
                check_rescored_once(db, ids)
        finally:
            db.client.drop_database(db.name)
        return crashed, writes
    total = crash_at_every_write(attempt, "%s (%s)" % (path, "after" if after else "before"))
    assert total >= 3, "the path made too few writes to test anything"
