"""Intake and status: POST / records a submission as queued; GET /submissions/<id> shows where it is."""
import logging
import threading
import time

from flask import Blueprint, Response, jsonify, request

from queues.http.answers import RETRY_AFTER, Refused, public
from queues.http.bodies import (parse_id, parse_round, parse_user, read_body, refuse_other_owner, refuse_other_round,
                                wait_seconds)
from queues.http.keys import IN_BODY, IN_HEADER, authenticate
from queues.intake import Acceptor
from queues.pipeline import DISPATCH, Job

log = logging.getLogger(__name__)

#: A waiting GET reads the document this often.
WAIT_POLL = 0.5
UNSETTLED = ("queued", "scoring")
#: POST /'s 202, as jsonify writes it: the same three fields every time, and an id that
#: parse_id let through only as 24 lower-case hex digits, so nothing needs escaping.
ACCEPTED = '{"duplicate":%s,"status":"queued","submission_id":"%s"}\n'


def accepted(submission_id, duplicate):
    """POST /'s answer, formatted from ACCEPTED: jsonify's encoder and keyword handling
    cost 20 us, about 4% of a whole request, on the path the intake serves most."""
    return Response(ACCEPTED % ("true" if duplicate else "false", submission_id), status=202,
                    mimetype="application/json")


def settled(doc):
    """True once judging is over (done or failed), or when the submission was never accepted."""
    processing = doc.get("processing")
    return (processing.get("state") if isinstance(processing, dict) else None) not in UNSETTLED


class Waits:
    """Requests waiting for a submission to settle, at most ``limit`` at once.

    Each waits on a thread of the HTTP server's pool; the limit keeps waits
    from taking them all. ``stop`` (set when the server stops) ends every wait.
    """

    def __init__(self, limit, stop, gauge=None):
        self.limit = limit
        self.stop = stop
        self.gauge = gauge  # how many wait now, for /metrics
        self._slots = threading.BoundedSemaphore(limit)

    def until_settled(self, doc, read, seconds):
        """``doc`` once settled, read again every WAIT_POLL, for up to ``seconds``.

        Waiting takes a slot only when there is something to wait for;
        Refused(429) when every slot is taken.
        """
        if seconds <= 0 or doc is None or settled(doc):
            return doc
        if not self._slots.acquire(blocking=False):
            raise Refused(429, "too many requests are waiting for submissions to be judged (limit %d, half of "
                               "HTTP_THREADS); ask again without wait, or retry in %d seconds"
                          % (self.limit, RETRY_AFTER), **{"Retry-After": str(RETRY_AFTER)})
        if self.gauge is not None:
            self.gauge.inc()
        try:
            deadline = time.monotonic() + seconds
            while doc is not None and not settled(doc):
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.wait(min(WAIT_POLL, left)):
                    break
                doc = read()
            return doc
        finally:
            if self.gauge is not None:
                self.gauge.dec()
            self._slots.release()


def summary(doc):
    """What GET /submissions/<id> shows of a submission."""
    fields = ("username", "competition_id", "created", "consistency", "validationLogloss", "concordant", "original")
    body = {"submission_id": str(doc["_id"])}
    body.update({field: public(doc.get(field)) for field in fields})
    processing = public(doc.get("processing") if isinstance(doc.get("processing"), dict) else {})
    for internal in ("lease", "board", "fence", "dispatched", "settled_by", "rev"):  # the service's own bookkeeping
        processing.pop(internal, None)
    body["status"] = processing.pop("state", None)
    if body["status"] != "failed":  # a re-POSTed failure's error stays until it is kept in history
        processing["error"] = None
    body["processing"] = processing
    return body


def submissions_blueprint(store, pipeline, config, metrics):
    """POST / and GET /submissions/<id> over ``store`` and ``pipeline``."""
    blueprint = Blueprint("submissions", __name__)
    acceptor = Acceptor(store)
    waits = Waits(config.http_threads // 2, pipeline.stop, metrics.waiting)  # one thread: no waiting

    @blueprint.post("/")
    def submit():
        with pipeline.intake:  # judging gives way to POSTs in progress; GETs (pollers) do not hold it up
            return take(read_body())

    def take(body):
        """Check a POST / body, record its submission as queued (unless it is already), answer 202."""
        authenticate(config, IN_BODY, body)
        submission_id = parse_id(body.get("submission_id"))
        user = parse_user(body)
        competition_id = parse_round(body.get("competition_id"))
        if competition_id is not None or user is not None:  # only then is the document read first
            doc = store.get(submission_id)
            if doc is None:
                raise Refused(404, "no submission with id %s" % submission_id)
            if user is not None:
                refuse_other_owner(doc, submission_id, user)
            if competition_id is not None:
                refuse_other_round(doc, submission_id, competition_id)
        # A repeat of a submission this process already holds needs no round trip:
        # the request that queued it recorded that durably, and a worker forgets
        # an id only after its final write (or accepts it again if the backend rewrote it).
        outcome, token = ("already", None) if pipeline.anywhere(submission_id) else acceptor.accept(submission_id)
        if outcome == "missing":
            raise Refused(404, "no submission with id %s" % submission_id)
        if outcome == "queued":
            pipeline.put(DISPATCH, Job(submission_id, token=token))
            log.info("%s: accepted", submission_id)
        else:
            log.info("%s: already queued; not queued again", submission_id)
        return accepted(submission_id, duplicate=outcome == "already")

    @blueprint.get("/submissions/<submission_id>")
    def show(submission_id):
        authenticate(config, IN_HEADER)
        submission_id = parse_id(submission_id)
        seconds = wait_seconds(request.args.get("wait"))
        doc = waits.until_settled(store.get(submission_id), lambda: store.get(submission_id), seconds)
        if doc is None:
            raise Refused(404, "no submission with id %s" % submission_id)
        return jsonify(summary(doc))

    return blueprint
