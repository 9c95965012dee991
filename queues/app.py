"""The HTTP service: a Flask app built by :func:`create_app` from its collaborators.

The tournament backend is a machine client, so every answer is JSON with
a status code it can act on. The endpoints live in blueprints, each built
from what it needs (:mod:`queues.http`); this module assembles them and
adds what every endpoint shares: the error handlers, the request
counters, ``/health`` and ``/metrics``.
"""
import logging

import pymongo.errors
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from queues.errors import misconfiguration
from queues.http.answers import RETRY_AFTER, Refused, error
from queues.http.bodies import MAX_BODY_BYTES
from queues.http.rescores import rescores_blueprint
from queues.http.submissions import submissions_blueprint
from queues.http.verdicts import verdicts_blueprint
from queues.pipeline import STAGES

log = logging.getLogger(__name__)

#: An id no submission has, for probing the database's read rights.
NO_SUCH_ID = "0" * 24
#: What each endpoint can answer: its request counters are exported at 0 from the start.
ANSWERS = {
    "/": (202, 400, 401, 404, 405, 413, 500, 503),
    "/submissions/<submission_id>": (200, 400, 401, 404, 429, 500, 503),
    "/rounds/<competition_id>/rescore": (200, 202, 400, 401, 404, 409, 500, 503),
    "/health": (200, 503),
    "/metrics": (200,),
    "other": (404,),
}


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


def create_app(store, pipeline, config, supervisor, metrics, rounds=None, rescorer=None):
    """Build the Flask app around the given store, pipeline, config and monitors.

    ``rounds`` (queues.rounds.Rounds) lets the report page read predictions
    for its distribution plot; without it the page leaves that plot out.
    ``rescorer`` (queues.rescore.Rescorer) serves ``/rounds/<id>/rescore``.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    for endpoint, statuses in ANSWERS.items():
        metrics.expect_requests(endpoint, statuses)
    app.register_blueprint(submissions_blueprint(store, pipeline, config, metrics))
    app.register_blueprint(verdicts_blueprint(store, config, rounds))
    app.register_blueprint(rescores_blueprint(rescorer, config))
    handle_errors(app)

    @app.after_request
    def count(response):
        metrics.request(request.url_rule.rule if request.url_rule else "other", response.status_code)
        return response

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

    return app


def handle_errors(app):
    """Every failure answers JSON a person can act on; a traceback goes to the log, never to the client."""

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
