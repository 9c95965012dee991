"""The HTTP intake: a Flask app built by :func:`create_app` from its collaborators.

The tournament backend is a machine client, so every answer is JSON with
a status code it can act on; the API key is compared in constant time
and never logged or echoed.
"""
import datetime
import hmac
import json
import logging
import math
import re
import threading
import time

import pymongo.errors
from bson import ObjectId
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from queues import explain
from queues.errors import misconfiguration
from queues.intake import Acceptor
from queues.pipeline import DISPATCH, STAGES, Job
from queues.report import HEADERS as REPORT_HEADERS
from queues.report import Reports
from queues.rescore import NoSuchRound

log = logging.getLogger(__name__)

#: Requests are a few short fields; anything larger is not one of ours.
MAX_BODY_BYTES = 16 * 1024
#: Seconds a client should wait before retrying when the database is away.
RETRY_AFTER = 5
#: GET /submissions/<id>?wait=<seconds> answers once the submission is settled
#: (done or failed) or after at most MAX_WAIT seconds, reading it every WAIT_POLL.
MAX_WAIT = 30.0
WAIT_POLL = 0.5
UNSETTLED = ("queued", "scoring")
#: An id no submission has, for probing the database's read rights.
NO_SUCH_ID = "0" * 24
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Where each endpoint takes the key from, for the 401 that says it is missing.
KEY_IN_BODY = "send it as api_key in the body, or in the X-API-Key header"
KEY_IN_HEADER = "send it in the X-API-Key header"
KEY_IN_HEADER_OR_BASIC = "send it in the X-API-Key header, or as the password of HTTP Basic authentication"
#: What each endpoint can answer: its request counters are exported at 0 from the start.
ANSWERS = {
    "/": (202, 400, 401, 404, 405, 413, 500, 503),
    "/submissions/<submission_id>": (200, 400, 401, 404, 429, 500, 503),
    "/rounds/<competition_id>/rescore": (200, 202, 400, 401, 404, 409, 500, 503),
    "/health": (200, 503),
    "/metrics": (200,),
    "other": (404,),
}
LOCAL_KEY_HINT = " (local mode: the development key is in the README)"
PLUS_AS_SPACE = ("; it contains a space, which is what a '+' becomes in form fields sent without "
                 "URL-encoding: send '+' as %2B, or send JSON")


class Refused(Exception):
    """A request answered with a 4xx: ``status`` and a ``message`` the client can act on.

    Not called BadRequest: that is Werkzeug's 400, and this carries 401s and 404s too.
    """

    def __init__(self, status, message, **headers):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error(status, message, **headers):
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def body_bytes():
    """The request body, or 413 when it is over MAX_BODY_BYTES, however it was sent.

    Werkzeug refuses a Content-Length over the limit, but a chunked body has
    none: it is cut at the limit, and the cut JSON read as a bad body (400).
    One more byte from the server's stream tells the two apart.
    """
    raw = request.get_data(cache=True)
    if request.content_length is None and len(raw) >= MAX_BODY_BYTES and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def read_body():
    """The request fields: a JSON object whatever the Content-Type says, else form fields.

    The 2017 README taught ``curl -X POST -d '{...}'``, and curl's ``-d``
    labels that JSON as a form; the body, not its label, says what it is.
    A body that starts like JSON (``{`` or ``[``) is JSON, so a typo in it
    is named (400) instead of read as a form without a key (401).
    """
    raw = body_bytes()  # cached: a form is parsed from the same bytes
    try:
        body = json.loads(raw)
    except RecursionError:  # deeply nested arrays
        body = None
    except ValueError as exc:
        body = None
        if raw.lstrip()[:1] in (b"{", b"["):
            raise Refused(400, "the body is not valid JSON: %s" % json_error(exc)) from None
    if isinstance(body, dict):
        return body
    if request.mimetype in FORM_TYPES:
        return request.form.to_dict()
    raise Refused(400, "the body must be a JSON object (or form fields) with submission_id and api_key")


def json_error(exc):
    """What is wrong with the JSON and where (line, column), without quoting it: it may hold the key."""
    if isinstance(exc, json.JSONDecodeError):
        return "%s at line %d, column %d (character %d)" % (exc.msg, exc.lineno, exc.colno, exc.pos + 1)
    return "it is not UTF-8 text"


def check_key(given, expected, where, local=False):
    """Constant-time comparison of the presented key; 401 saying what to change.

    ``where`` says where the endpoint takes the key from. The key itself is
    never echoed: a wrong one is only said to contain a space, the mark of
    a '+' sent unencoded in a form.
    """
    if given is None or given == "":
        raise Refused(401, "an API key is required: %s%s" % (where, LOCAL_KEY_HINT if local else ""))
    if not isinstance(given, str):
        raise Refused(401, "the API key must be a string: %s" % where)
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise Refused(401, "the API key is not valid" + (PLUS_AS_SPACE if " " in given else ""))


def check_user(body):
    """The optional user name: ``user_id``, or ``user`` as the 2017 clients sent it."""
    user, alias = body.get("user_id"), body.get("user")
    if user is None:
        user = alias
    elif alias is not None and alias != user:
        raise Refused(400, "user and user_id name different users; send one of them")
    if user is not None and not isinstance(user, str):
        raise Refused(400, "user_id (or user), when given, must be a string")
    return user or None  # an empty form field names nobody


def check_round(value):
    """The optional ``competition_id`` as an int (a form sends it as text); 400 unless it is one."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
        return int(value)
    raise Refused(400, "competition_id, when given, must be a round number such as 41")


def check_owner(doc, submission_id, user):
    """400 when the request names another user than the submission's owner (as for its round)."""
    owner = doc.get("username")
    if owner is not None and owner != user:
        raise Refused(400, "submission %s belongs to %s, not %s" % (submission_id, owner, user[:100]))


def check_same_round(doc, submission_id, competition_id):
    """400 when the request names another round than the submission's own."""
    try:
        actual = int(doc.get("competition_id"))
    except (TypeError, ValueError):  # a document without a usable round fails when judged
        return
    if actual != competition_id:
        raise Refused(400, "submission %s belongs to round %d, not to competition_id %d"
                      % (submission_id, actual, competition_id))


def check_id(value):
    """The submission id as a string, or 400 unless it is a 24-hex ObjectId."""
    if value is None or value == "":
        raise Refused(400, "submission_id is required")
    if not isinstance(value, str) or not ObjectId.is_valid(value):
        raise Refused(400, "submission_id must be a 24-character hexadecimal MongoDB ObjectId")
    return value.lower()


#: POST /'s 202, as jsonify writes it: the same three fields every time, and an id that
#: check_id let through only as 24 lower-case hex digits, so nothing needs escaping.
ACCEPTED = '{"duplicate":%s,"status":"queued","submission_id":"%s"}\n'


def accepted(submission_id, duplicate):
    """POST /'s answer, formatted from ACCEPTED: jsonify's encoder and keyword handling
    cost 20 us, about 4% of a whole request, on the path the intake serves most."""
    return Response(ACCEPTED % ("true" if duplicate else "false", submission_id), status=202,
                    mimetype="application/json")


def database_status(store):
    """The database as /health and the metrics report it.

    "ok"; "misconfigured: <what to fix>" when it rejects the server's
    credentials or rights (retrying cannot help); else "unavailable (<error>)".
    A ping needs no rights, so a read of the submissions (by an id that
    matches nothing) checks them as well.
    """
    try:
        store.ping()
        store.get(NO_SUCH_ID)
    except pymongo.errors.PyMongoError as exc:
        what = misconfiguration(exc)
        return "misconfigured: %s" % what if what else "unavailable (%s)" % type(exc).__name__
    return "ok"


def wait_seconds(value):
    """The ``wait`` query parameter as seconds, capped at MAX_WAIT; 400 unless it is a number >= 0."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:  # also refuses NaN
        raise Refused(400, "wait must be a number of seconds, 0 to %g (longer waits are cut to %g)" % (MAX_WAIT, MAX_WAIT))
    return min(seconds, MAX_WAIT)


def settled(doc):
    """True once judging is over (done or failed), or when the submission was never accepted."""
    return ((doc.get("processing") or {}).get("state")) not in UNSETTLED


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
    processing = public(doc.get("processing") if isinstance(doc.get("processing"), dict) else {})
    for internal in ("lease", "board", "fence", "dispatched", "settled_by", "rev"):  # the service's own bookkeeping
        processing.pop(internal, None)
    body["status"] = processing.pop("state", None)
    if body["status"] != "failed":  # a re-POSTed failure's error stays until it is kept in history
        processing["error"] = None
    body["processing"] = processing
    return body


#: What POST /rounds/<id>/rescore reads from its body; anything else is refused, not ignored.
RESCORE_FIELDS = ("only", "dry_run", "api_key")


def rescore_body():
    """The re-score request's fields: none, a JSON object or form fields with only known names.

    An unknown name is refused rather than ignored: a typo of ``only``
    would otherwise re-score the whole round.
    """
    if not body_bytes().strip():
        return {}
    try:
        body = read_body()
    except Refused as exc:
        if exc.message.startswith("the body is not valid JSON"):  # already says what and where
            raise
        raise Refused(400, "the body must be empty or a JSON object with any of: %s" % ", ".join(RESCORE_FIELDS)) from None
    unknown = sorted(str(name) for name in body if name not in RESCORE_FIELDS)
    if unknown:
        raise Refused(400, "unknown field%s %s: a re-score request takes only %s"
                      % ("" if len(unknown) == 1 else "s", ", ".join(unknown), ", ".join(RESCORE_FIELDS)))
    return body


def check_only(value):
    """The optional list of submission ids a re-score is limited to; 400 unless it is one."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise Refused(400, "only, when given, must be a non-empty list of submission ids")
    for sid in value:
        if not isinstance(sid, str) or not ObjectId.is_valid(sid):
            raise Refused(400, "only must list submission ids (24 hexadecimal characters); %s is not one"
                          % json.dumps(sid)[:40])
    return sorted({sid.lower() for sid in value})


def check_flag(value, name):
    """An optional true/false; a form sends it as the text true or false."""
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise Refused(400, "%s, when given, must be true or false" % name)
    return value


def create_app(store, pipeline, config, supervisor, metrics, rounds=None, rescorer=None):
    """Build the Flask app around the given store, pipeline, config and monitors.

    ``rounds`` (queues.rounds.Rounds) lets the report page read predictions
    for its distribution plot; without it the page leaves that plot out.
    ``rescorer`` (queues.rescore.Rescorer) serves ``/rounds/<id>/rescore``.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    acceptor = Acceptor(store)
    waits = Waits(config.http_threads // 2, pipeline.stop, metrics.waiting)  # one thread: no waiting
    for endpoint, statuses in ANSWERS.items():
        metrics.expect_requests(endpoint, statuses)

    @app.errorhandler(Refused)
    def refused(exc):
        return error(exc.status, exc.message, **exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if isinstance(exc, RequestEntityTooLarge):
            return error(413, "the body is over the %d KiB (%d bytes) limit; a request needs only submission_id "
                              "and api_key (user_id and competition_id are optional)"
                         % (MAX_BODY_BYTES // 1024, MAX_BODY_BYTES))
        return error(exc.code, exc.description)

    @app.errorhandler(pymongo.errors.PyMongoError)
    def database_away(exc):
        what = misconfiguration(exc)
        if what:  # retrying cannot help: say what the operators must fix
            log.error("database misconfigured while answering %s %s: %s", request.method, request.path, what)
            return error(500, "the server is misconfigured: %s; nothing was recorded" % what)
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
        with pipeline.intake:  # judging gives way to POSTs in progress; GETs (pollers) do not hold it up
            return take(read_body())

    def take(body):
        """Check a POST / body, record its submission as queued (unless it is already), answer 202."""
        given = body.get("api_key")
        check_key(request.headers.get("X-API-Key") if given is None else given, config.api_key,
                  KEY_IN_BODY, config.local)
        submission_id = check_id(body.get("submission_id"))
        user = check_user(body)
        competition_id = check_round(body.get("competition_id"))
        if competition_id is not None or user is not None:  # only then is the document read first
            doc = store.get(submission_id)
            if doc is None:
                raise Refused(404, "no submission with id %s" % submission_id)
            if user is not None:
                check_owner(doc, submission_id, user)
            if competition_id is not None:
                check_same_round(doc, submission_id, competition_id)
        # A repeat of a submission this process already holds needs no round trip:
        # the request that queued it recorded that durably, and a worker forgets
        # an id only after its final write.
        outcome, token = ("already", None) if pipeline.anywhere(submission_id) else acceptor.accept(submission_id)
        if outcome == "missing":
            raise Refused(404, "no submission with id %s" % submission_id)
        if outcome == "queued":
            pipeline.put(DISPATCH, Job(submission_id, token=token))
            log.info("%s: accepted", submission_id)
        else:
            log.info("%s: already queued; not queued again", submission_id)
        return accepted(submission_id, duplicate=outcome == "already")

    @app.get("/submissions/<submission_id>")
    def show(submission_id):
        if "api_key" in request.args and not request.headers.get("X-API-Key"):
            raise Refused(401, "send the API key in the X-API-Key header, not in the URL, where logs keep it")
        check_key(request.headers.get("X-API-Key"), config.api_key, KEY_IN_HEADER, config.local)
        submission_id = check_id(submission_id)
        seconds = wait_seconds(request.args.get("wait"))
        doc = waits.until_settled(store.get(submission_id), lambda: store.get(submission_id), seconds)
        if doc is None:
            raise Refused(404, "no submission with id %s" % submission_id)
        return jsonify(summary(doc))

    @app.get("/health")
    def health():
        threads = supervisor.alive()
        database = database_status(store)
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
            raise Refused(400, "the API key must not be put in a URL; send it as the X-API-Key header "
                                  "or as the password of HTTP Basic authentication")
        given = request.headers.get("X-API-Key")
        if given is None and request.authorization is not None and request.authorization.type == "basic":
            given = request.authorization.password
        check_key(given, config.api_key, KEY_IN_HEADER_OR_BASIC, config.local)
        doc = store.get(check_id(submission_id))
        if doc is None:
            raise Refused(404, "no submission with id %s" % submission_id)
        if not explain.judged_at_all(doc):
            state = (doc.get("processing") or {}).get("state") or "not submitted for judging"
            raise Refused(409, "submission %s has not been judged yet (status: %s); ask again once it is done"
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
        except Refused as exc:
            page, status = reports.error(exc.status, exc.message), exc.status
            headers = {"WWW-Authenticate": 'Basic realm="submission-criteria"'} if status == 401 else {}
        return Response(page, status=status, content_type="text/html; charset=utf-8", headers={**REPORT_HEADERS, **headers})

    # -- re-scoring a round: an operator's request, answered at once; the run goes on in the background --
    def rescore_round_id(competition_id):
        if rescorer is None:
            raise Refused(404, "this server does not re-score rounds")
        if any(name.lower() in ("api_key", "apikey", "key") for name in request.args):
            raise Refused(400, "the API key must not be put in a URL; send it as the X-API-Key header")
        if not re.fullmatch(r"[0-9]{1,9}", competition_id):
            raise Refused(400, "the round in the URL must be a round number such as 41, not %s" % competition_id[:20])
        return int(competition_id)

    @app.post("/rounds/<competition_id>/rescore")
    def rescore_round(competition_id):
        competition_id = rescore_round_id(competition_id)
        body = rescore_body()
        given = body.get("api_key")
        check_key(request.headers.get("X-API-Key") if given is None else given, config.api_key,
                  KEY_IN_BODY, config.local)
        only = check_only(body.get("only"))
        try:
            if check_flag(body.get("dry_run"), "dry_run"):
                return jsonify(public(rescorer.dry_run(competition_id, only)))
            run, opened = rescorer.request(competition_id, only)
        except NoSuchRound as exc:
            raise Refused(404, str(exc)) from None
        where = "/rounds/%d/rescore" % competition_id
        if not opened:
            raise Refused(409, "round %d is being re-scored already (run %s, requested at %s by %s); GET %s "
                               "shows its progress, and a new run can start once it has finished"
                          % (competition_id, run["run"], public(run.get("requested_at")), run.get("requested_by"), where))
        log.info("round %s: re-score %s requested over HTTP", competition_id, run["run"])
        body = public({key: run.get(key) for key in ("run", "competition_id", "only", "requested_at", "rules")})
        return jsonify(status="running", **body), 202, {"Location": where + "?run=%s" % run["run"]}

    @app.get("/rounds/<competition_id>/rescore")
    def rescore_status(competition_id):
        competition_id = rescore_round_id(competition_id)
        check_key(request.headers.get("X-API-Key"), config.api_key, KEY_IN_HEADER, config.local)
        run_id = request.args.get("run")
        if run_id is not None and not ObjectId.is_valid(run_id):
            raise Refused(400, "run must be the id a re-score request answered with")
        found = rescorer.status(competition_id, ObjectId(run_id) if run_id else None)
        if found is None:
            raise Refused(404, "round %d has no re-score%s" % (competition_id, " %s" % run_id if run_id else ""))
        return jsonify(public(found))

    return app
