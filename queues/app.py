"""The HTTP intake: a Flask app built by :func:`create_app` from its collaborators.

The tournament backend is a machine client, so every answer is JSON with
a status code it can act on; the API key is compared in constant time
and never logged or echoed.
"""
import datetime
import hmac
import json
import logging

import pymongo.errors
from bson import ObjectId
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from queues import explain
from queues.intake import Acceptor
from queues.pipeline import LEADERBOARD, STAGES, Job
from queues.report import HEADERS as REPORT_HEADERS
from queues.report import Reports

log = logging.getLogger(__name__)

#: Requests are a few short fields; anything larger is not one of ours.
MAX_BODY_BYTES = 16 * 1024
#: Seconds a client should wait before retrying when the database is away.
RETRY_AFTER = 5
FIELDS = ("submission_id", "api_key", "user_id")


class BadRequest(Exception):
    """A request the client must change; ``status`` and ``message`` say how."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def error(status, message, **headers):
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def read_body():
    """The request fields from a JSON object or a form; BadRequest otherwise."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.to_dict()
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        body = None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object (or form fields) with submission_id and api_key")
    return body


def check_key(given, expected):
    """Constant-time comparison of the presented key; 401 when absent or wrong."""
    if not isinstance(given, str) or not given:
        raise BadRequest(401, "an api_key is required")
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise BadRequest(401, "the api_key is not valid")


def check_id(value):
    """The submission id as a string, or 400 unless it is a 24-hex ObjectId."""
    if value is None or value == "":
        raise BadRequest(400, "submission_id is required")
    if not isinstance(value, str) or not ObjectId.is_valid(value):
        raise BadRequest(400, "submission_id must be a 24-character hexadecimal MongoDB ObjectId")
    return value.lower()


def public(value):
    """Make a document value JSON-friendly (ObjectIds and datetimes as strings)."""
    if isinstance(value, dict):
        return {key: public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public(item) for item in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat() + "Z"
    return value


def summary(doc):
    """What GET /submissions/<id> shows of a submission."""
    fields = ("username", "competition_id", "created", "consistency", "validationLogloss", "concordant", "original")
    body = {"submission_id": str(doc["_id"])}
    body.update({field: public(doc.get(field)) for field in fields})
    processing = public(doc.get("processing") or {})
    processing.pop("batch", None)  # the intake's own bookkeeping
    body["status"] = processing.pop("state", None)
    body["processing"] = processing
    return body


def create_app(store, pipeline, config, supervisor, metrics, rounds=None):
    """Build the Flask app around the given store, pipeline, config and monitors.

    ``rounds`` (queues.rounds.Rounds) lets the report page read predictions
    for its distribution plot; without it the page leaves that plot out.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    acceptor = Acceptor(store)

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        return error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return error(exc.code, exc.description)

    @app.errorhandler(pymongo.errors.PyMongoError)
    def database_away(exc):
        log.warning("database unavailable while answering %s %s: %s", request.method, request.path, type(exc).__name__)
        return error(503, "the database is unavailable; nothing was recorded, retry later", **{"Retry-After": str(RETRY_AFTER)})

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error(500, "internal error; nothing was recorded")

    @app.after_request
    def count(response):
        metrics.request(request.url_rule.rule if request.url_rule else "other", response.status_code)
        return response

    @app.post("/")
    def submit():
        body = read_body()
        check_key(body.get("api_key"), config.api_key)
        submission_id = check_id(body.get("submission_id"))
        if body.get("user_id") is not None and not isinstance(body["user_id"], str):
            raise BadRequest(400, "user_id, when given, must be a string")
        # A repeat of a submission this process already holds needs no round trip:
        # the request that queued it recorded that durably, and a worker forgets
        # an id only after its final write.
        outcome = "already" if pipeline.anywhere(submission_id) else acceptor.accept(submission_id)
        if outcome == "missing":
            raise BadRequest(404, "no submission with id %s" % submission_id)
        if outcome == "queued":
            pipeline.put(LEADERBOARD, Job(submission_id))
            log.info("%s: accepted", submission_id)
        else:
            log.info("%s: already queued; not queued again", submission_id)
        return jsonify(submission_id=submission_id, status="queued", duplicate=outcome == "already"), 202

    @app.get("/submissions/<submission_id>")
    def show(submission_id):
        check_key(request.headers.get("X-API-Key"), config.api_key)
        doc = store.get(check_id(submission_id))
        if doc is None:
            raise BadRequest(404, "no submission with id %s" % submission_id)
        return jsonify(summary(doc))

    @app.get("/health")
    def health():
        threads = supervisor.alive()
        try:
            store.ping()
            database = "ok"
        except pymongo.errors.PyMongoError as exc:
            database = "unavailable (%s)" % type(exc).__name__
        healthy = database == "ok" and all(threads.values())
        body = {"status": "ok" if healthy else "degraded", "http": "ok", "database": database,
                "threads": threads, "queues": {stage: pipeline.depth(stage) for stage in STAGES}}
        return jsonify(body), 200 if healthy else 503

    @app.get("/metrics")
    def metrics_page():
        text, content_type = metrics.render()
        return Response(text, content_type=content_type)

    # -- why a submission was judged so: /explain (JSON) and /report (a page for people) --
    reports = Reports(rounds, store)

    def judged_document(submission_id):
        """The document, after the key (X-API-Key, or the password of HTTP Basic auth: what
        a browser sends) is checked; never from the URL, where logs and histories keep it."""
        if any(name.lower() in ("api_key", "apikey", "key") for name in request.args):
            raise BadRequest(400, "the API key must not be put in a URL; send it as the X-API-Key header "
                                  "or as the password of HTTP Basic authentication")
        given = request.headers.get("X-API-Key")
        if given is None and request.authorization is not None and request.authorization.type == "basic":
            given = request.authorization.password
        check_key(given, config.api_key)
        doc = store.get(check_id(submission_id))
        if doc is None:
            raise BadRequest(404, "no submission with id %s" % submission_id)
        if not explain.judged_at_all(doc):
            state = (doc.get("processing") or {}).get("state") or "not submitted for judging"
            raise BadRequest(409, "submission %s has not been judged yet (status: %s); ask again once it is done"
                             % (submission_id, state))
        return doc

    @app.get("/submissions/<submission_id>/explain")
    def explain_submission(submission_id):
        return jsonify(explain.explanation(judged_document(submission_id), public))

    @app.get("/submissions/<submission_id>/report")
    def report_page(submission_id):
        try:
            doc = judged_document(submission_id)
            page, status, headers = reports.page(doc, explain.explanation(doc, public)), 200, {}
        except BadRequest as exc:
            page, status = reports.error(exc.status, exc.message), exc.status
            headers = {"WWW-Authenticate": 'Basic realm="submission-criteria"'} if status == 401 else {}
        return Response(page, status=status, content_type="text/html; charset=utf-8", headers={**REPORT_HEADERS, **headers})

    return app
