"""The submission's state machine, kept in the MongoDB documents the backend shares with us.

This module names the states and holds every transition. Each transition
is ONE conditional ``update_one`` on the submission document that writes
the step's whole outcome and moves the state together, so a crash at any
instant leaves either the state before the step or the state after it:

    (backend inserts)  --accept-->  QUEUED  --dispatched-->  SCORING  --judged-->  DONE
                                       |                        |
                                       +--------failed----------+------------->  FAILED

Work is owned through a lease in ``processing.lease``: ``{owner, token,
expires}``. ``claim`` takes a submission whose lease is absent or expired
and gives it a fresh token (``processing.fence`` counts claims); every
later write of that work is conditioned on the token, so a stale worker
(a paused thread, a killed-and-restarted process, a slow retry) can
never overwrite a newer one. A write that matches nothing raises
:class:`LeaseLost`.

Every transition that can change what the round's leaderboard shows
also stamps ``processing.board`` with a fresh id; the leaderboard writer
clears the stamp once the entry is in line, so a crash between the two
is found and finished by the recovery sweep.
"""
import dataclasses
import datetime
import logging
import os
import socket

import pymongo.errors
from bson import ObjectId

from queues.fields import round_number, shown, usable_name

log = logging.getLogger(__name__)

QUEUED, SCORING, DONE, FAILED = "queued", "scoring", "done", "failed"
#: States in which a submission still has work to do.
ACTIVE = (QUEUED, SCORING)
#: States in which a submission has a verdict (or a failure) recorded.
SETTLED = (DONE, FAILED)
CHECKS = ("concordant", "original")
PENDING = {"pending": True}
#: The leaderboard entry field holding the revision of the submission it shows.
REV = "criteria_rev"
#: Fields a judgement writes: a re-score keeps them in ``history`` before judging again.
JUDGED_FIELDS = ("consistency", "validationLogloss", "concordant", "original", "evidence", "provenance")
#: Fields of a submission the leaderboard is built from.
BOARD_FIELDS = {"username": 1, "competition_id": 1, "created": 1, "consistency": 1, "validationLogloss": 1,
                "concordant": 1, "original": 1, "processing.dispatched": 1, "processing.board": 1,
                "processing.rev": 1}


#: The most ids one ``$in`` of the leaderboard's reads and stamp clearing carries (see ``board_docs``).
IDS_PER_COMMAND = 25

#: Fields of a submission that say which round it is in, whose it is and when it came.
MEMBER_FIELDS = {"username": 1, "filename": 1, "created": 1, "competition_id": 1}
#: The service's own collection of markers: a write there tells a change stream's reader it has caught up.
MARKERS = "criteria_markers"


class LeaseLost(Exception):
    """A write found its lease gone: someone else owns the submission now."""


def utcnow():
    """Naive UTC at millisecond precision, exactly as MongoDB will store it."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def owner_name(port=0):
    """Who holds a lease: host, port and process id, so a restart can tell its own dead leases."""
    return "%s:%s:%d" % (socket.gethostname(), port, os.getpid())


def owner_prefix(owner):
    """What every process of the same server (host and port) puts before its pid in :func:`owner_name`."""
    return owner.rsplit(":", 1)[0] + ":"


def is_pending(doc, check):
    """A check counts as pending unless the document records a verdict for it."""
    return (doc.get(check) or PENDING).get("pending", True)


def verdict(value, error=None):
    """A check's field as the backend reads it."""
    found = {"pending": False, "value": value}
    if error is not None:
        found["error"] = error
    return found


@dataclasses.dataclass
class Claim:
    """A lease on one submission: its fencing token and the document as claimed.

    ``pending`` is the set of checks still to judge under this claim (empty
    until the submission is dispatched).
    """

    doc: dict
    token: ObjectId

    def __post_init__(self):
        self.pending = set(check for check in CHECKS if is_pending(self.doc, check)) if self.dispatched else set(CHECKS)

    @property
    def oid(self):
        return self.doc["_id"]

    @property
    def submission_id(self):
        return str(self.doc["_id"])

    @property
    def dispatched(self):
        processing = self.doc.get("processing") or {}
        return processing.get("state") == SCORING and bool(processing.get("dispatched"))


class Store:
    """The submission documents (their state machine, round members and leaderboard stamps); ``owner`` names
    this process's leases. The competition documents are :class:`queues.competitions.Competitions`'."""

    def __init__(self, db, owner=None, lease_seconds=30.0):
        self.db = db
        self.submissions = db.submissions
        self.markers = getattr(db, MARKERS)
        self.owner = owner or owner_name()
        self.lease_seconds = lease_seconds
        self.notify = None  # a queues.notify.Recorder when webhooks are on: settling writes carry their event

    def _lease(self, token, now):
        return {"owner": self.owner, "token": token,
                "expires": now + datetime.timedelta(seconds=self.lease_seconds)}

    def _held(self, claim):
        """The filter every write of a claimed step carries: the claim's token still holds."""
        return {"_id": claim.oid, "processing.lease.token": claim.token}

    # -- intake -------------------------------------------------------------
    def accept_many(self, submission_ids, token):
        """Record a batch of submissions as queued and leased to this process; one answer per id.

        Only documents not already queued or being scored move to QUEUED,
        in one conditional ``update_many`` that stamps them with ``token``
        (the batch's lease). When it moved every id, that is the whole
        answer (one round trip); otherwise reading the tokens back tells
        which ids this call queued ('queued'), which were in the pipeline
        already ('already') and which do not exist ('missing'). An id
        repeated within the batch is queued once; repeats say 'already'.
        The acceptance is the submission's first claim (``attempts`` 1):
        the dispatcher carries on under the same lease.
        """
        oids = [ObjectId(sid) for sid in submission_ids]
        unique = list(dict.fromkeys(oids))
        now = utcnow()
        try:
            moved = self.submissions.update_many({"_id": {"$in": unique}, "processing.state": {"$nin": list(ACTIVE)}},
                                                 self._accepting(token, now)).modified_count
        except pymongo.errors.WriteError:  # a 'processing' that is not an object stopped it part-way
            moved = None
        if moved == len(unique):  # the usual case: every id was new to the pipeline
            found = dict.fromkeys(unique, True)
        else:
            found = {doc["_id"]: self._accepted_one(doc, token, now, retry=moved is None)
                     for doc in self.submissions.find({"_id": {"$in": unique}}, {"processing": 1})}
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

    def _accepting(self, token, now):
        """The acceptance's update: queued and leased to ``token``.

        The error of a judgement it replaces (a re-POST) stays until the
        next transition keeps that judgement in ``history`` whole (the
        status reports an error only for a failed submission).
        """
        return {"$set": {"processing.state": QUEUED, "processing.queued_at": now, "processing.updated_at": now,
                         "processing.attempts": 1, "processing.lease": self._lease(token, now)},
                "$inc": {"processing.fence": 1}}

    def _accepted_one(self, doc, token, now, retry):
        """Whether this call queued ``doc`` (read back after a batch that did not move every id).

        A ``processing`` that is not an object (``null``, text: the backend's)
        cannot take the batch's dotted update and stops it; it is the
        service's own field, so it is replaced whole, conditioned on the
        value read. After such a stop (``retry``), each document the batch did
        not reach is accepted on its own.
        """
        processing = doc.get("processing")
        if "processing" in doc and not isinstance(processing, dict):
            log.warning("%s: processing was %s, not an object; replaced (the field is the service's own)",
                        doc["_id"], shown(processing))
            fresh = {"state": QUEUED, "queued_at": now, "updated_at": now, "attempts": 1,
                     "lease": self._lease(token, now), "fence": 1}
            return bool(self.submissions.update_one({"_id": doc["_id"], "processing": processing},
                                                    {"$set": {"processing": fresh}}).modified_count)
        if ((processing or {}).get("lease") or {}).get("token") == token:
            return True
        if retry and (processing or {}).get("state") not in ACTIVE:
            return bool(self.submissions.update_one({"_id": doc["_id"], "processing.state": {"$nin": list(ACTIVE)}},
                                                    self._accepting(token, now)).modified_count)
        return False

    def get(self, submission_id):
        """The submission document, or None."""
        return self.submissions.find_one({"_id": ObjectId(submission_id)})

    def ping(self):
        """Raise unless the database answers."""
        self.db.command("ping")

    # -- leases ---------------------------------------------------------------
    def claim(self, submission_id, token=None, owner=None):
        """Lease an active submission to this process; the :class:`Claim`, or None.

        A submission this process already leases (``token``: the intake's
        lease, or a re-score's) is claimed by reading it back under that
        lease: one round trip, and the token keeps fencing every later
        write. Otherwise (or when that lease was taken over meanwhile) it is
        taken when ``owner`` holds it (a dead process of this server's, see
        :meth:`orphaned_owners`), or when it has no lease or an expired one: a conditional ``update_one`` on its ``_id``
        giving it a fresh token (``fence`` and ``attempts`` count claims),
        then a read back by that token, which also tells the lease is still
        ours. A ``findAndModify``, or an ``$or`` at the top of the filter,
        would make SecantusDB scan the whole collection instead.
        """
        oid = ObjectId(submission_id)
        if token is not None:
            doc = self.submissions.find_one({"_id": oid, "processing.state": {"$in": list(ACTIVE)},
                                             "processing.lease.token": token})
            if doc is not None:
                return Claim(doc, token)
        now = utcnow()
        fresh = ObjectId()
        conditions = [{"processing.lease.owner": owner}] if owner is not None else []
        # no lease, or one without a future expiry (the service always writes one)
        conditions.append({"processing.lease.expires": {"$not": {"$gt": now}}})
        update = {"$set": {"processing.lease": self._lease(fresh, now), "processing.updated_at": now},
                  "$inc": {"processing.fence": 1, "processing.attempts": 1}}
        for condition in conditions:
            held = {"_id": oid, "processing.state": {"$in": list(ACTIVE)}, **condition}
            if self.submissions.update_one(held, update).matched_count:
                doc = self.submissions.find_one({"_id": oid, "processing.lease.token": fresh})
                return None if doc is None else Claim(doc, fresh)
        return None

    def extend(self, tokens):
        """Push back the expiry of every lease in ``tokens`` (one write for all); returns how many."""
        if not tokens:
            return 0
        now = utcnow()
        return self.submissions.update_many(
            {"processing.lease.token": {"$in": list(tokens)}},
            {"$set": {"processing.lease.expires": now + datetime.timedelta(seconds=self.lease_seconds)}},
        ).modified_count

    def release(self, tokens, oid=None):
        """Give leases up now (shutting down, or giving up for a while): anyone may claim them.

        An intake's token is shared by the batch it accepted, so giving up
        one submission names its ``oid`` too. Returns how many were released.
        """
        if not tokens:
            return 0
        held = {"processing.lease.token": {"$in": list(tokens)}}
        if oid is not None:
            held["_id"] = oid
        return self.submissions.update_many(held, {"$set": {"processing.lease.expires": utcnow()}}).modified_count

    def claimable(self, limit, owners=(), within=None):
        """Ids of active submissions nobody holds (or held by ``owners``), oldest first.

        ``within`` narrows the search (a re-score looks only at its own run's).
        """
        now = utcnow()
        free = [{"processing.lease": None}, {"processing.lease.expires": {"$lte": now}}]
        if owners:
            free.append({"processing.lease.owner": {"$in": list(owners)}})
        found = self.submissions.find({**(within or {}), "processing.state": {"$in": list(ACTIVE)}, "$or": free},
                                      {"created": 1, "processing.lease.owner": 1}).sort("created", 1).limit(limit)
        return [(str(doc["_id"]), ((doc.get("processing") or {}).get("lease") or {}).get("owner")) for doc in found]

    def orphaned_owners(self, prefix, alive):
        """Lease owners named ``prefix`` + pid whose process is not ``alive(pid)``: a restart's dead self."""
        owners = self.submissions.distinct("processing.lease.owner", {"processing.state": {"$in": list(ACTIVE)}})
        return [owner for owner in owners if self.is_dead_self(owner, prefix, alive)]

    def is_dead_self(self, owner, prefix, alive):
        """True for ``prefix`` + pid, not this process, when ``alive(pid)`` says that process is gone."""
        if not (isinstance(owner, str) and owner.startswith(prefix)) or owner == self.owner:
            return False
        pid = owner[len(prefix):]
        return pid.isdigit() and not alive(int(pid))

    # -- transitions ----------------------------------------------------------
    def _write(self, claim, fields, unset=None):
        """One conditional update under the claim's lease; LeaseLost when it no longer holds.

        Each also counts ``processing.rev``, the submission's revision, which
        orders what the leaderboard shows of it. A write that settles the
        submission records the claim's token in ``processing.settled_by``, so
        a retry after an answer lost in transit can tell that its own write
        landed rather than someone else's.
        """
        update = {"$set": fields, "$inc": {"processing.rev": 1}}
        if unset:
            update["$unset"] = dict.fromkeys(unset, "")
        replaced = self._replaced(claim)
        if replaced is not None:  # the same entry whatever the retry: $addToSet keeps it once
            update["$addToSet"] = {"history": replaced}
        if self.submissions.update_one(self._held(claim), update).matched_count:
            return
        settling = "processing.settled_by" in fields
        if settling and self.submissions.find_one({"_id": claim.oid, "processing.settled_by": claim.token}, {"_id": 1}):
            return
        raise LeaseLost("%s: the lease was taken over; this worker's result is dropped" % claim.submission_id)

    @staticmethod
    def _replaced(claim):
        """The judgement a re-POST replaces, for ``history``, when this is the claim's first transition.

        A submission accepted again after it was settled still holds its
        last judgement (verdicts, consistency, error, evidence,
        provenance); the first transition of the new claim keeps it, in the
        same write, as a re-score does, unless a re-score already kept it
        (its history ends with that judgement). None otherwise.
        """
        doc = claim.doc
        processing = doc.get("processing") or {}
        finished = processing.get("finished_at")
        if processing.get("state") != QUEUED or finished is None:
            return None
        history = doc.get("history") or []
        if history and isinstance(history[-1], dict) and history[-1].get("finished_at") == finished:
            return None
        kept = {field: doc[field] for field in JUDGED_FIELDS if field in doc}
        error = processing.get("error")
        kept.update(run=None, state=FAILED if error else DONE, error=error, finished_at=finished,
                    replaced_at=processing.get("queued_at"))
        return kept

    def dispatched(self, claim, consistency, logloss, evidence=None):
        """QUEUED -> SCORING: consistency, logloss where the backend gave none, both checks pending.

        ``evidence`` holds further fields of the same step (its evidence and provenance).
        """
        now = utcnow()
        fields = dict(evidence or {})
        fields.update({"consistency": consistency, "concordant": PENDING, "original": PENDING, "processing.error": None,
                       "processing.state": SCORING, "processing.dispatched": True, "processing.dispatched_at": now,
                       "processing.updated_at": now, "processing.board": ObjectId(),
                       "processing.lease.expires": now + datetime.timedelta(seconds=self.lease_seconds)})
        if claim.doc.get("validationLogloss") is None:
            fields["validationLogloss"] = logloss
        self._write(claim, fields)
        claim.doc.update(consistency=consistency, concordant=PENDING, original=PENDING)
        claim.doc.setdefault("validationLogloss", logloss)
        claim.doc["processing"].update(state=SCORING, dispatched=True)
        claim.pending = set(CHECKS)

    def judged(self, claim, verdicts, evidence=None):
        """SCORING -> DONE: every check still pending under the claim gets its verdict at once."""
        missing = claim.pending - set(verdicts)
        if missing:
            raise ValueError("judged() needs a verdict for %s" % ", ".join(sorted(missing)))
        now = utcnow()
        fields = dict(evidence or {})
        fields.update({check: verdict(value) for check, value in verdicts.items()})
        fields.update({"processing.state": DONE, "processing.finished_at": now, "processing.updated_at": now,
                       "processing.board": ObjectId(), "processing.settled_by": claim.token})
        if self.notify is not None:  # the webhook event, in the same write
            fields.update(self.notify.judged(claim.doc, fields, now))
        self._write(claim, fields, unset=["processing.lease"])
        if self.notify is not None:
            self.notify.wake()

    def failed(self, claim, reason, verdicts=None, evidence=None):
        """QUEUED or SCORING -> FAILED with ``reason``; no check is left pending.

        Verdicts reached under the claim are kept; every other pending
        check records the reason. A submission that fails before dispatch
        stays off the leaderboard; one that passed dispatch before (a
        re-POST) stays its user's candidate, showing the failure.
        """
        now = utcnow()
        verdicts = verdicts or {}
        fields = dict(evidence or {})
        fields.update({"processing.state": FAILED, "processing.error": reason, "processing.finished_at": now,
                  "processing.updated_at": now, "processing.board": ObjectId(), "processing.settled_by": claim.token})
        for check in CHECKS:
            if check in verdicts:
                fields[check] = verdict(verdicts[check])
            elif not claim.dispatched or check in claim.pending:
                fields[check] = verdict(None, reason)
        if not (claim.doc.get("processing") or {}).get("dispatched"):
            fields["processing.dispatched"] = False  # never shown on the leaderboard
        if self.notify is not None:  # the webhook event, in the same write
            fields.update(self.notify.judged(claim.doc, fields, now))
        self._write(claim, fields, unset=["processing.lease"])
        if self.notify is not None:
            self.notify.wake()

    def rescore(self, doc, run, token):
        """DONE or FAILED -> QUEUED for re-score ``run``; the judgement it replaces goes to ``history``.

        One write, conditioned on the revision ``doc`` was read at, so the
        copy kept is exactly what it replaces, and on the document not
        carrying ``run`` yet, so a run re-queues a submission at most once
        however often it is resumed. The contract fields stay as they are
        until the dispatcher's transition marks the checks pending again.
        The submission is leased to this process (``token``) like an intake's.
        True when this call moved it.
        """
        processing = doc.get("processing") or {}
        now = utcnow()
        kept = {field: doc[field] for field in JUDGED_FIELDS if field in doc}
        kept.update(run=run, state=processing.get("state"), error=processing.get("error"),
                    finished_at=processing.get("finished_at"), replaced_at=now)
        moved = self.submissions.update_one(
            {"_id": doc["_id"], "processing.state": {"$in": list(SETTLED)}, "processing.rev": processing.get("rev"),
             "processing.rescore": {"$ne": run}},
            {"$set": {"processing.state": QUEUED, "processing.queued_at": now, "processing.updated_at": now,
                      "processing.attempts": 1, "processing.error": None, "processing.rescore": run,
                      "processing.lease": self._lease(token, now)},
             "$push": {"history": kept},
             "$inc": {"processing.fence": 1, "processing.rev": 1}})
        return bool(moved.modified_count)

    # -- re-score runs: the open one lives in the competition document ----------
    def round_exists(self, competition_id):
        """True when any submission belongs to the round."""
        return self.submissions.find_one({"competition_id": int(competition_id)}, {"_id": 1}) is not None

    def members_among(self, competition_id, submission_ids):
        """Which of these ids are submissions of the round."""
        return {str(doc["_id"]) for doc in self.submissions.find(
            {"competition_id": int(competition_id), "_id": {"$in": [ObjectId(sid) for sid in submission_ids]}},
            {"_id": 1})}

    def settled(self, within):
        """Every settled submission matching ``within``, oldest first (whole documents)."""
        return list(self.submissions.find({**within, "processing.state": {"$in": list(SETTLED)}})
                    .sort([("created", 1), ("_id", 1)]))

    def rescore_candidates(self, scope, run, limit):
        """Settled submissions of the run's scope it has not re-queued yet, oldest first (whole documents)."""
        return list(self.submissions.find({**scope, "processing.state": {"$in": list(SETTLED)},
                                           "processing.rescore": {"$ne": run}}).sort("created", 1).limit(limit))

    def rescore_left(self, scope, run):
        """How many submissions of the scope the run has still to re-queue or see settled."""
        unmarked = self.submissions.count_documents({**scope, "processing.state": {"$exists": True},
                                                     "processing.rescore": {"$ne": run}})
        unsettled = self.submissions.count_documents({**scope, "processing.rescore": run,
                                                      "processing.state": {"$in": list(ACTIVE)}})
        return unmarked + unsettled

    def rescored(self, competition_id, run):
        """Every submission of the round that ``run`` re-queued, with its history."""
        return list(self.submissions.find({"competition_id": int(competition_id), "history.run": run}))

    # -- originality's round members (see queues.members) ---------------------------
    def round_members(self, competition_id):
        """Every submission of the round: ``[{_id, username, filename, created, competition_id}]``."""
        return list(self.submissions.find({"competition_id": int(competition_id)}, MEMBER_FIELDS))

    def round_member(self, oid):
        """One submission's member fields, or None."""
        return self.submissions.find_one({"_id": oid}, MEMBER_FIELDS)

    def watch_members(self, await_ms):
        """A change stream of what can change a round's members, and of the markers.

        Inserts, replacements and deletions of submissions, updates that
        set or remove one of the member fields, the markers, and the events
        after which everything must be read again. Raises when the
        database has no change streams.
        """
        fields = [name for name in MEMBER_FIELDS if name != "_id"]
        changed = [{"updateDescription.updatedFields.%s" % name: {"$exists": True}} for name in fields]
        pipeline = [{"$match": {"$or": [
            {"operationType": {"$in": ["drop", "dropDatabase", "rename", "invalidate"]}},
            {"ns.coll": MARKERS},
            {"ns.coll": "submissions", "$or": [{"operationType": {"$in": ["insert", "replace", "delete"]}},
                                               {"updateDescription.removedFields": {"$in": fields}}] + changed},
        ]}}]
        return self.db.watch(pipeline, max_await_time_ms=await_ms)

    def write_marker(self, token):
        """Write marker ``token`` (one small document): the change stream delivers it after everything before."""
        self.markers.update_one({"_id": "members"}, {"$set": {"token": token}}, upsert=True)

    # -- leaderboard (see queues.leaderboard) ----------------------------------------
    def board_submissions(self, competition_id, usernames):
        """Every submission of these users in the round, with what the leaderboard shows of it."""
        return list(self.submissions.find(
            {"competition_id": int(competition_id), "username": {"$in": list(usernames)}}, BOARD_FIELDS))

    def round_board_docs(self, competition_id):
        """Every submission of the round, with what the leaderboard shows of it (the reconciliation's read)."""
        return list(self.submissions.find({"competition_id": int(competition_id)}, BOARD_FIELDS))

    def board_docs(self, oids):
        """These submissions (by ``_id``), with what the leaderboard shows of them.

        Read in commands of at most ``IDS_PER_COMMAND`` ids: SecantusDB's
        cost for an ``$in`` grows faster than its length (on 1,000 documents
        of 3 KB, 16 ms for 100 ids, 284 ms for 500; the stamp clearing's two
        lists cost 69 ms for 100 pairs in one command, 25 ms in four), so
        many short lists cost less than one long one.
        """
        oids = list(oids)
        return [doc for start in range(0, len(oids), IDS_PER_COMMAND)
                for doc in self.submissions.find({"_id": {"$in": oids[start:start + IDS_PER_COMMAND]}}, BOARD_FIELDS)]

    def clear_board_stamps(self, stamps):
        """Clear leaderboard stamps ``[(oid, stamp)]`` unless a newer transition re-stamped them.

        Every stamp is a fresh id written to one document only, so "its id
        is listed and its stamp is listed" is "it still carries its own
        listed stamp", and the filter needs no ``$or`` of pairs (with which
        SecantusDB scans the whole collection rather than look the ids up).
        Sent in commands of at most ``IDS_PER_COMMAND`` pairs, as ``board_docs``.
        """
        stamps = list(stamps)
        for start in range(0, len(stamps), IDS_PER_COMMAND):
            chunk = stamps[start:start + IDS_PER_COMMAND]
            self.submissions.update_many(
                {"_id": {"$in": [oid for oid, _ in chunk]}, "processing.board": {"$in": [stamp for _, stamp in chunk]}},
                {"$unset": {"processing.board": ""}})

    def stamped(self, limit):
        """``{(round, username, _id, stamp)}`` of submissions whose leaderboard change is not yet confirmed.

        The round and user are None when the document holds none the
        service can use (see :mod:`queues.fields`): such a submission is on
        no leaderboard.
        """
        found = self.submissions.find({"processing.board": {"$exists": True}},
                                      {"competition_id": 1, "username": 1, "processing.board": 1}).limit(limit)
        return {(round_number(doc.get("competition_id")),
                 doc["username"] if usable_name(doc.get("username")) else None, doc["_id"],
                 doc["processing"]["board"]) for doc in found}

    def ensure_indexes(self):
        """Indexes for the recovery sweep, the leaderboard and originality's round query."""
        self.submissions.create_index([("processing.state", 1), ("created", 1)])
        self.submissions.create_index([("processing.lease.token", 1)], sparse=True)
        self.submissions.create_index([("processing.board", 1)], sparse=True)
        self.submissions.create_index([("competition_id", 1), ("username", 1)])
        self.submissions.create_index([("competition_id", 1), ("_id", 1)])
