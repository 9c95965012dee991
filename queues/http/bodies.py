"""Reading requests: bodies, ids, users, rounds, flags and waits, each refused with a reason a client can act on."""
import json
import math
import re

from bson import ObjectId
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from queues.fields import round_number
from queues.http.answers import Refused

#: Requests are a few short fields; anything larger is not one of ours.
MAX_BODY_BYTES = 16 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: GET /submissions/<id>?wait=<seconds> waits at most this long.
MAX_WAIT = 30.0
#: What POST /rounds/<id>/rescore reads from its body; anything else is refused, not ignored.
RESCORE_FIELDS = ("only", "dry_run", "api_key")


def body_bytes():
    """The request body, or 413 when it is over MAX_BODY_BYTES, however it was sent.

    Werkzeug refuses a Content-Length over the limit, but a chunked body has
    none: it is cut at the limit, and the cut JSON read as a bad body (400).
    One more byte from the server's stream tells the two apart.
    """
    asked = request._get_current_object()  # one proxy lookup: this runs on every request
    raw = asked.get_data(cache=True)
    if len(raw) >= MAX_BODY_BYTES and asked.content_length is None and asked.environ["wsgi.input"].read(1):
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


def parse_id(value):
    """The submission id as a string, or 400 unless it is a 24-hex ObjectId."""
    if value is None or value == "":
        raise Refused(400, "submission_id is required")
    if not isinstance(value, str) or not ObjectId.is_valid(value):
        raise Refused(400, "submission_id must be a 24-character hexadecimal MongoDB ObjectId")
    return value.lower()


def parse_user(body):
    """The optional user name: ``user_id``, or ``user`` as the 2017 clients sent it."""
    user, alias = body.get("user_id"), body.get("user")
    if user is None:
        user = alias
    elif alias is not None and alias != user:
        raise Refused(400, "user and user_id name different users; send one of them")
    if user is not None and not isinstance(user, str):
        raise Refused(400, "user_id (or user), when given, must be a string")
    return user or None  # an empty form field names nobody


def parse_round(value):
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


def refuse_other_owner(doc, submission_id, user):
    """400 when the request names another user than the submission's owner (as for its round)."""
    owner = doc.get("username")
    if owner is not None and owner != user:
        raise Refused(400, "submission %s belongs to %s, not %s" % (submission_id, owner, user[:100]))


def refuse_other_round(doc, submission_id, competition_id):
    """400 when the request names another round than the submission's own.

    A document whose round the service cannot use (text, say) is in no
    round: it fails with that reason when judged, whatever the request says.
    """
    actual = round_number(doc.get("competition_id"))
    if actual is not None and actual != competition_id:
        raise Refused(400, "submission %s belongs to round %d, not to competition_id %d"
                      % (submission_id, actual, competition_id))


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


def parse_only(value):
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


def parse_flag(value, name):
    """An optional true/false; a form sends it as the text true or false."""
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise Refused(400, "%s, when given, must be true or false" % name)
    return value


def parse_round_in_url(text):
    """The round named in a URL path, or 400."""
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise Refused(400, "the round in the URL must be a round number such as 41, not %s" % text[:20])
    return int(text)
