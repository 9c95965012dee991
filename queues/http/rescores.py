"""Re-scoring a round over HTTP: an operator's request answered at once, the run going on in the background."""
import logging

from bson import ObjectId
from flask import Blueprint, jsonify, request

from queues.http.answers import Refused, public
from queues.http.bodies import parse_flag, parse_only, parse_round_in_url, rescore_body
from queues.http.keys import IN_BODY, IN_HEADER, authenticate
from queues.rescore import NoSuchRound

log = logging.getLogger(__name__)


def rescores_blueprint(rescorer, config):
    """POST and GET /rounds/<id>/rescore, driven by ``rescorer`` (None: this server does not re-score)."""
    blueprint = Blueprint("rescores", __name__)

    def round_asked(competition_id):
        if rescorer is None:
            raise Refused(404, "this server does not re-score rounds")
        return parse_round_in_url(competition_id)

    @blueprint.post("/rounds/<competition_id>/rescore")
    def rescore_round(competition_id):
        competition_id = round_asked(competition_id)
        body = rescore_body()
        authenticate(config, IN_BODY, body)
        only = parse_only(body.get("only"))
        try:
            if parse_flag(body.get("dry_run"), "dry_run"):
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
        fields = public({key: run.get(key) for key in ("run", "competition_id", "only", "requested_at", "rules")})
        return jsonify(status="running", **fields), 202, {"Location": where + "?run=%s" % run["run"]}

    @blueprint.get("/rounds/<competition_id>/rescore")
    def rescore_status(competition_id):
        competition_id = round_asked(competition_id)
        authenticate(config, IN_HEADER)
        run_id = request.args.get("run")
        if run_id is not None and not ObjectId.is_valid(run_id):
            raise Refused(400, "run must be the id a re-score request answered with")
        found = rescorer.status(competition_id, ObjectId(run_id) if run_id else None)
        if found is None:
            raise Refused(404, "round %d has no re-score%s" % (competition_id, " %s" % run_id if run_id else ""))
        return jsonify(public(found))

    return blueprint
