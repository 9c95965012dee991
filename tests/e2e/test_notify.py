"""Webhooks end to end: ``./server`` on SecantusDB and moto_server, a receiver on loopback that fails and hangs.

A round of seven submissions (a broken file among them) is POSTed to a
server whose webhooks go to a receiver (tests/receiver.py) that verifies
every request with the ``standardwebhooks`` library. The receiver answers
500 to the first request of some events, hangs on others until the
server's NOTIFY_TIMEOUT, and hangs on bob's first one: bob is POSTed first,
then the other six, and the server is SIGKILLed at once, in the middle of
that delivery and of judging the round. The server is started again (it
takes back its dead predecessor's work, and the cut-off delivery once its
lease has expired), then
``./server rescore`` judges the round again under a changed rule, and the
running server delivers whatever that command leaves. Then:

- every request verified, and every retry of an event carried the same body;
- every settled submission's last delivered ``submission.judged`` event,
  taken by revision, says what its document says; each submission has one
  event per judgement and every one was delivered;
- the run's ``round.rescored`` event was delivered with its counts and rules.
"""
import json
import threading

from tests.queues.test_notify import SECRET, the_document_says
from tests.receiver import FAIL, HANG, OK, Receiver

from .conftest import FINAL, assert_verdicts, expected_verdicts, load_round, states, wait_finished, wait_for
from .test_rescore import LOOSER, finish, flips, rescore, rules_of, six_users

ROUND = 41
#: The lease of a killed delivery is NOTIFY_TIMEOUT plus 5 s: short, so the restarted server takes it soon.
TIMEOUT = "4"


class Plan:
    """What the receiver answers: by the event's user and revision, the first request only; then 204.

    ``("bob", 1)`` hangs until the test ends (the server is killed meanwhile);
    ``("dave", 1)`` hangs until the server gives up on it (NOTIFY_TIMEOUT);
    alice's first judgement, carol's second and the ``round.rescored`` event
    answer 500 first.
    """

    KILLED, TIMED_OUT = ("bob", 1), ("dave", 1)
    FAILED = {("alice", 1), ("carol", 2), ("round.rescored", None)}

    def __init__(self):
        self.seen = set()
        self.killed_hangs = threading.Event()

    @staticmethod
    def key(payload):
        if payload["type"] == "round.rescored":
            return "round.rescored", None
        return payload["data"]["username"], payload["data"]["revision"]

    def __call__(self, received):
        if not received.verified or received.event_id in self.seen:
            return OK
        self.seen.add(received.event_id)
        key = self.key(received.payload)
        if key == self.KILLED:
            self.killed_hangs.set()
            return HANG
        if key == self.TIMED_OUT:
            return HANG
        return FAIL if key in self.FAILED else OK


def round_of_seven(storage):
    rnd = six_users()
    rnd.add("gina", raw=b"id,probability\nnot-an-id,0.5\n")
    load_round(storage, rnd)
    return rnd


def nothing_waits(db):
    """True when no submission or round has a webhook event still to deliver."""
    return all(getattr(db, name).count_documents({"notifications.due": {"$exists": True}}) == 0
               for name in ("submissions", "competitions"))


def test_every_verdict_reaches_the_backend_signed_through_a_kill_and_a_rescore(storage, database, start_server):
    rnd = round_of_seven(storage)
    db = storage.db
    plan = Plan()
    with Receiver(SECRET, plan=plan) as receiver:
        server = start_server(NOTIFY_URL=receiver.url, NOTIFY_SECRET=SECRET, NOTIFY_TIMEOUT=TIMEOUT)
        bob, others = rnd.submissions[1], rnd.submissions[:1] + rnd.submissions[2:]
        assert server.post(bob.submission_id).status_code == 202
        wait_for(plan.killed_hangs.is_set, 60, "bob's event to reach the receiver", server.tail)
        for sub in others:  # accepted: queued and leased to this process, which is killed while judging them
            assert server.post(sub.submission_id).status_code == 202
        server.kill()
        unsettled = [sid for sid, state in states(db, others).items() if state not in FINAL]
        assert unsettled, "the kill came after the whole round was judged: it proves less than it should"
        bob_event = next(request.event_id for request in receiver.received if Plan.key(request.payload) == Plan.KILLED)

        server.start()
        docs = wait_finished(db, rnd.submissions, 60, server.tail)
        for sid, want in expected_verdicts(rnd).items():
            assert_verdicts(docs[sid], want)
        wait_for(lambda: nothing_waits(db), 90, "every event of the round to be delivered", server.tail)
        assert any(request.event_id == bob_event and request.answer == OK for request in receiver.received), \
            "the event whose delivery the kill cut off was delivered by the restarted server"

        assert flips(rnd, LOOSER), "the changed rule must flip a verdict, or the re-score proves little"
        out, _ = finish(rescore(dict(server.env, **LOOSER), "--json"))
        result = json.loads(out)
        wait_for(lambda: nothing_waits(db), 90, "every event of the re-score to be delivered", server.tail)
        docs = wait_finished(db, rnd.submissions, 5)
        for sid, want in expected_verdicts(rnd, rules_of(LOOSER)).items():
            assert_verdicts(docs[sid], want)
        server.stop()

    requests = list(receiver.received)
    assert all(request.verified for request in requests), [r.problem for r in requests if not r.verified]
    by_event = receiver.by_event()
    for event_id, sent in by_event.items():
        assert len({request.body for request in sent}) == 1, "the retries of %s carried other bodies" % event_id
    retried = {Plan.key(sent[0].payload) for sent in by_event.values() if len(sent) > 1}
    assert {Plan.KILLED, Plan.TIMED_OUT} | Plan.FAILED <= retried, retried

    delivered = [request.payload for request in requests if request.answer == OK]
    last = {}
    for payload in delivered:
        if payload["type"] == "submission.judged":
            sid = payload["data"]["submission_id"]
            if sid not in last or payload["data"]["revision"] > last[sid]["revision"]:
                last[sid] = payload["data"]
    assert set(last) == {sub.submission_id for sub in rnd.submissions}
    for sid, doc in docs.items():
        assert last[sid] == the_document_says(doc), sid
        events = doc["notifications"]["events"]
        assert sorted(event["revision"] for event in events.values()) == [1, 2], "one event per judgement"
        assert all(event["state"] == "delivered" for event in events.values())
        assert {event_id for event_id in events} <= set(by_event)
    assert sum(data["status"] == "failed" for data in last.values()) == 1

    (rescored,) = [payload["data"] for payload in delivered if payload["type"] == "round.rescored"]
    assert rescored["run"] == result["run"] and rescored["competition_id"] == ROUND
    assert rescored["submissions"] == len(rnd.submissions) == result["submissions"]
    assert rescored["changed"] == result["changed"] >= 1
    assert rescored["rules"]["correlation_limit"] == 0.9999
    assert "NOTIFY_SECRET" not in server.log_text() and SECRET not in server.log_text()
    assert SECRET[6:] not in server.log_text() and "query-is-kept" not in server.log_text()
