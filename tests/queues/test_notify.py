"""Webhooks (queues/notify.py): recorded with the settle, signed, claimed, retried, given up.

Every request is verified by the ``standardwebhooks`` library from PyPI on a
receiver on loopback (tests/receiver.py), as the backend would verify it,
never by the server's own signing code. Servers are the harness's
``Node``s on SecantusDB, their webhooks on; a test steps the notifier
itself (``poll``, then ``deliver_next``) and moves its clock, so nothing
here waits for time to pass, except the one test that runs the threads.
"""
import base64
import datetime
import json
import logging
import os
import re
import threading

import mongomock
import pymongo.errors
import pytest
from bson import ObjectId

from queues import explain, notify
from queues.http.answers import public
from queues.config import Config, ConfigError, from_env
from queues.local import free_port
from queues.metrics import Metrics
from queues.store import utcnow
from tests.queues.harness import API_KEY, Node, World
from tests.receiver import FAIL, HANG, OK, Receiver, Refusing

#: A fixed secret (the same in every pytest-xdist worker, whose parametrised ids must agree); 32 bytes as a receiver would have.
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


class Clock:
    """The notifier's clock: the real time plus however far a test has moved it on."""

    def __init__(self):
        self.offset = datetime.timedelta(0)

    def __call__(self):
        return utcnow() + self.offset

    def advance(self, seconds):
        self.offset += datetime.timedelta(seconds=seconds)


def webhooks(url, timeout=5.0, max_age=notify.RETRY_CAP * 10):
    return {"notify_url": url, "notify_secret": SECRET, "notify_timeout": timeout, "notify_max_age": max_age}


@pytest.fixture
def world(files, round_frames):
    return World(files, round_frames[1])


@pytest.fixture
def make_node(real_db, files, tmp_path):
    """``make_node(url, pid=1, **settings)``: a server with webhooks to ``url`` and a clock a test moves."""
    def make(url, pid=1, **settings):
        node = Node(real_db, files, str(tmp_path / "cache"), pid, settings=webhooks(url, **settings))
        node.clock = node.notifier.clock = Clock()
        return node
    return make


def judge(node, *sids):
    for sid in sids:
        assert node.post(sid).status_code == 202
    node.drain()


def step(node):
    """One poll and every delivery it queued, run here; the outcomes."""
    node.notifier.poll()
    outcomes = []
    while True:
        outcome = node.notifier.deliver_next()
        if outcome is None:
            return outcomes
        outcomes.append(outcome)


def deliver_everything(node, rounds=30):
    """Poll and deliver, moving the clock past every wait, until nothing is pending; the outcomes."""
    outcomes = []
    for _ in range(rounds):
        outcomes += step(node)
        if not pending_documents(node.store.db):
            return outcomes
        node.clock.advance(notify.RETRY_CAP + notify.LEASE_MARGIN + 60)
    raise AssertionError("events still pending after %d rounds: %s" % (rounds, outcomes))


def pending_documents(db):
    return [doc for name in ("submissions", "competitions")
            for doc in getattr(db, name).find({"notifications.due": {"$exists": True}})]


def events(db, sid, collection="submissions"):
    doc = getattr(db, collection).find_one({"_id": ObjectId(sid) if collection == "submissions" else sid})
    return sorted(notify.events_of(doc).items(), key=lambda item: item[1]["recorded_at"])


def data_of(event):
    return json.loads(event["body"])["data"]


def the_document_says(doc):
    """What ``submission.judged`` must carry of a settled document."""
    processing = doc["processing"]
    expected = {"submission_id": str(doc["_id"]), "competition_id": doc["competition_id"], "username": doc["username"],
                "status": processing["state"], "consistency": doc.get("consistency"),
                "validationLogloss": doc.get("validationLogloss"),
                "concordant": (doc.get("concordant") or {}).get("value"), "original": (doc.get("original") or {}).get("value"),
                "judged_at": notify.iso(processing["finished_at"]), "revision": doc["notifications"]["revision"]}
    if processing["state"] == "failed":
        expected["error"] = processing["error"]
    return expected


# -- the request -------------------------------------------------------------------------------
def test_a_judged_submission_is_posted_once_signed_as_standard_webhooks_verify(make_node, world, model, real_db):
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        assert step(node) == ["delivered"]
    (request,) = receiver.received
    assert request.verified, request.problem
    assert request.path == "/hooks/criteria?token=query-is-kept"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert abs(int(request.headers["webhook-timestamp"]) - datetime.datetime.now().timestamp()) < 300
    (event_id, event), = events(real_db, sid)
    assert request.event_id == event_id and event_id.startswith("msg_")
    assert request.body == event["body"].encode()
    payload = request.payload
    assert sorted(payload) == ["data", "timestamp", "type"] and payload["type"] == "submission.judged"
    doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
    assert payload["data"] == the_document_says(doc)
    assert payload["data"]["revision"] == 1 and payload["data"]["status"] == "done" and "error" not in payload["data"]
    assert isinstance(payload["data"]["concordant"], bool) and isinstance(payload["data"]["original"], bool)
    assert payload["timestamp"] == payload["data"]["judged_at"]
    assert event["state"] == "delivered" and event["attempts"] == 1 and "next_at" not in event
    assert "due" not in doc["notifications"], "nothing is pending any more"


def test_a_wrong_secret_does_not_verify(make_node, world, model, real_db):
    """The receiver's check is real: a request signed with another secret fails it."""
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with Receiver(other) as receiver:
        node = make_node(receiver.url)
        judge(node, world.submit(real_db, "alice", model(1)))
        step(node)
    (request,) = receiver.received
    assert not request.verified and "No matching signature" in request.problem


def test_a_failed_submission_says_why_and_reaches_no_verdict(make_node, world, real_db):
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", raw=b"id,probability\nx,1.5\n")
        judge(node, sid)
        step(node)
    data = receiver.received[0].payload["data"]
    doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
    assert data == the_document_says(doc)
    assert data["status"] == "failed" and data["error"] == doc["processing"]["error"] and data["error"]
    assert data["concordant"] is None and data["original"] is None and data["consistency"] is None


def test_each_judgement_has_its_event_and_a_higher_revision(make_node, world, model, real_db):
    """A re-POST is judged again: a second event, revision 2, the first kept as it was."""
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        judge(node, sid)
        deliver_everything(node)
    recorded = events(real_db, sid)
    assert [event["revision"] for _, event in recorded] == [1, 2]
    assert [event["state"] for _, event in recorded] == ["delivered", "delivered"]
    doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
    assert data_of(recorded[-1][1]) == the_document_says(doc)
    assert sorted(request.payload["data"]["revision"] for request in receiver.received) == [1, 2]
    assert len({request.event_id for request in receiver.received}) == 2


@pytest.mark.parametrize("junk", [None, "text", {"events": ["not", "a", "map"], "revision": 7}])
def test_a_notifications_field_that_is_not_ours_to_extend_never_stops_the_settle(make_node, world, model, real_db,
                                                                                junk, caplog):
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        real_db.submissions.update_one({"_id": ObjectId(sid)}, {"$set": {"notifications": junk}})
        judge(node, sid)
        assert step(node) == ["delivered"]
    doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
    assert doc["processing"]["state"] == "done"
    (_, event), = events(real_db, sid)
    assert event["revision"] == 1 and data_of(event) == the_document_says(doc)
    assert any(record.getMessage().startswith(sid + ": notifications was ") for record in caplog.records)


def test_no_event_is_recorded_when_webhooks_are_off(real_db, files, tmp_path, world, model):
    node = Node(real_db, files, str(tmp_path / "cache"), 1)
    assert node.notifier is None and node.store.notify is None
    sid = world.submit(real_db, "alice", model(1))
    judge(node, sid)
    assert "notifications" not in real_db.submissions.find_one({"_id": ObjectId(sid)})


# -- delivery: retries, hangs, refusals, give-ups ---------------------------------------------------
def test_a_500_is_retried_within_two_seconds_with_the_same_id_and_body(make_node, world, model, real_db):
    with Receiver(SECRET, plan=lambda request: FAIL if request.number == 0 else OK) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        assert step(node) == ["retried"]
        (_, event), = events(real_db, sid)
        assert event["state"] == "pending" and event["attempts"] == 1 and event["last_status"] == 500
        assert event["last_error"] == "HTTP 500 Internal Server Error: receiver fails"
        wait = (event["next_at"] - event["last_attempt_at"]).total_seconds()
        assert 0.9 <= wait <= 2.0, wait
        doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
        assert doc["notifications"]["due"] == event["next_at"] and doc["notifications"]["holder"] is None
        assert step(node) == [], "not due yet"
        node.clock.advance(2)
        assert step(node) == ["delivered"]
    first, second = receiver.received
    assert first.verified and second.verified
    assert first.event_id == second.event_id and first.body == second.body
    metrics = node.metrics.notifications
    assert metrics.labels("retried")._value.get() == 1 and metrics.labels("delivered")._value.get() == 1


def test_a_receiver_that_hangs_costs_one_timeout_then_a_retry(make_node, world, model, real_db):
    with Receiver(SECRET, plan=lambda request: HANG) as receiver:
        node = make_node(receiver.url, timeout=0.3)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        assert step(node) == ["retried"]
    (_, event), = events(real_db, sid)
    assert event["last_error"] == "no answer within 0.3s" and "last_status" not in event
    assert node.metrics.delivery_seconds._sum.get() >= 0.3


def test_a_refused_connection_is_retried(make_node, world, model, real_db):
    with Refusing() as refusing:
        node = make_node(refusing.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        assert step(node) == ["retried"]
    (_, event), = events(real_db, sid)
    assert event["last_error"].startswith("ConnectionRefusedError")


def test_retries_back_off_to_ten_minutes_then_the_event_is_given_up(make_node, world, model, real_db, caplog):
    with Refusing() as refusing:
        node = make_node(refusing.url, max_age=3 * 3600)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        waits = []
        for _ in range(40):
            outcomes = step(node)
            (_, event), = events(real_db, sid)
            if event["state"] == "given_up":  # after its last attempt, or found too old when the breaker let a probe go
                assert outcomes in (["given_up"], [])
                break
            assert outcomes == ["retried"]
            waits.append((event["next_at"] - event["last_attempt_at"]).total_seconds())
            node.clock.advance(waits[-1] + 0.01)
            node.notifier.breaker.probe_at = None  # the breaker's own spacing is tested apart
    assert waits[0] <= 2 and max(waits) <= 600 and max(waits) >= 300
    assert all(later >= earlier / 2 for earlier, later in zip(waits, waits[1:])), waits
    assert event["state"] == "given_up" and event["given_up_at"] and "next_at" not in event
    assert not pending_documents(real_db)
    assert node.metrics.notifications.labels("given_up")._value.get() == 1
    (line,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert line.startswith(sid + ": submission.judged event msg_") and "given up after" in line
    assert step(node) == [], "a given-up event is never sent again"


def test_while_the_receiver_fails_one_probe_at_a_time_goes_through(make_node, world, model, real_db):
    """A receiver that is down costs the database a claim and an outcome per probe, not per event."""
    with Refusing() as refusing:
        node = make_node(refusing.url)
        sids = [world.submit(real_db, "user%d" % n, model(n)) for n in range(6)]
        judge(node, *sids)
        assert step(node) == ["retried"] * 4, "a full pool of threads, then the breaker opens"
        assert step(node) == [], "the breaker holds the rest back"
        node.clock.advance(notify.FIRST_RETRY * 2)  # past the probe, and past the first retries
        writes = node.faults.writes
        assert step(node) == ["retried"], "one probe"
        assert node.faults.writes - writes == 2, "its claim and its outcome"
    untouched = [sid for sid in sids if events(real_db, sid)[0][1]["attempts"] == 0]
    assert len(untouched) == 1, "the other events waited in the database, untouched"


def test_once_the_receiver_answers_everything_waiting_flows(make_node, world, model, real_db):
    down = threading.Event()
    down.set()
    with Receiver(SECRET, plan=lambda request: FAIL if down.is_set() else OK) as receiver:
        node = make_node(receiver.url)
        sids = [world.submit(real_db, "user%d" % n, model(n)) for n in range(6)]
        judge(node, *sids)
        step(node)
        down.clear()
        outcomes = deliver_everything(node)
    assert outcomes.count("delivered") == 6
    assert len(receiver.by_event()) == 6 and all(request.verified for request in receiver.received)


def test_an_event_past_its_age_behind_a_failing_receiver_is_given_up_untried(make_node, world, model, real_db):
    with Refusing() as refusing:
        node = make_node(refusing.url, max_age=3600)
        sids = [world.submit(real_db, "user%d" % n, model(n)) for n in range(6)]
        judge(node, *sids)
        step(node)
        node.clock.advance(3600 + notify.PROBE_CAP)
        step(node)
    states = [events(real_db, sid)[0][1] for sid in sids]
    assert [state["state"] for state in states] == ["given_up"] * 6
    untried = [state for state in states if state["attempts"] == 0]
    assert len(untried) == 2 and all(state["last_error"].startswith("not tried") for state in untried)


# -- leases ---------------------------------------------------------------------------------------
def test_a_delivery_that_lost_its_lease_records_nothing(make_node, world, model, real_db, caplog):
    with Receiver(SECRET) as receiver:
        slow = make_node(receiver.url, pid=1)
        sid = world.submit(real_db, "alice", model(1))
        judge(slow, sid)
        slow.notifier.poll()  # claimed, not yet sent: a thread that is paused
        other = make_node(receiver.url, pid=2)
        assert step(other) == [], "the lease holds"
        other.clock.advance(5 + notify.LEASE_MARGIN + 1)
        assert step(other) == ["delivered"], "the lease expired: another server delivers"
        assert slow.notifier.deliver_next() == "lost"
    assert len(receiver.received) == 2 and receiver.received[0].body == receiver.received[1].body
    (_, event), = events(real_db, sid)
    assert event["attempts"] == 1 and event["state"] == "delivered"
    assert any("the lease was taken over" in record.getMessage() and record.getMessage().startswith(sid)
               for record in caplog.records)


def test_an_event_recorded_during_a_delivery_is_not_lost(make_node, world, model, real_db):
    """A re-judgement lands while the first event is on its way: that delivery's outcome, written from
    a read without the new event, must not be recorded; both end delivered."""
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        node.notifier.poll()
        judge(node, sid)  # the second judgement, while the first event is claimed
        assert node.notifier.deliver_next() == "lost"
        deliver_everything(node)
    assert [event["state"] for _, event in events(real_db, sid)] == ["delivered", "delivered"]
    assert not pending_documents(real_db)


def test_a_stopped_notifier_hands_back_what_it_claimed_and_did_not_send(make_node, world, model, real_db):
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        node.notifier.poll()
        node.pipeline.stop.set()
        node.notifier.poll_loop()  # stopped: returns at once, after handing back
        doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
        assert doc["notifications"]["holder"] is None and doc["notifications"]["due"] <= utcnow()
        assert step(make_node(receiver.url, pid=2)) == ["delivered"], "another server sends it at once"


def test_judging_goes_on_while_every_delivery_thread_hangs(make_node, world, model, real_db):
    """The threads as the server runs them: at most DELIVERY_THREADS requests in flight, the other
    events wait in the database, unclaimed, and judging carries on meanwhile."""
    with Receiver(SECRET, plan=lambda request: HANG) as receiver:
        node = make_node(receiver.url, timeout=60)
        notifier = node.notifier
        threads = [threading.Thread(target=notifier.poll_loop, daemon=True)]
        threads += [threading.Thread(target=notifier.deliver_loop, daemon=True) for _ in range(notifier.threads)]
        for thread in threads:
            thread.start()
        try:
            first = [world.submit(real_db, "user%d" % n, model(n)) for n in range(notifier.threads + 2)]
            judge(node, *first)
            receiver.wait_until(lambda got: len(got) == notifier.threads, 60, "every delivery thread to hang")
            later = [world.submit(real_db, "late%d" % n, model(10 + n)) for n in range(3)]
            judge(node, *later)  # judging while every delivery thread waits for the receiver
            assert all(real_db.submissions.find_one({"_id": ObjectId(sid)})["processing"]["state"] == "done"
                       for sid in first + later)
            waiting = [sid for sid in first + later if events(real_db, sid)[0][1]["attempts"] == 0
                       and real_db.submissions.find_one({"_id": ObjectId(sid)})["notifications"]["holder"] is None]
            assert len(waiting) == len(first + later) - notifier.threads
            assert notifier.work.empty() and notifier.in_flight == notifier.threads
            assert len(receiver.received) == notifier.threads
        finally:
            node.pipeline.stop.set()
            receiver.release()
            for thread in threads:
                thread.join(30)
        assert not any(thread.is_alive() for thread in threads)


def test_a_database_outage_is_one_warning_per_pause_not_one_a_second(make_node, caplog):
    class Away:
        def find(self, *args, **kwargs):
            raise pymongo.errors.AutoReconnect("connection refused")
    with Refusing() as refusing:
        node = make_node(refusing.url)
        node.notifier.outboxes = (notify.Outbox(Away(), str),)
        warned = threading.Event()
        handler = logging.Handler()
        handler.emit = lambda record: "could not read or claim" in record.getMessage() and warned.set()
        notify.log.addHandler(handler)
        thread = threading.Thread(target=node.notifier.poll_loop, daemon=True)
        try:
            thread.start()
            assert warned.wait(30)
        finally:
            node.pipeline.stop.set()
            thread.join(30)
            notify.log.removeHandler(handler)
    lines = [record.getMessage() for record in caplog.records if "could not read or claim" in record.getMessage()]
    assert lines == ["could not read or claim due webhook events (AutoReconnect: connection refused); next try in 10s"]
    assert not thread.is_alive()


# -- round.rescored ------------------------------------------------------------------------------------
def test_a_closed_rescore_posts_round_rescored_and_rejudged_submissions_post_again(make_node, world, model, real_db):
    with Receiver(SECRET) as receiver:
        node = make_node(receiver.url)
        sids = [world.submit(real_db, "user%d" % n, model(n)) for n in range(3)]
        judge(node, *sids)
        run, _ = node.rescorer.request(41)
        node.rescore()
        deliver_everything(node)
    competition = real_db.competitions.find_one({"_id": 41})
    (event_id, event), = events(real_db, 41, "competitions")
    summary = competition["rescores"][-1]
    data = data_of(event)
    assert event["type"] == "round.rescored" and event["state"] == "delivered"
    assert data["run"] == str(run["run"]) and data["competition_id"] == 41
    assert data["submissions"] == summary["submissions"] == 3 and data["changed"] == summary["changed"]
    assert data["rules"] == summary["rules"] and data["closed_at"] == notify.iso(summary["closed_at"])
    for sid in sids:
        recorded = events(real_db, sid)
        assert [e["revision"] for _, e in recorded] == [1, 2]
        assert data_of(recorded[-1][1]) == the_document_says(real_db.submissions.find_one({"_id": ObjectId(sid)}))
    types = sorted(request.payload["type"] for request in receiver.received)
    assert types == ["round.rescored"] + ["submission.judged"] * 6
    assert all(request.verified for request in receiver.received)


# -- what people see -------------------------------------------------------------------------------------
def test_explain_and_the_report_show_each_events_delivery(make_node, world, model, real_db):
    with Receiver(SECRET, plan=lambda request: FAIL if request.number == 0 else OK) as receiver:
        node = make_node(receiver.url)
        sid = world.submit(real_db, "alice", model(1))
        judge(node, sid)
        step(node)
        body = node.client.get("/submissions/%s/explain" % sid, headers={"X-API-Key": API_KEY}).get_json()
        (shown,) = body["notifications"]
        assert shown["state"] == "pending" and shown["attempts"] == 1 and shown["revision"] == 1
        assert shown["last_error"].startswith("HTTP 500") and shown["next_attempt_at"].endswith("Z")
        node.clock.advance(3)
        step(node)
        page = node.client.get("/submissions/%s/report" % sid, auth=("support", API_KEY)).get_data(as_text=True)
    doc = real_db.submissions.find_one({"_id": ObjectId(sid)})
    (shown,) = explain.explanation(doc, public)["notifications"]
    assert shown["state"] == "delivered" and shown["attempts"] == 2 and "last_error" in shown
    assert 'id="notifications"' in page and shown["id"] in page and "delivered" in page


def test_delivery_states_are_oldest_first_and_ignore_what_is_not_an_event():
    now = datetime.datetime(2026, 1, 1)
    doc = {"notifications": {"events": {
        "msg_b": {"type": notify.JUDGED, "recorded_at": now, "state": "pending", "next_at": now, "attempts": 0},
        "msg_a": {"type": notify.JUDGED, "recorded_at": now - datetime.timedelta(1), "state": "delivered",
                  "attempts": 1, "delivered_at": now},
        "msg_c": "not an event"}}}
    states = notify.delivery_states(doc)
    assert [state["id"] for state in states] == ["msg_a", "msg_b"]
    assert states[0]["next_attempt_at"] is None and states[1]["next_attempt_at"] == now
    assert notify.delivery_states({"notifications": "junk"}) == [] and notify.delivery_states({}) == []


# -- metrics -----------------------------------------------------------------------------------------------
def test_counters_and_histogram_are_exported_at_zero():
    text = Metrics().render()[0].decode()
    for outcome in ("delivered", "retried", "given_up"):
        assert 'criteria_notifications_total{outcome="%s"} 0.0' % outcome in text
    assert "criteria_notification_delivery_seconds_count 0.0" in text
    assert "criteria_notifications_pending 0.0" in text
    assert "criteria_notifications_oldest_pending_age_seconds 0.0" in text


def test_the_pending_figures_count_the_whole_database(make_node, world, model, real_db):
    with Refusing() as refusing:
        node = make_node(refusing.url)
        judge(node, *[world.submit(real_db, "user%d" % n, model(n)) for n in range(3)])
        node.clock.advance(90)
        text = node.metrics.render()[0].decode()
    assert "\ncriteria_notifications_pending 3.0\n" in text
    age = float(re.search(r"(?m)^criteria_notifications_oldest_pending_age_seconds (\S+)$", text).group(1))
    assert 90 <= age < 200


# -- signing, apart from a server -------------------------------------------------------------------------
def test_the_signature_is_the_libraries_for_the_same_id_timestamp_and_body():
    import standardwebhooks
    body = b'{"type":"submission.judged"}'
    stamp = int(datetime.datetime.now().timestamp())
    headers = notify.signed_headers(base64.b64decode(SECRET[6:]), "msg_1", body, stamp)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {"type": "submission.judged"}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", headers)


def test_the_log_never_names_the_secret_nor_the_urls_query(make_node, world, model, real_db, caplog):
    caplog.set_level(logging.DEBUG)
    with Receiver(SECRET, plan=lambda request: FAIL if request.number == 0 else OK) as receiver:
        node = make_node(receiver.url)
        judge(node, world.submit(real_db, "alice", model(1)))
        deliver_everything(node)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "webhooks: submission.judged and round.rescored to http://127.0.0.1:%d/hooks/criteria (timeout 5s, " \
           "kept trying for 100 minutes), 4 delivery threads" % receiver.server.server_address[1] in text
    assert SECRET not in text and SECRET[6:] not in text and "query-is-kept" not in text


# -- ./server check ---------------------------------------------------------------------------------------
def check_lines(config):
    from queues import preflight
    return [finding.line() for finding in preflight.each(config, lambda url: mongomock.MongoClient(), None,
                                                          local_database=lambda: "mongodb://127.0.0.1:1")]


def test_check_shows_the_webhook_settings_and_that_the_receiver_answers(tmp_path):
    with Receiver(SECRET) as receiver:
        config = Config(api_key="k", local=True, local_dir=str(tmp_path), port=free_port(), host="127.0.0.1",
                        **webhooks(receiver.url))
        lines = check_lines(config)
    assert lines[-1] == "ok    webhooks: submission.judged and round.rescored to http://127.0.0.1:%d/hooks/criteria " \
                        "(timeout 5s, kept trying for 100 minutes)" % receiver.server.server_address[1]
    assert receiver.received == [], "a connection only: nothing the backend would have to verify"
    assert SECRET not in "".join(lines) and "query-is-kept" not in "".join(lines)


def test_check_fails_when_the_receiver_does_not_answer(tmp_path):
    with Refusing() as refusing:
        config = Config(api_key="k", local=True, local_dir=str(tmp_path), port=free_port(), host="127.0.0.1",
                        **webhooks(refusing.url, max_age=3 * 24 * 3600))
        line = check_lines(config)[-1]
    assert line.startswith("FAIL  webhooks: submission.judged and round.rescored to %s (timeout 5s, kept trying for "
                           "3 days): cannot connect to 127.0.0.1:" % refusing.url)
    assert line.endswith("(ConnectionRefusedError: Connection refused); until it answers, events wait in MongoDB, "
                         "and each is given up 3 days after it was recorded")


def test_check_says_nothing_of_webhooks_when_they_are_off(tmp_path):
    config = Config(api_key="k", local=True, local_dir=str(tmp_path), port=free_port(), host="127.0.0.1")
    assert not any("webhooks" in line for line in check_lines(config))


# -- settings ----------------------------------------------------------------------------------------------
@pytest.fixture
def env():
    return {"MONGO_URL": "mongodb://db:27017", "MONGO_DB_NAME": "numerai", "S3_UPLOAD_BUCKET": "u",
            "S3_DATASET_BUCKET": "d", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s", "API_KEY": "k"}


def test_webhooks_are_off_unless_a_url_is_set(env):
    config = from_env(env)
    assert config.notify_url == "" and config.notify_timeout == 10 and config.notify_max_age == 3 * 24 * 3600


def test_the_settings_are_read(env):
    env.update(NOTIFY_URL="https://backend.internal/hooks", NOTIFY_SECRET=SECRET, NOTIFY_TIMEOUT="2.5",
               NOTIFY_MAX_AGE="3600")
    config = from_env(env)
    assert (config.notify_url, config.notify_secret, config.notify_timeout, config.notify_max_age) == (
        "https://backend.internal/hooks", SECRET, 2.5, 3600)
    assert SECRET not in repr(config) and "backend.internal" not in repr(config)


def test_an_unpadded_secret_is_accepted_as_the_library_accepts_it(env):
    unpadded = "whsec_" + base64.b64encode(os.urandom(31)).decode().rstrip("=")
    env.update(NOTIFY_URL="http://127.0.0.1:8080/", NOTIFY_SECRET=unpadded)
    assert from_env(env).notify_secret == unpadded


@pytest.mark.parametrize("secret, url, problem", [
    ("", "https://b/h", "NOTIFY_SECRET is required when NOTIFY_URL is set: whsec_ followed by the base64"),
    ("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "https://b/h", "NOTIFY_SECRET is not a webhook secret: whsec_"),
    ("whsec_not base64!", "https://b/h", "NOTIFY_SECRET is not a webhook secret"),
    ("whsec_c2hvcnQ=", "", "NOTIFY_SECRET is not a webhook secret"),  # 5 bytes: too short a key
    (SECRET, "backend.internal/hooks", "NOTIFY_URL must be an http:// or https:// URL with a host"),
    (SECRET, "ftp://backend.internal/hooks", "NOTIFY_URL must be an http:// or https:// URL with a host"),
    (SECRET, "https://user:password@backend.internal/hooks", "NOTIFY_URL must not hold a user or password"),
    (SECRET, "https://backend.internal:99999/hooks", "NOTIFY_URL has a port that is not a number from 1 to 65535"),
])
def test_a_setting_that_cannot_work_is_named_without_its_value(env, secret, url, problem):
    env.update(NOTIFY_URL=url, NOTIFY_SECRET=secret)
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    (found,) = raised.value.problems
    assert found.startswith(problem), found
    assert not secret[6:] or secret[6:] not in found
    assert "password@" not in found


def test_every_webhook_problem_is_named_at_once_with_the_others(env):
    env.update(NOTIFY_URL="backend", NOTIFY_TIMEOUT="0", NOTIFY_MAX_AGE="forever", PORT="http")
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    assert [problem.split()[0].split("=")[0] for problem in raised.value.problems] == [
        "PORT", "NOTIFY_URL", "NOTIFY_SECRET", "NOTIFY_TIMEOUT", "NOTIFY_MAX_AGE"]
    assert "NOTIFY_TIMEOUT='0' must be a positive number up to 300" in raised.value.problems


def test_local_mode_reads_the_webhook_settings_too(tmp_path):
    config = from_env({"NOTIFY_URL": "http://127.0.0.1:9/h", "NOTIFY_SECRET": SECRET}, use_local=True,
                      local_dir=str(tmp_path))
    assert config.notify_url == "http://127.0.0.1:9/h"
