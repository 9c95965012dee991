"""The MongoDB documents the tournament backend shares with us.

A thin wrapper over a pymongo ``Database``: each method is one or two
atomic updates, so a crash between any two calls leaves documents that
recovery can finish, and concurrent writers never duplicate a
leaderboard entry. MongoDB is the record of truth for what was accepted.
"""
import datetime
import logging

import pymongo
from bson import ObjectId

log = logging.getLogger(__name__)

QUEUED, SCORING, DONE, FAILED = "queued", "scoring", "done", "failed"
#: Stage within SCORING: consistency first, then the two checks.
STAGE_CONSISTENCY, STAGE_CHECKS = "consistency", "checks"
CHECKS = ("concordant", "original")
PENDING = {"pending": True}


def utcnow():
    """Naive UTC at millisecond precision, exactly as MongoDB will store it."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Store:
    """Submissions, competitions and users in one database."""

    def __init__(self, db):
        self.db = db
        self.submissions = db.submissions
        self.competitions = db.competitions
        self.users = db.users

    # -- intake -------------------------------------------------------------
    def accept(self, submission_id):
        """Record that a submission is queued; return 'queued', 'already' or 'missing'."""
        return self.accept_many([submission_id])[0]

    def accept_many(self, submission_ids):
        """Record a batch of submissions as queued; one answer per id.

        Only documents not already queued or being scored move to QUEUED,
        in one conditional ``update_many`` that also stamps them with a
        token unique to this batch. When it moved every id, that is the
        whole answer (one round trip); otherwise reading the tokens back
        tells which ids this call queued ('queued'), which were in the
        pipeline already ('already') and which do not exist ('missing').
        An id repeated within the batch is queued once; repeats say 'already'.
        """
        oids = [ObjectId(sid) for sid in submission_ids]
        unique = set(oids)
        token = ObjectId()
        now = utcnow()
        moved = self.submissions.update_many(
            {"_id": {"$in": list(unique)}, "processing.state": {"$nin": [QUEUED, SCORING]}},
            {"$set": {"processing.state": QUEUED, "processing.stage": STAGE_CONSISTENCY,
                      "processing.queued_at": now, "processing.updated_at": now,
                      "processing.attempts": 0, "processing.error": None, "processing.batch": token}},
        ).modified_count
        if moved == len(unique):  # the usual case: every id was new to the pipeline
            found = dict.fromkeys(unique, True)
        else:
            found = {doc["_id"]: (doc.get("processing") or {}).get("batch") == token
                     for doc in self.submissions.find({"_id": {"$in": list(unique)}}, {"processing.batch": 1})}
        answers, seen = [], set()
        for oid in oids:
            if oid not in found:
                answers.append("missing")
            elif found[oid] and oid not in seen:
                answers.append("queued")
            else:
                answers.append("already")
            seen.add(oid)
        return answers

    def get(self, submission_id):
        """The submission document, or None."""
        return self.submissions.find_one({"_id": ObjectId(submission_id)})

    def ping(self):
        """Raise unless the database answers."""
        self.db.command("ping")

    # -- dispatcher ---------------------------------------------------------
    def begin(self, submission_id):
        """Move a QUEUED submission into SCORING and mark both checks pending.

        Also takes a submission whose dispatch was interrupted (SCORING at the
        consistency stage). Returns the document after the update, or None
        when there is nothing to dispatch: the document is gone, or it is
        already past this stage (a stale recovery read must not re-score a
        finished submission). Marking the checks here, with the state, means
        a crash at any later point leaves a document that says exactly what
        is unfinished.
        """
        now = utcnow()
        return self.submissions.find_one_and_update(
            {"_id": ObjectId(submission_id),
             "$or": [{"processing.state": QUEUED},
                     {"processing.state": SCORING, "processing.stage": STAGE_CONSISTENCY}]},
            {"$set": {"processing.state": SCORING, "processing.stage": STAGE_CONSISTENCY,
                      "processing.started_at": now, "processing.updated_at": now,
                      "concordant": PENDING, "original": PENDING},
             "$inc": {"processing.attempts": 1}},
            return_document=pymongo.ReturnDocument.AFTER,
        )

    def record_consistency(self, doc, consistency, logloss, evidence=None):
        """Write consistency, and logloss where the backend gave none.

        ``evidence``: more fields to ``$set`` in the same update (evidence and
        provenance, see queues.provenance), so they never part from the verdict.
        """
        fields = {"consistency": consistency, "processing.updated_at": utcnow(), **(evidence or {})}
        if doc.get("validationLogloss") is None:
            fields["validationLogloss"] = logloss
        self.submissions.update_one({"_id": doc["_id"]}, {"$set": fields})

    def career_earnings(self, username):
        """The user's career earnings, zeros when the user has none recorded."""
        user = self.users.find_one({"username": username}, {"earnings.career": 1}) or {}
        career = (user.get("earnings") or {}).get("career") or {}
        return {"usd": career.get("usd", 0), "nmr": career.get("nmr", 0)}

    def update_leaderboard(self, doc, consistency, logloss):
        """Point the user's single leaderboard entry at this submission.

        Updates the entry in place when the user has one; otherwise pushes
        a new one guarded by "no entry for this user yet". Both steps are
        atomic conditional updates, so racing writers end with one entry.
        """
        competition_id = int(doc["competition_id"])
        username = doc["username"]
        self.competitions.update_one({"_id": competition_id}, {"$setOnInsert": {"leaderboard": []}}, upsert=True)
        scores = {"validation": logloss, "consistency": consistency}
        for _ in range(5):
            updated = self.competitions.update_one(
                {"_id": competition_id, "leaderboard.username": username},
                {"$set": {"leaderboard.$.submission_id": doc["_id"], "leaderboard.$.logloss": scores,
                          "leaderboard.$.concordant": PENDING, "leaderboard.$.original": PENDING}},
            )
            if updated.matched_count:
                return
            entry = {"username": username, "submission_id": doc["_id"],
                     "earnings": {"career": self.career_earnings(username), "competition": {"usd": 0, "nmr": 0}},
                     "logloss": scores, "concordant": PENDING, "original": PENDING}
            pushed = self.competitions.update_one(
                {"_id": competition_id, "leaderboard.username": {"$ne": username}},
                {"$push": {"leaderboard": entry}},
            )
            if pushed.matched_count:
                return
        raise RuntimeError("leaderboard entry for %s kept changing under us" % username)

    def enter_checks(self, doc):
        """Dispatch is complete: from here on the checks own the submission.

        Written last by the dispatcher, so a retry or a recovery at any
        earlier point dispatches again (every dispatcher write is idempotent).
        """
        self.submissions.update_one({"_id": doc["_id"], "processing.state": SCORING},
                                    {"$set": {"processing.stage": STAGE_CHECKS, "processing.updated_at": utcnow()}})

    # -- checks -------------------------------------------------------------
    def record_check(self, doc, check, value, error=None, evidence=None):
        """Write one check's verdict to the submission and its leaderboard entry.

        ``value`` None with an ``error`` records a check that could not be
        judged. ``evidence``: more fields to ``$set`` on the submission in the
        verdict's own update (evidence and provenance). Then, if no check is
        pending any more, the submission is done (or failed, when a check
        failed). Returns True when this call finished the submission.
        """
        verdict = {"pending": False, "value": value}
        if error is not None:
            verdict["error"] = error
        self.submissions.update_one({"_id": doc["_id"]},
                                    {"$set": {check: verdict, "processing.updated_at": utcnow(), **(evidence or {})}})
        if doc.get("competition_id") is not None:
            self.competitions.update_one(
                {"_id": int(doc["competition_id"]), "leaderboard": {"$elemMatch": {"submission_id": doc["_id"]}}},
                {"$set": {"leaderboard.$." + check: verdict}},
            )
        if error is not None:
            self.set_failed(doc["_id"], error)
            return False
        return self.finish_if_complete(doc["_id"])

    def finish_if_complete(self, oid):
        """SCORING becomes DONE once both checks have verdicts (atomic, idempotent).

        Returns True when this call made it DONE.
        """
        now = utcnow()
        return bool(self.submissions.update_one(
            {"_id": oid, "processing.state": SCORING, "concordant.pending": False, "original.pending": False,
             "concordant.error": {"$exists": False}, "original.error": {"$exists": False}},
            {"$set": {"processing.state": DONE, "processing.finished_at": now, "processing.updated_at": now}},
        ).modified_count)

    def settle(self, oid):
        """For recovery: a SCORING submission with nothing pending becomes DONE, or FAILED.

        FAILED when a check recorded an error: a crash between writing the
        errored check and marking the failure leaves exactly that state.
        Returns True when this call made it DONE.
        """
        if self.finish_if_complete(oid):
            return True
        now = utcnow()
        self.submissions.update_one(
            {"_id": oid, "processing.state": SCORING, "concordant.pending": False, "original.pending": False,
             "$or": [{"concordant.error": {"$exists": True}}, {"original.error": {"$exists": True}}]},
            {"$set": {"processing.state": FAILED, "processing.finished_at": now, "processing.updated_at": now}},
        )
        return False

    def set_failed(self, oid, error):
        """Mark the submission FAILED with a reason."""
        now = utcnow()
        self.submissions.update_one(
            {"_id": oid},
            {"$set": {"processing.state": FAILED, "processing.error": error,
                      "processing.finished_at": now, "processing.updated_at": now}},
        )

    def fail(self, submission_id, error):
        """End a submission as failed: every pending check gets the reason.

        Checks already judged keep their verdicts; nothing stays pending.
        """
        oid = ObjectId(submission_id)
        doc = self.submissions.find_one({"_id": oid}, {"competition_id": 1, "concordant": 1, "original": 1})
        if doc is None:
            return
        pending = [check for check in CHECKS if (doc.get(check) or PENDING).get("pending", True)]
        for check in pending:
            self.record_check(doc, check, None, error)  # each also marks the submission failed
        if not pending:
            self.set_failed(oid, error)

    # -- originality ----------------------------------------------------------
    def latest_others(self, competition_id, username, created):
        """Everyone else's latest submission created before ``created`` in the round.

        One per other user: ``[{submission_id, username, filename}]``. A
        projected ``find`` grouped here rather than an ``$group`` pipeline:
        the same documents cross the wire, and an in-process stand-in does
        not copy the whole collection first.
        """
        latest = {}
        for doc in self.submissions.find(
                {"competition_id": int(competition_id), "created": {"$lt": created}, "username": {"$ne": username}},
                {"username": 1, "filename": 1, "created": 1}):
            mine = latest.get(doc["username"])
            if mine is None or (doc["created"], doc["_id"]) > (mine["created"], mine["_id"]):
                latest[doc["username"]] = doc
        return [{"submission_id": str(doc["_id"]), "username": doc["username"], "filename": doc["filename"]}
                for doc in latest.values()]

    # -- recovery -------------------------------------------------------------
    def unfinished(self):
        """Accepted submissions not yet done or failed, oldest first."""
        return self.submissions.find(
            {"processing.state": {"$in": [QUEUED, SCORING]}},
            {"processing": 1, "concordant": 1, "original": 1, "created": 1},
        ).sort("created", 1)

    def ensure_indexes(self):
        """Indexes for recovery and for the originality query."""
        self.submissions.create_index([("processing.state", 1)])
        self.submissions.create_index([("competition_id", 1), ("created", -1)])
