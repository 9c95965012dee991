"""What the service requires of each field the backend owns, checked where it is read, one document at a time.

The backend writes the submissions and the leaderboard entries, and the
service cannot assume their shape: a field may be missing, ``null``, or
of another type. Each rule here says what the service requires and names
what it found instead, in words an operator can act on, so that one odd
document never harms another: it is left out of other users' checks (and
said so in their evidence), and when it is itself POSTed it fails with
that reason.

- ``username``: a non-empty string (the file's folder and the leaderboard's key).
- ``filename``: a non-empty string (the file's name in the upload bucket).
- ``competition_id``: a number with an integral value (41, or 41.0 as a
  double: MongoDB's queries treat the two alike). Text such as ``"41"`` is
  refused everywhere: it is in no round's queries, so it is never half in one.
- ``created``: a date (BSON datetime); it orders submissions for
  originality and the leaderboard.
- ``processing``: the service's own field; anything but an object (or
  absent) is replaced when the submission is accepted.
"""
import datetime
import logging
import threading

log = logging.getLogger(__name__)

#: The submission fields originality and the leaderboard read, in the order they are checked.
MEMBER_FIELDS = ("username", "filename", "competition_id", "created")
#: How much of an odd value a reason quotes.
QUOTE = 40


def shown(value):
    """A value as a reason quotes it: its type in words, and the value when short."""
    if isinstance(value, bool):
        return "the boolean %s" % str(value).lower()
    if isinstance(value, (int, float)):
        return "the number %r" % value
    if isinstance(value, str):
        return "the text %r" % (value if len(value) <= QUOTE else value[:QUOTE] + "...")
    if isinstance(value, datetime.datetime):
        return "the date %s" % value.isoformat()
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a %s" % type(value).__name__


def round_number(value):
    """The round a ``competition_id`` names (an int), or None when it names none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def usable_name(value):
    """Whether ``value`` can be a user's name: non-empty text."""
    return isinstance(value, str) and bool(value.strip())


def problem(doc, field):
    """What is wrong with ``doc[field]`` for the service, or None when it is usable."""
    if field not in doc:
        return "%s is missing" % field
    value = doc[field]
    if value is None:
        return "%s is null" % field
    if field in ("username", "filename"):
        if not isinstance(value, str):
            return "%s is %s, not text" % (field, shown(value))
        if not value.strip():
            return "%s is empty" % field
        return None
    if field == "competition_id":
        return None if round_number(value) is not None else "competition_id is %s, not a round number" % shown(value)
    if field == "created":
        return None if isinstance(value, datetime.datetime) else "created is %s, not a date" % shown(value)
    raise ValueError("no rule for the field %r" % field)


def malformed(doc, fields=MEMBER_FIELDS):
    """``(field, reason)`` of the first field of ``doc`` the service cannot use, or None."""
    for field in fields:
        found = problem(doc, field)
        if found is not None:
            return field, found
    return None


class Once:
    """Logs each malformed document once per process (each check that meets it records it in its evidence)."""

    def __init__(self, limit=10000):
        self.limit = limit
        self._seen = set()
        self._lock = threading.Lock()

    def warn(self, oid, why):
        """Log ``why`` for document ``oid`` unless it was logged before."""
        with self._lock:
            if (oid, why) in self._seen:
                return
            if len(self._seen) >= self.limit:
                self._seen.clear()
            self._seen.add((oid, why))
        log.warning("%s: this submission document cannot be used (%s); it is left out of other users' "
                    "originality checks and fails when it is POSTed", oid, why)
