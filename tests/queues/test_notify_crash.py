"""A crash at every write, webhooks on: every settle has its event, and every event reaches the backend.

As in test_crash.py, each path runs once per write k: the k-th write
crashes the process (``harness.Faults``), before it reaches the database
or after it is applied but before its answer arrives. The paths include
the delivery's own writes (claim, outcome) and a receiver that fails the
first request of every event. A new process of the same server then
recovers, judges and delivers everything. Then:

- every settled submission has exactly one ``submission.judged`` event
  per judgement (its history and the current one), revisions 1, 2, ...
  in order: no settle without its event, no event without its settle;
- every closed re-score run has exactly one ``round.rescored`` event;
- every event is delivered; every request the receiver got verifies
  with the ``standardwebhooks`` library, and every request of an event
  carries that event's recorded body, byte for byte;
- the last event of each submission says what its document says.
"""
import json

import pytest
from bson import ObjectId

from scoring.rules import Rules
from tests.queues.harness import (RESCORE_ANSWERED, Crash, Faults, Node, World, check_settled, crash_at_every_write,
                                  play)
from tests.queues.test_notify import SECRET, Clock, deliver_everything, the_document_says, webhooks
from tests.receiver import FAIL, OK, Receiver

# Each path: (submissions to create: [(name, user, kind)], the client's actions).
PATHS = {
    "judged, delivered after a 500": ([("a", "alice", 1), ("b", "bob", 2)],
                                      ["post a", "post b", "drain", "deliver", "deliver"]),
    "failed": ([("a", "alice", "broken")], ["post a", "drain", "deliver", "deliver"]),
    "re-POSTed after delivery": ([("a", "alice", 1)], ["post a", "drain", "deliver", "deliver", "post a", "drain",
                                                        "deliver", "deliver"]),
    "re-POSTed before delivery": ([("a", "alice", 1)], ["post a", "drain", "post a", "drain", "deliver", "deliver"]),
    # Judged and delivered by a process that does not crash, then re-scored under a changed rule.
    "re-scored": ([("a", "alice", 1), ("b", "bob", "scaled 1"), ("c", "carol", "broken")], ["rescore", "deliver",
                                                                                            "deliver"]),
}
CHANGED = Rules(correlation_limit=0.9999)


class FailsFirst:
    """The receiver's plan: the first request of every event answers 500, later ones 204."""

    def __init__(self):
        self.seen = set()

    def __call__(self, received):
        if received.event_id in self.seen:
            return OK
        self.seen.add(received.event_id)
        return FAIL


def deliver_once(node):
    """One poll and its deliveries, then time for every retry to be due."""
    node.notifier.poll()
    while node.notifier.deliver_next() is not None:
        pass
    node.clock.advance(600)


def run_path(crash_setting, model_values, receiver, path, fail_at, after):
    """Run ``path`` with the ``fail_at``-th write crashing, then recover; returns (crashed, writes, db)."""
    client, files, cache_dir, tournament, _ = crash_setting
    db = client["notify_crash_%s" % ObjectId()]
    world = World(files, tournament)
    made, actions = PATHS[path]
    ids = {name: world.submit(db, user, raw=b"id,probability\nx,1.5\n") if kind == "broken" else
           world.submit(db, user, model_values[kind]) for name, user, kind in made}
    rescoring = path == "re-scored"

    def node(pid, faults=None):
        built = Node(db, files, cache_dir, pid, faults, rules=CHANGED if rescoring and pid else None,
                     settings=webhooks(receiver.url))
        built.clock = built.notifier.clock = Clock()
        return built

    answered = set()
    if rescoring:  # the first judgement, delivered, by a process of the old rules that does not crash
        judge = node(0)
        for sid in ids.values():
            assert judge.post(sid).status_code == 202
            answered.add(sid)
        judge.drain()
        deliver_everything(judge)
    faults = Faults(fail_at, after)
    first = node(1, faults)
    crashed = False
    try:
        play(first, actions, ids, answered, extra={"deliver": deliver_once})
    except Crash:
        crashed = True
    second = node(2)  # a new process of the same server; the client re-sends what it had no answer to
    second.recover()
    for sid in ids.values():
        if sid not in answered:
            assert second.post(sid).status_code == 202
    if rescoring and RESCORE_ANSWERED not in answered:
        second.rescorer.request(41)
    second.drain()
    second.recover()
    if rescoring:
        second.rescore()
    second.clock.advance(3600)  # past any lease the crashed process held
    deliver_everything(second)
    return crashed, faults.writes, db


def check_notified(db, receiver):
    """The invariants of the module's docstring."""
    check_settled(db)
    requests = receiver.by_event()
    assert all(request.verified for request in receiver.received), [r.problem for r in receiver.received if not r.verified]
    for doc in db.submissions.find({"processing.state": {"$in": ["done", "failed"]}}):
        events = sorted((doc.get("notifications") or {}).get("events", {}).items(), key=lambda item: item[1]["revision"])
        judgements = len(doc.get("history") or []) + 1
        assert [event["revision"] for _, event in events] == list(range(1, judgements + 1)), (doc["_id"], events)
        assert [event["recorded_at"] for _, event in events] == sorted(event["recorded_at"] for _, event in events)
        for event_id, event in events:
            assert event["state"] == "delivered", (doc["_id"], event_id, event)
            assert {request.body for request in requests[event_id]} == {event["body"].encode()}
        assert json.loads(events[-1][1]["body"])["data"] == the_document_says(doc)
    competition = db.competitions.find_one({"_id": 41}) or {}
    rescored = sorted((competition.get("notifications") or {}).get("events", {}).items())
    assert [json.loads(event["body"])["data"]["run"] for _, event in rescored] == \
        [str(summary["run"]) for summary in competition.get("rescores", [])]
    for event_id, event in rescored:
        assert event["state"] == "delivered" and {r.body for r in requests[event_id]} == {event["body"].encode()}
    stored = {event_id for doc in list(db.submissions.find()) + [competition]
              for event_id in ((doc.get("notifications") or {}).get("events") or {})}
    assert set(requests) == stored, "the receiver got exactly the recorded events"


@pytest.mark.parametrize("after", [False, True], ids=["write lost", "answer lost"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_crash_at_every_write_loses_no_event(crash_setting, model_values, path, after):
    def attempt(k):
        with Receiver(SECRET, plan=FailsFirst()) as receiver:
            crashed, writes, db = run_path(crash_setting, model_values, receiver, path, k, after)
            try:
                check_notified(db, receiver)
            finally:
                db.client.drop_database(db.name)
        return crashed, writes
    total = crash_at_every_write(attempt, "%s (%s)" % (path, "after" if after else "before"))
    assert total >= 6, "the path made too few writes to test anything"
