"""Why a verdict: GET /submissions/<id>/explain (JSON) and /report (a page for support staff)."""
from flask import Blueprint, Response, jsonify

from queues import explain
from queues.http.answers import Refused, public
from queues.http.bodies import parse_id
from queues.http.keys import IN_HEADER_OR_BASIC, authenticate
from queues.report import HEADERS as REPORT_HEADERS
from queues.report import Reports


def verdicts_blueprint(store, config, rounds=None):
    """The explain and report endpoints; ``rounds`` lets the report plot predictions (else it leaves that out)."""
    blueprint = Blueprint("verdicts", __name__)
    reports = Reports(rounds, store)

    def judged_document(submission_id):
        """The judged document, once the key is checked (X-API-Key, or HTTP Basic auth: what a browser sends)."""
        authenticate(config, IN_HEADER_OR_BASIC)
        doc = store.get(parse_id(submission_id))
        if doc is None:
            raise Refused(404, "no submission with id %s" % submission_id)
        if not explain.judged_at_all(doc):
            processing = doc.get("processing")
            state = (processing.get("state") if isinstance(processing, dict) else None) or "not submitted for judging"
            raise Refused(409, "submission %s has not been judged yet (status: %s); ask again once it is done"
                               % (submission_id, state))
        return doc

    @blueprint.get("/submissions/<submission_id>/explain")
    def explain_submission(submission_id):
        return jsonify(explain.explanation(judged_document(submission_id), public))

    @blueprint.get("/submissions/<submission_id>/report")
    def report_page(submission_id):
        try:
            doc = judged_document(submission_id)
            page, status, headers = reports.page(doc, explain.explanation(doc, public)), 200, {}
        except Refused as exc:
            page, status = reports.error(exc.status, exc.message), exc.status
            headers = {"WWW-Authenticate": 'Basic realm="submission-criteria"'} if status == 401 else {}
        return Response(page, status=status, content_type="text/html; charset=utf-8", headers={**REPORT_HEADERS, **headers})

    return blueprint
