"""Webhooks to the tournament backend: durable, signed, delivered at least once.

The backend is told every time a submission settles (``submission.judged``)
and every time a re-score run closes (``round.rescored``), in the form of
the Standard Webhooks specification (standardwebhooks.com), so that it can
verify each request with that specification's libraries.

Built on the record, not beside it:

- **Recorded in the settling write.** :class:`Recorder` adds the event to
  the fields of the very ``update_one`` that settles a submission
  (:meth:`queues.store.Store.judged` and ``failed``) or closes a re-score
  run (``Competitions.close_run``): no crash can settle without its event, or
  record an event for a write that did not happen. The event's id and
  body are fixed there, so every retry sends the same bytes.
- **Kept in the document.** A document's events live in its
  ``notifications`` field (the layout is in docs/design.md):
  ``events`` by id, each with its delivery state; ``due``, when the next
  attempt is due, indexed, and absent when nothing waits, so finding due
  work is one range read of an index; ``token``, which every write of
  the notifications changes; ``holder``, the process delivering now.
- **Claimed like other work.** A due document is claimed by one
  conditional update on its ``_id`` and the token it was read with; the
  claim gives it a fresh token and moves ``due`` to the end of the
  delivery's lease. The attempt's outcome (delivered, retried or given
  up) is one more conditional write on that token: a delivery whose
  lease was taken over (it outlived its lease, or a new event arrived)
  records nothing, and the event is delivered again. A server killed
  mid-delivery leaves the lease to expire; any server (itself after a
  restart) then claims the event again.
- **Never in judging's way.** Deliveries run on threads of their own
  (:data:`DELIVERY_THREADS` at most in flight), each bounded by
  ``NOTIFY_TIMEOUT``. While the receiver fails, a :class:`Breaker` lets
  only one probe at a time through, spaced out like the retries, so a
  receiver that is down for hours costs the database a write or two a
  minute, not a write per event per retry; pending events wait in
  MongoDB meanwhile, not in memory.
"""
import base64
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import json
import logging
import math
import queue
import random
import socket
import ssl
import threading
import time
import urllib.parse

import pymongo.errors
from bson import ObjectId

from queues.config import secret_key
from queues.fields import shown
from queues.store import FAILED, utcnow

log = logging.getLogger(__name__)

JUDGED, RESCORED = "submission.judged", "round.rescored"
PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "given_up"
#: Deliveries in flight at once, each on a thread of its own.
DELIVERY_THREADS = 4
#: How often the outboxes are read when nothing wakes the poller sooner (a settle in this process does).
POLL_SECONDS = 1.0
#: A delivery's lease: NOTIFY_TIMEOUT plus this, for the claim, the wait for a thread and the outcome's write.
LEASE_MARGIN = 5.0
#: Retries: the first within FIRST_RETRY seconds, each wait about double the last, at most RETRY_CAP; jittered.
FIRST_RETRY = 2.0
RETRY_CAP = 600.0
#: While the receiver fails, the probes are spaced the same way, at most this far apart.
PROBE_CAP = 60.0
#: Due documents a probe reads; events among them older than NOTIFY_MAX_AGE are given up on the way.
PROBE_BATCH = 20
#: The pending-events figures are read from the database at most this often (they are read at a scrape).
FIGURES_SECONDS = 5.0
#: How much of a failed answer's body goes into the event's last error.
ANSWER_SNIPPET = 200
#: How often an idle loop looks at the stop flag.
STOP_POLL = 0.5
#: How long the poller waits after the database failed it (one warning each time, not one a second).
OUTAGE_PAUSE = 10.0


# -- events -----------------------------------------------------------------------------
def iso(moment):
    """A stored (naive UTC) time as the events write it: ISO 8601, milliseconds, Z."""
    return moment.isoformat(timespec="milliseconds") + "Z"


def plain(value):
    """A document value as JSON can carry it: finite numbers, text, true/false, null; ids and
    times as text; anything else as its text (the backend may have written anything)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime.datetime):
        return iso(value)
    return str(value)


def number(value):
    """A score as the event carries it: a finite number, else null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def verdict_value(found):
    """A check's verdict in an event: true or false when reached, else null."""
    if isinstance(found, dict) and found.get("pending") is False and isinstance(found.get("value"), bool):
        return found["value"]
    return None


def new_event(event_type, now, data, revision=None):
    """``(id, event)``: an event as stored, its body (the exact bytes every attempt sends) fixed now."""
    event_id = "msg_%s" % ObjectId()
    body = json.dumps({"type": event_type, "timestamp": iso(now), "data": data}, separators=(",", ":"),
                      sort_keys=True, allow_nan=False)
    event = {"type": event_type, "recorded_at": now, "body": body, "state": PENDING, "attempts": 0, "next_at": now}
    if revision is not None:
        event["revision"] = revision
    return event_id, event


def recording(event_id, event, now):
    """The ``$set`` fields that add an event: it, due now, and a new token.

    The new token also takes the lease from a delivery of an older event
    in flight: its outcome, written from a read that lacks this event,
    would otherwise compute ``due`` without it.
    """
    return {"notifications.events.%s" % event_id: event, "notifications.due": now,
            "notifications.token": ObjectId(), "notifications.holder": None}


def judged_data(doc, fields, revision):
    """``submission.judged``'s data: the document as the settling write leaves it (``doc`` read
    under the claim, ``fields`` what the write sets)."""
    def after(name):
        return fields[name] if name in fields else doc.get(name)
    data = {"submission_id": str(doc["_id"]), "competition_id": plain(doc.get("competition_id")),
            "username": plain(doc.get("username")), "status": fields["processing.state"],
            "consistency": number(after("consistency")), "validationLogloss": number(after("validationLogloss")),
            "concordant": verdict_value(after("concordant")), "original": verdict_value(after("original")),
            "judged_at": iso(fields["processing.finished_at"]), "revision": revision}
    if fields["processing.state"] == FAILED:
        data["error"] = plain(fields.get("processing.error"))
    return data


def rescored_data(competition_id, summary):
    """``round.rescored``'s data: the run, the round, its counts and its rules."""
    data = {key: plain(summary.get(key)) for key in ("only", "requested_at", "requested_by", "closed_at", "closed_by",
                                                      "submissions", "changed", "rules", "rules_used")}
    data.update(run=str(summary["run"]), competition_id=int(competition_id))
    return data


class Recorder:
    """What the store's settling writes add: the event, in the same update (see :mod:`queues.store`)."""

    def __init__(self):
        self.recorded = threading.Event()  # wakes the poller once a write with an event has landed

    def judged(self, doc, fields, now):
        """Fields recording ``submission.judged`` for the submission ``doc`` settling with ``fields``.

        The revision counts the submission's judgements: one more than the
        last event's, read under the claim (only a claim settles, so no
        other judgement can come between). A ``notifications`` that is not
        ours to extend (not an object, or events that are not one) would
        make the settling write fail, and the submission never settle: it
        is the service's own field, so it is replaced whole.
        """
        notes = doc.get("notifications")
        usable = isinstance(notes, dict) and isinstance(notes.get("events", {}), dict)
        previous = notes.get("revision") if usable else None
        revision = (previous if isinstance(previous, int) and not isinstance(previous, bool) else 0) + 1
        event_id, event = new_event(JUDGED, now, judged_data(doc, fields, revision), revision)
        if "notifications" in doc and not usable:
            log.warning("%s: notifications was %s, not the service's events; replaced by the new event's",
                        doc["_id"], shown(notes))
            return {"notifications": {"events": {event_id: event}, "due": now, "token": ObjectId(), "holder": None,
                                      "revision": revision}}
        return dict(recording(event_id, event, now), **{"notifications.revision": revision})

    def rescored(self, competition_id, summary, now):
        """Fields recording ``round.rescored`` on the round's document, with the close of its run."""
        event_id, event = new_event(RESCORED, now, rescored_data(competition_id, summary))
        return recording(event_id, event, now)

    def wake(self):
        """A write with an event landed: deliver it now rather than at the next poll."""
        self.recorded.set()


# -- signing and sending ------------------------------------------------------------------
def signed_headers(key, event_id, body, timestamp):
    """The request's headers: Standard Webhooks' ``v1`` HMAC-SHA256 of ``id.timestamp.body``."""
    signed = hmac.new(key, b"%s.%d.%s" % (event_id.encode(), timestamp, body), hashlib.sha256).digest()
    return {"Content-Type": "application/json", "User-Agent": "submission-criteria", "Connection": "close",
            "webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(signed).decode()}


def where(url):
    """The receiver as the log names it: scheme, host, port and path; never a query, which may hold a token."""
    parts = urllib.parse.urlsplit(url)
    return "%s://%s%s" % (parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/")


class Cutoff:
    """Ends a request at its deadline, however the receiver drips its answer.

    A socket timeout bounds each read; this bounds the whole request, so a
    receiver that hangs costs a delivery thread at most ``NOTIFY_TIMEOUT``.
    """

    def __init__(self, connection, seconds):
        self.connection = connection
        self.fired = False
        self.timer = threading.Timer(seconds, self.cut)
        self.timer.daemon = True

    def cut(self):
        self.fired = True
        sock = self.connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc_info):
        self.timer.cancel()


def post(url, body, headers, timeout):
    """POST ``body`` to ``url``: ``(status, None)`` when the receiver answered, ``(None, why)`` when it
    did not answer within ``timeout`` seconds in all, or could not be reached."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    cutoff = Cutoff(connection, timeout)
    try:
        with cutoff:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            snippet = b"" if 200 <= response.status < 300 else response.read(ANSWER_SNIPPET)
        if 200 <= response.status < 300:
            return response.status, None
        text = " ".join(snippet.decode("utf-8", "replace").split())
        return response.status, "HTTP %d %s%s" % (response.status, response.reason, ": " + text if text else "")
    except (OSError, http.client.HTTPException) as exc:
        if cutoff.fired or isinstance(exc, TimeoutError):
            return None, "no answer within %gs" % timeout
        return None, "%s: %s" % (type(exc).__name__, exc)
    finally:
        connection.close()


def retry_wait(attempts, cap=RETRY_CAP):
    """Seconds before the next try after ``attempts`` failed ones: about double each time, jittered, capped."""
    return min(cap, FIRST_RETRY * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)


# -- the outboxes: documents with events -----------------------------------------------------
def events_of(doc):
    """A document's events by id (only well-formed ones)."""
    notes = doc.get("notifications")
    events = notes.get("events") if isinstance(notes, dict) else None
    if not isinstance(events, dict):
        return {}
    return {event_id: event for event_id, event in events.items() if isinstance(event, dict)}


def next_due(events):
    """When the first pending event is due, or None when none waits."""
    times = [event.get("next_at") or datetime.datetime.min for event in events.values() if event.get("state") == PENDING]
    return min(times) if times else None


def choose(events, now):
    """``(id, event)`` of the pending event to deliver first (due the earliest), or None when none is due."""
    due = [(event.get("next_at") or datetime.datetime.min, event.get("recorded_at") or datetime.datetime.min, event_id)
           for event_id, event in events.items() if event.get("state") == PENDING]
    due = [entry for entry in due if entry[0] <= now]
    if not due:
        return None
    event_id = min(due)[2]
    return event_id, events[event_id]


class Outbox:
    """The events waiting in one collection's documents, and the conditional writes that deliver them.

    ``subject`` names a document in the log: a submission by its id, a
    round as ``round 41``.
    """

    def __init__(self, collection, subject):
        self.collection = collection
        self.subject = subject

    def due(self, now, limit):
        """Documents with an event due, the longest due first (one range read of the ``due`` index)."""
        return list(self.collection.find({"notifications.due": {"$lte": now}}, {"notifications": 1})
                    .sort("notifications.due", 1).limit(limit))

    def waiting(self):
        """Every document with an event waiting, with its events (for the pending figures)."""
        return self.collection.find({"notifications.due": {"$exists": True}}, {"notifications.events": 1})

    def claim(self, doc, until, owner):
        """Lease the document's events to ``owner`` until ``until`` if they are as ``doc`` read them;
        the lease's token, or None when they changed meanwhile."""
        token = ObjectId()
        seen = doc["notifications"].get("token")
        claimed = self.collection.update_one(
            {"_id": doc["_id"], "notifications.token": seen},
            {"$set": {"notifications.token": token, "notifications.holder": owner, "notifications.due": until}})
        return token if claimed.matched_count else None

    def write(self, doc_id, token, events, event_id=None, changes=None):
        """One conditional write under ``token``: the event's ``changes``, ``due`` from every event's
        state after them, a new token, no holder. True when the token still held."""
        events = {key: dict(event) for key, event in events.items()}
        sets = {"notifications.token": ObjectId(), "notifications.holder": None}
        unset = {}
        if event_id is not None:
            for field, value in changes.items():
                events[event_id][field] = value
                if value is None:
                    unset["notifications.events.%s.%s" % (event_id, field)] = ""
                else:
                    sets["notifications.events.%s.%s" % (event_id, field)] = value
        due = next_due(events)
        if due is None:
            unset["notifications.due"] = ""
        else:
            sets["notifications.due"] = due
        update = {"$set": sets}
        if unset:
            update["$unset"] = unset
        return bool(self.collection.update_one({"_id": doc_id, "notifications.token": token}, update).matched_count)

    def ensure_index(self):
        """The sparse index the due read and the pending figures ride on."""
        self.collection.create_index([("notifications.due", 1)], sparse=True)


@dataclasses.dataclass
class Delivery:
    """One claimed event on its way: where it lives, the lease's token and the events as claimed."""

    outbox: Outbox
    doc_id: object
    event_id: str
    token: ObjectId
    events: dict
    probe: bool = False  # sent to see whether a failing receiver answers again

    @property
    def event(self):
        return self.events[self.event_id]

    @property
    def subject(self):
        return self.outbox.subject(self.doc_id)


class Breaker:
    """Whether the receiver answers: after a failed attempt, one probe at a time, spaced like the retries."""

    def __init__(self):
        self.failures = 0
        self.probe_at = None
        self._lock = threading.Lock()

    def failed(self, now, probe):
        """A failed attempt: the first opens the breaker, each failed probe spaces the next one further.
        Attempts that were in flight when it opened add nothing: they saw the same outage."""
        with self._lock:
            if self.failures and not probe:
                return
            self.failures += 1
            self.probe_at = now + datetime.timedelta(seconds=retry_wait(self.failures, PROBE_CAP))

    def succeeded(self):
        with self._lock:
            self.failures = 0
            self.probe_at = None

    @property
    def open(self):
        return self.failures > 0

    def wait(self, now):
        """Seconds until the next probe may go (0 when it may go now, or the breaker is closed)."""
        probe_at = self.probe_at
        return 0.0 if probe_at is None else max(0.0, (probe_at - now).total_seconds())


# -- the notifier: claiming, delivering, recording the outcome -----------------------------------
class Notifier:
    """Finds due events in the submissions' and rounds' documents and delivers them.

    ``poll_loop`` (one thread) claims due events while delivery threads are
    free and the breaker allows; ``deliver_loop`` (``threads`` of them)
    sends each and writes its outcome. ``clock`` gives the time the
    schedule is kept in (naive UTC, as stored); the signature's timestamp
    is always the wall clock's, as the receiver checks it.
    """

    def __init__(self, config, store, metrics, stop, threads=DELIVERY_THREADS, clock=utcnow):
        self.url = config.notify_url
        self.key = secret_key(config.notify_secret)
        self.timeout = config.notify_timeout
        self.max_age = datetime.timedelta(seconds=config.notify_max_age)
        self.lease = datetime.timedelta(seconds=config.notify_timeout + LEASE_MARGIN)
        self.owner = store.owner
        self.metrics = metrics
        self.stop = stop
        self.threads = threads
        self.clock = clock
        self.outboxes = (Outbox(store.db.competitions, "round {}".format), Outbox(store.submissions, str))
        self.recorder = Recorder()
        self.breaker = Breaker()
        self.work = queue.Queue()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._figures = (None, (0, 0.0))  # (when read, (pending events, oldest age in seconds))

    @property
    def wake(self):
        return self.recorder.recorded

    def ensure_indexes(self):
        for outbox in self.outboxes:
            outbox.ensure_index()

    # -- claiming ----------------------------------------------------------------------------
    def poll(self):
        """Claim what is due, as far as free threads and the breaker allow; seconds until the next poll.

        A delivery that ends wakes the poller, so waiting for a free thread
        costs nothing.
        """
        now = self.clock()
        if self.breaker.open:
            wait = self.breaker.wait(now)
            if self.in_flight or wait > 0:
                return wait or POLL_SECONDS
            self.probe(now)
            return POLL_SECONDS
        for outbox in self.outboxes:
            free = self.threads - self.in_flight
            if free <= 0:
                break
            for doc in outbox.due(now, free):
                self.claim(outbox, doc, now)
        return POLL_SECONDS

    def probe(self, now):
        """While the receiver fails: claim one event to try it, giving up on the way any too old to wait."""
        for outbox in self.outboxes:
            for doc in outbox.due(now, PROBE_BATCH):
                chosen = choose(events_of(doc), now)
                if chosen is not None and now - (chosen[1].get("recorded_at") or now) >= self.max_age:
                    self.give_up_untried(outbox, doc, chosen[0], now)
                elif self.claim(outbox, doc, now, probe=True):
                    return True
        return False

    def claim(self, outbox, doc, now, probe=False):
        """Lease ``doc``'s first due event and queue it for a delivery thread; True when it was claimed."""
        events = events_of(doc)
        chosen = choose(events, now)
        token = outbox.claim(doc, now + self.lease, self.owner)
        if token is None:
            return False  # another server claimed it, or an event arrived: the next poll reads it again
        if chosen is None:  # nothing pending is due after all (a document edited by hand): put due right
            outbox.write(doc["_id"], token, events)
            return False
        with self._lock:
            self.in_flight += 1
        self.work.put(Delivery(outbox, doc["_id"], chosen[0], token, events, probe))
        return True

    def give_up_untried(self, outbox, doc, event_id, now):
        """Give up an event older than NOTIFY_MAX_AGE that waited behind a failing receiver (one write)."""
        events = events_of(doc)
        event = events[event_id]
        error = event.get("last_error") or "not tried: the receiver failed every delivery since it was recorded"
        changes = {"state": GIVEN_UP, "given_up_at": now, "next_at": None, "last_error": error}
        if outbox.write(doc["_id"], doc["notifications"].get("token"), events, event_id, changes):
            self.given_up(outbox.subject(doc["_id"]), event_id, event, error)

    def given_up(self, subject, event_id, event, error):
        """Count and log an event given up: the backend will not hear of it from us."""
        self.metrics.notification("given_up")
        log.error("%s: %s event %s given up after %d attempt%s since %s, NOTIFY_MAX_AGE (%s) having passed; last "
                  "error: %s. The backend can read the verdict from the document", subject, event.get("type"), event_id,
                  event.get("attempts") or 0, "" if event.get("attempts") == 1 else "s",
                  iso(event["recorded_at"]) if event.get("recorded_at") else "?",
                  duration(self.max_age.total_seconds()), error)

    # -- delivering --------------------------------------------------------------------------
    def deliver(self, delivery):
        """Send one claimed event and write the outcome (one conditional write); returns the outcome.

        ``delivered`` on a 2xx answer; else ``retried`` (next try after
        :func:`retry_wait`) or, once NOTIFY_MAX_AGE has passed since it was
        recorded, ``given_up``; ``lost`` when the lease was taken over
        meanwhile, so another attempt records the outcome instead.
        """
        event = delivery.event
        body = event["body"].encode()
        started = time.monotonic()
        status, error = post(self.url, body, signed_headers(self.key, delivery.event_id, body, int(time.time())),
                             self.timeout)
        self.metrics.delivery_timed(time.monotonic() - started)
        now = self.clock()
        attempts = (event.get("attempts") or 0) + 1
        changes = {"attempts": attempts, "last_attempt_at": now, "last_status": status, "last_error": error}
        if error is None:
            outcome = "delivered"
            changes.update(state=DELIVERED, delivered_at=now, next_at=None)
            self.breaker.succeeded()
        else:
            self.breaker.failed(now, delivery.probe)
            if now - (event.get("recorded_at") or now) >= self.max_age:
                outcome = "given_up"
                changes.update(state=GIVEN_UP, given_up_at=now, next_at=None)
            else:
                outcome = "retried"
                changes["next_at"] = now + datetime.timedelta(seconds=retry_wait(attempts))
        if not delivery.outbox.write(delivery.doc_id, delivery.token, delivery.events, delivery.event_id, changes):
            log.warning("%s: %s event %s: the lease was taken over during attempt %d (it outlived its lease, or a newer "
                        "event arrived); this attempt's outcome (%s) is not recorded and the event is sent again",
                        delivery.subject, event.get("type"), delivery.event_id, attempts, error or "delivered")
            return "lost"
        self.recorded(delivery, outcome, dict(event, **changes), now)
        return outcome

    def recorded(self, delivery, outcome, event, now):
        """Count and log an outcome once it is written."""
        subject, kind = delivery.subject, event.get("type")
        if outcome == "given_up":
            self.given_up(subject, delivery.event_id, event, event["last_error"])
            return
        self.metrics.notification(outcome)
        if outcome == "delivered":
            log.info("%s: %s event %s delivered (attempt %d, HTTP %s)", subject, kind, delivery.event_id,
                     event["attempts"], event["last_status"])
        else:
            log.warning("%s: %s event %s not delivered (attempt %d: %s); next try in %.1fs", subject, kind,
                        delivery.event_id, event["attempts"], event["last_error"],
                        (event["next_at"] - now).total_seconds())

    def release(self, delivery):
        """Hand a claimed, unsent event back (stopping): due again at once, for any server."""
        if delivery.outbox.write(delivery.doc_id, delivery.token, delivery.events):
            log.info("%s: %s event %s handed back unsent", delivery.subject, delivery.event.get("type"),
                     delivery.event_id)

    # -- the loops -------------------------------------------------------------------------------
    def poll_loop(self):
        """Claim due events until stopped; then hand back those claimed but not yet sent."""
        while not self.stop.is_set():
            self.wake.clear()  # before reading: a write landing meanwhile wakes the next wait at once
            try:
                pause = self.poll()
            except Exception as exc:  # the database may be away: the events wait in it
                log.warning("could not read or claim due webhook events (%s: %s); next try in %.0fs",
                            type(exc).__name__, exc, OUTAGE_PAUSE)
                pause = OUTAGE_PAUSE
            deadline = time.monotonic() + pause
            while not self.stop.is_set() and not self.wake.wait(min(STOP_POLL, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
        self.hand_back()

    def hand_back(self):
        """Release every claimed event no delivery thread has taken."""
        while True:
            try:
                delivery = self.work.get_nowait()
            except queue.Empty:
                return
            try:
                self.release(delivery)
            except pymongo.errors.PyMongoError as exc:
                log.warning("%s: could not hand back webhook event %s (%s); its lease expires in %.0fs", delivery.subject,
                            delivery.event_id, type(exc).__name__, self.lease.total_seconds())

    def deliver_loop(self):
        """Deliver claimed events until stopped."""
        while not self.stop.is_set():
            self.deliver_next(STOP_POLL)

    def deliver_next(self, wait=0.0):
        """Deliver one claimed event, waiting up to ``wait`` seconds for one; its outcome, or None when
        none came. One that fails unexpectedly is left to its lease."""
        try:
            delivery = self.work.get(timeout=wait) if wait else self.work.get_nowait()
        except queue.Empty:
            return None
        try:
            return self.deliver(delivery)
        except Exception as exc:  # the database may be away: the lease expires and the event is sent again
            log.warning("%s: could not record the delivery of webhook event %s (%s: %s); it is sent again once "
                        "its lease expires", delivery.subject, delivery.event_id, type(exc).__name__, exc)
            return "deferred"
        finally:
            with self._lock:
                self.in_flight -= 1
            self.wake.set()

    # -- figures -----------------------------------------------------------------------------------
    def pending_figures(self):
        """``(pending events, age in seconds of the oldest)`` across the database, read at most every
        FIGURES_SECONDS; the last figures when the database does not answer."""
        with self._lock:
            read_at, figures = self._figures
            if read_at is not None and time.monotonic() - read_at < FIGURES_SECONDS:
                return figures
        now = self.clock()
        try:
            pending = [event for outbox in self.outboxes for doc in outbox.waiting()
                       for event in events_of(doc).values() if event.get("state") == PENDING]
        except pymongo.errors.PyMongoError as exc:
            log.warning("could not count the pending webhook events (%s); the metrics show the last count",
                        type(exc).__name__)
            return figures
        oldest = min((event.get("recorded_at") or now for event in pending), default=now)
        figures = (len(pending), max(0.0, (now - oldest).total_seconds()))
        with self._lock:
            self._figures = (time.monotonic(), figures)
        return figures


def describe(config):
    """The webhook settings in one line, for the start-up log and ``./server check`` (never the secret)."""
    return "submission.judged and round.rescored to %s (timeout %gs, kept trying for %s)" % (
        where(config.notify_url), config.notify_timeout, duration(config.notify_max_age))


def duration(seconds):
    """``3 days``, ``2 hours``, ``90 s``: a setting's length as a person says it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return "%d %s%s" % (count, unit, "" if count == 1 else "s")
    return "%g s" % seconds


def delivery_states(doc):
    """Each webhook event of a document and how its delivery stands, oldest first (/explain, the report)."""
    states = []
    for event_id, event in events_of(doc).items():
        state = event.get("state")
        states.append({"id": event_id, "type": event.get("type"), "revision": event.get("revision"), "state": state,
                       "attempts": event.get("attempts"), "recorded_at": event.get("recorded_at"),
                       "last_attempt_at": event.get("last_attempt_at"),
                       "next_attempt_at": event.get("next_at") if state == PENDING else None,
                       "delivered_at": event.get("delivered_at"), "given_up_at": event.get("given_up_at"),
                       "last_error": event.get("last_error")})
    return sorted(states, key=lambda entry: (entry["recorded_at"] or datetime.datetime.min, entry["id"]))


def attach(config, store, competitions, metrics, supervisor, stop):
    """Webhooks for this process when NOTIFY_URL is set: the store and the competitions record events in
    their settling and closing writes, and the supervisor runs the poller and the delivery threads.
    Returns the Notifier, or None."""
    if not config.notify_url:
        return None
    notifier = Notifier(config, store, metrics, stop)
    store.notify = competitions.notify = notifier.recorder
    supervisor.add("notify", notifier.poll_loop)
    for number in range(notifier.threads):
        supervisor.add("notify-%d" % number, notifier.deliver_loop)
    metrics.watch_notifications(notifier.pending_figures)
    log.info("webhooks: %s, %d delivery threads", describe(config), notifier.threads)
    return notifier
