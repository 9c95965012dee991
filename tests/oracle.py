"""What the plain rules say, stated once for every test, independently of the service's code.

The service decides with fast paths (a prepared originality index, a
change stream of the round's members, a leaderboard writer with a copy of
the entries). Tests compare its record with this module, which reads the
documents and files as they are and applies each rule the plain way:

- who a submission is compared with: every other user's latest submission
  of the round created strictly before it (by ``created``, then ``_id``),
  from a fresh read of the round; documents whose user or time is not
  usable are left out, and so is a user's latest one whose file name is
  not usable or whose file cannot be read (an earlier one does not stand
  in for it);
- the verdicts: :mod:`scoring`'s plain functions on the parsed files;
- the leaderboard: each user's newest dispatched submission with a usable
  time, and its owned fields.

Only :mod:`scoring` is imported (the rules themselves); nothing from
``queues``, so the service's selection of documents is checked, not
repeated.
"""
import datetime

from bson import ObjectId

from scoring import concordance, consistency, originality
from scoring.submission import SubmissionError, parse_submission

#: The leaderboard entry field holding the revision of the submission it shows (the data layout's name).
REV = "criteria_rev"


def usable_text(value):
    return isinstance(value, str) and bool(value.strip())


def round_of(doc):
    """The round a document is in, by MongoDB's numeric equality (41 and 41.0 alike), or None."""
    value = doc.get("competition_id")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def unusable_field(doc):
    """The first field judging needs that the document cannot give, or None."""
    if not usable_text(doc.get("username")):
        return "username"
    if not usable_text(doc.get("filename")):
        return "filename"
    if round_of(doc) is None:
        return "competition_id"
    if not isinstance(doc.get("created"), datetime.datetime):
        return "created"
    return None


def of_node(node, competition_id=41):
    """The oracle of a test server process's round: its files, rules, tournament rows and clusters."""
    rounds = node.workers["concordance"].rounds
    rnd = rounds.get(competition_id)
    return Oracle(node.db, rounds.files, node.workers["concordance"].rules, rounds.groups(rnd), rnd.tournament,
                  competition_id)


class Oracle:
    """The plain rules over one round: ``verdicts(sid)`` and ``board()``.

    ``files.submission(username, filename)`` gives a file's bytes;
    ``tournament`` is the round's parsed tournament data and ``groups`` its
    cluster groups (the clustering is a fixed function of the data, pinned
    per round, so tests take it from the round as loaded).
    """

    def __init__(self, db, files, rules, groups, tournament, competition_id=41):
        self.db = db
        self.files = files
        self.rules = rules
        self.groups = groups
        self.tournament = tournament
        self.competition_id = competition_id

    def values(self, doc):
        """The document's predictions in the round's row order, or None when its file cannot be read."""
        try:
            return parse_submission(self.files.submission(doc["username"], doc["filename"]), self.tournament.ids)
        except (SubmissionError, LookupError, OSError, ValueError):
            return None
        except Exception as exc:  # a storage's own "missing" error
            if "missing" in type(exc).__name__.lower() or "not in storage" in str(exc):
                return None
            raise

    def round_docs(self):
        return [doc for doc in self.db.submissions.find({}) if round_of(doc) == self.competition_id]

    def others(self, doc):
        """The values of :meth:`compared_with`'s submissions."""
        return [values for _, values in self.compared_with(doc)]

    def compared_with(self, doc):
        """``[(document, values)]``: the other users' latest earlier submissions whose files can be read."""
        latest = {}
        for other in self.round_docs():
            name, when = other.get("username"), other.get("created")
            if name == doc["username"] or not usable_text(name) or not isinstance(when, datetime.datetime):
                continue
            if not when < doc["created"]:
                continue
            mine = latest.get(name)
            if mine is None or (when, other["_id"]) > (mine["created"], mine["_id"]):
                latest[name] = other
        found = []
        for other in latest.values():
            if usable_text(other.get("filename")):
                values = self.values(other)
                if values is not None:
                    found.append((other, values))
        return found

    def verdicts(self, sid):
        """``{consistency, logloss, concordant, original}``, or None when the submission must end failed."""
        doc = self.db.submissions.find_one({"_id": ObjectId(sid)})
        if doc is None or unusable_field(doc) is not None or round_of(doc) != self.competition_id:
            return None
        values = self.values(doc)
        if values is None:
            return None
        t = self.tournament
        valid = t.validation
        return {"consistency": consistency.consistency(t.eras[valid], t.targets[valid], values[valid], self.rules),
                "logloss": consistency.logloss(t.targets[valid], values[valid], self.rules.logloss_epsilon),
                "concordant": concordance.concordance(self.groups, values, self.rules)[1],
                "original": originality.is_original(values, self.others(doc), self.rules)}

    def board(self):
        """``{username: owned fields}`` each user's entry must show: the newest dispatched submission."""
        newest = {}
        for doc in self.round_docs():
            processing = doc.get("processing")
            if not (isinstance(processing, dict) and processing.get("dispatched")):
                continue
            if not usable_text(doc.get("username")) or not isinstance(doc.get("created"), datetime.datetime):
                continue
            mine = newest.get(doc["username"])
            if mine is None or (doc["created"], doc["_id"]) > (mine["created"], mine["_id"]):
                newest[doc["username"]] = doc
        return {name: entry_of(doc) for name, doc in newest.items()}


def entry_of(doc):
    """The owned fields of a leaderboard entry showing ``doc`` (the data layout's contract)."""
    return {"submission_id": doc["_id"],
            "logloss": {"validation": doc.get("validationLogloss"), "consistency": doc.get("consistency")},
            "concordant": doc.get("concordant") or {"pending": True},
            "original": doc.get("original") or {"pending": True},
            REV: doc["processing"].get("rev", 0)}
