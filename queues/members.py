"""Who is in a round: each round's submissions (id, user, file, created), kept current in memory.

Originality compares a candidate with every other user's latest
submission created before it, and the answer must be that of a fresh
query at the instant the check starts: a document the backend inserted
at any time before, even late and with an old id, is compared; a deleted
or rewritten one leaves, or changes, at once.

Reading the round for every check costs the round's size each time, so
a round of N submissions costs N^2. Instead, when the database offers
change streams (a replica set, or SecantusDB), one thread follows a
stream of the submissions' inserts, replacements, deletions and updates
of the four fields that matter here, and keeps each round's members in
memory after one full read of the round. A check then asks "has the
stream caught up with now?" by writing a marker document and waiting
until the stream delivers it: every change committed before the marker
has been applied by then. A check costs one small write, whatever the
round's size, and concurrent checks share it.

Without change streams (a standalone ``mongod``) every check reads the
round's documents instead: exact, but its cost grows with the round. The
log says once which feed is in use. A stream that breaks (a lost
connection, a resume token the database no longer has) is opened again
and every round is read once more in full: nothing the break hid is
missed. Until the stream is open again, checks read the round.
"""
import logging
import threading
import time

import pymongo.errors
from bson import ObjectId

from queues import fields

log = logging.getLogger(__name__)

#: The fields of a submission this module keeps (besides ``_id``).
FIELDS = ("username", "filename", "created", "competition_id")
#: How long a change stream's getMore waits for events before returning empty.
AWAIT_MS = 500
#: With no check waiting, the stream is read at most this often (the events wait on the server).
IDLE_SECONDS = 1.0
#: How often an idle stream thread looks at the stop flag.
STOP_POLL = 0.1
#: How long a check waits for its marker before treating the stream as stuck (a transient error).
MARKER_TIMEOUT = 15.0
#: Seconds between attempts to open a stream after a failure.
REOPEN_SECONDS = 2.0
#: MongoDB error codes that mean "this server has no change streams" (a standalone mongod):
#: 40573 "only supported on replica sets", 115 CommandNotSupported, 136 CappedPositionLost aside.
NO_STREAMS = (40573, 115, 303)
STREAM, READS = "change stream", "reads"
#: Events after which every round must be read again from scratch.
RESET_EVENTS = ("drop", "dropDatabase", "rename", "invalidate")


class StreamStuck(TimeoutError):
    """The change stream did not deliver a check's marker in time (transient: the check is retried)."""


def member_of(doc):
    """The fields kept of one submission document."""
    return {field: doc.get(field) for field in ("_id",) + FIELDS if field in doc}


def latest_before(members, username, created):
    """``(latest, left_out)``: everyone else's latest submission created before ``created``, one per
    other user, and the documents left out because a field cannot be used.

    The latest by ``created``, then ``_id``. A document whose ``created``
    or ``username`` is unusable cannot be placed, so it is left out (and
    the user's latest usable one is compared); a user's latest document
    with an unusable ``filename`` is left out too, and an earlier one does
    not stand in for it, as for a file that cannot be read.
    """
    latest, left_out = {}, []
    for doc in members:
        name = doc.get("username")
        if name == username:
            continue
        bad = fields.malformed(doc, ("username", "created"))
        if bad is not None:
            left_out.append(left_out_entry(doc, *bad))
            continue
        when = doc["created"]
        if not when < created:
            continue
        mine = latest.get(name)
        if mine is None or (when, doc["_id"]) > (mine["created"], mine["_id"]):
            latest[name] = doc
    compared = []
    for doc in latest.values():
        bad = fields.malformed(doc, ("filename",))
        if bad is not None:
            left_out.append(left_out_entry(doc, *bad))
        else:
            compared.append({"submission_id": str(doc["_id"]), "username": doc["username"],
                             "filename": doc["filename"], "created": doc["created"]})
    return compared, left_out


def left_out_entry(doc, field, why):
    """How a check's evidence records a document it left out for an unusable field."""
    name = doc.get("username")
    return {"submission_id": str(doc["_id"]), "username": name if isinstance(name, str) else None,
            "field": field, "reason": why}


class RoundMembers:
    """Rounds' members for originality: ``latest_others`` from any thread, ``loop`` on its own thread.

    ``store`` gives the three database operations: ``watch_members()``
    (a change stream, or raises when the database has none),
    ``round_members(competition_id)`` (a full, projected read) and
    ``write_marker(token)``.
    """

    def __init__(self, store, stop=None, marker_timeout=MARKER_TIMEOUT):
        self.store = store
        self.stop = stop or threading.Event()
        self.marker_timeout = marker_timeout
        self.feed = None           # STREAM while a stream is open and followed, else checks read the round
        self.unavailable = None    # why change streams are not used, once known for good
        self._cv = threading.Condition()
        self._rounds = {}          # competition_id -> {oid: member}, rounds loaded since the stream opened
        self._where = {}           # oid -> competition_id, for the loaded rounds
        self._wanted = set()       # rounds a check asked for, to be read in full by the stream thread
        self._requested = 0        # barrier requests so far
        self._covered = 0          # requests covered by a marker the stream has delivered
        self._writing = False      # a marker write is in flight
        self._issued = 0           # requests covered by markers written or being written
        self._markers = {}         # marker token -> the requests it covers
        self._generation = 0       # counts stream (re)starts: a marker of an earlier one is never seen
        self._demand = threading.Event()  # set when a check needs the stream read now
        self.stats = {"markers": 0, "full_reads": 0, "events": 0}
        self.once = fields.Once()

    # -- checks ------------------------------------------------------------------
    def latest_others(self, competition_id, username, created):
        """Everyone else's latest submission in the round created before ``created``, and who was left out.

        ``([{submission_id, username, filename, created}], [{submission_id,
        username, field, reason}])``, exactly what a fresh query at this
        instant would give; each document left out is logged once.
        """
        members = self._current(fields.round_number(competition_id))
        compared, left_out = latest_before(members, username, created)
        for entry in left_out:
            self.once.warn(entry["submission_id"], entry["reason"])
        return compared, left_out

    def user_ids(self, competition_id, usernames):
        """``{username: [ids]}`` of these users' submissions in the round, as the stream last showed them.

        None unless a followed stream has the round in memory (the caller
        then asks the database); no marker is written, so a very recent
        insert may be missing: the leaderboard writer also reads the ids it
        was told about, and stamps bring back any entry this leaves behind.
        """
        with self._cv:
            members = self._rounds.get(competition_id) if self.feed == STREAM else None
            if members is None:
                return None
            found = {}
            for oid, member in members.items():
                name = member.get("username")
                if fields.usable_name(name) and name in usernames:
                    found.setdefault(name, []).append(oid)
            return found

    def _current(self, competition_id):
        """The round's members as of now: from memory after a marker, or read in full."""
        if self.feed == STREAM:
            try:
                return self._after_marker(competition_id)
            except StreamStuck:
                if self.feed == STREAM:
                    raise  # retried by the worker like any transient fault
                # the stream broke while the check waited: read the round instead
        self.stats["full_reads"] += 1
        return [member_of(doc) for doc in self.store.round_members(competition_id)]

    def _after_marker(self, competition_id):
        """Wait until the stream has delivered a marker written after this call began; the round's members.

        Markers are group-committed. A check that arrives while another's
        marker is being written waits for that write to end (the marker may
        have been written before the check arrived), then one marker is
        written for every check waiting by then, and they all wait for the
        stream to deliver it. A broken stream (its generation changes)
        makes the check start over.
        """
        deadline = time.monotonic() + self.marker_timeout
        while True:
            if time.monotonic() >= deadline:
                raise StreamStuck("the change stream did not catch up within %.0fs" % self.marker_timeout)
            with self._cv:
                generation = self._generation
                if competition_id not in self._rounds:
                    self._wanted.add(competition_id)
                self._requested += 1
                ticket = self._requested
                covers = self._await_or_lead(ticket, generation, deadline)
            if covers is not None:
                self._write_marker(covers)
            with self._cv:
                while self._covered < ticket and self._generation == generation and self.feed == STREAM:
                    self._wait(deadline)
                if self.feed != STREAM:
                    raise StreamStuck("the change stream broke while a check waited for it")
                if self._generation == generation and competition_id in self._rounds:
                    return list(self._rounds[competition_id].values())

    def _await_or_lead(self, ticket, generation, deadline):
        """(Lock held.) The requests this caller's marker must cover when it is to write one, else None:
        a marker covering ``ticket`` is already written or being written."""
        while self._covered < ticket and self._generation == generation:
            if self._issued >= ticket:
                return None
            if not self._writing:
                self._writing = True
                self._issued = self._requested
                return self._issued
            self._wait(deadline)
        return None

    def _wait(self, deadline):
        """Wait on the condition (its lock held) until notified; StreamStuck past ``deadline``."""
        if not self._cv.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
            raise StreamStuck("the change stream did not deliver a marker within %.0fs" % self.marker_timeout)

    def _write_marker(self, covers):
        """Write a fresh marker covering requests up to ``covers`` (this thread leads the group)."""
        token = ObjectId()
        written = False
        try:
            with self._cv:
                self._markers[token] = covers
            self.store.write_marker(token)
            written = True
            self.stats["markers"] += 1
            self._demand.set()
        finally:
            with self._cv:
                self._writing = False
                if not written:  # nobody waits on a marker that was never written: the next check leads
                    self._markers.pop(token, None)
                    self._issued = self._covered
                self._cv.notify_all()

    # -- the stream thread ---------------------------------------------------------
    def loop(self):
        """Follow the change stream until stopped; reopen it (and read rounds again) after a break."""
        while not self.stop.is_set() and self.unavailable is None:
            try:
                self._follow()
            except Exception as exc:  # a break: the next stream starts from a full read
                if self.unavailable is not None:
                    break
                log.warning("members: the change stream broke (%s: %s); reopening it, and rounds are read in full "
                            "again", type(exc).__name__, exc)
                self._reset(None)
                self.stop.wait(REOPEN_SECONDS)
        self.stop.wait()

    def _follow(self):
        """Open the stream, then apply events and load wanted rounds until stopped."""
        try:
            stream = self.store.watch_members(AWAIT_MS)
        except (pymongo.errors.OperationFailure, NotImplementedError, TypeError, AttributeError) as exc:
            if isinstance(exc, pymongo.errors.OperationFailure) and exc.code not in NO_STREAMS:
                raise
            self.unavailable = "%s: %s" % (type(exc).__name__, exc)
            log.warning("members: the database has no change streams (%s); each originality check reads its "
                        "round's documents instead, a cost that grows with the round (a replica set avoids it)",
                        self.unavailable)
            raise
        with stream:
            self._reset(STREAM)
            log.info("members: following a change stream of the submissions; each round is read in full once")
            while not self.stop.is_set():
                self._load_wanted()
                self._demand.clear()
                event = stream.try_next()
                if event is not None:
                    if not self._apply(event) or self._waiting():
                        continue
                # caught up with every marker written: asking again now would only find the database's
                # next write (a getMore returns, empty, whenever the database writes anything else)
                self._idle()

    def _waiting(self):
        """Whether a check waits for a marker not delivered yet, or for a round to be read."""
        with self._cv:
            return bool(self._markers or self._wanted)

    def _idle(self):
        """Wait until a check needs the stream read, the quiet spell is over, or the service stops."""
        deadline = time.monotonic() + IDLE_SECONDS
        while not (self._demand.is_set() or self.stop.is_set()) and time.monotonic() < deadline:
            self._demand.wait(STOP_POLL)

    def _reset(self, feed):
        """Forget every round (they are read again), and set the feed."""
        with self._cv:
            self.feed = feed
            self._generation += 1
            self._rounds.clear()
            self._where.clear()
            self._markers.clear()
            self._issued = self._covered = self._requested
            self._cv.notify_all()

    def _load_wanted(self):
        """Read in full every round a check asked for (on this thread, so no event is applied meanwhile)."""
        with self._cv:
            wanted, self._wanted = self._wanted, set()
        for competition_id in wanted:
            if competition_id in self._rounds:
                continue
            members = {}
            for doc in self.store.round_members(competition_id):
                members[doc["_id"]] = member_of(doc)
            self.stats["full_reads"] += 1
            with self._cv:
                self._rounds[competition_id] = members
                for oid in members:
                    self._where[oid] = competition_id

    def _apply(self, event):
        """Bring memory in line with one change event; True when it was a marker."""
        self.stats["events"] += 1
        kind = event.get("operationType")
        if kind in RESET_EVENTS:
            log.info("members: %s in the database; every round is read again", kind)
            self._reset(STREAM)
            return False
        if event.get("ns", {}).get("coll") != "submissions":
            self._marker_seen(event)
            return True
        oid = (event.get("documentKey") or {}).get("_id")
        if kind in ("insert", "replace"):
            self._place(member_of(event.get("fullDocument") or {"_id": oid}))
        elif kind == "delete":
            self._remove(oid)
        elif kind == "update":
            self._update(oid, event.get("updateDescription") or {})
        return False

    def _marker_seen(self, event):
        """A marker came through: load the rounds asked for (the read includes everything the marker
        follows), then release the checks it covers."""
        self._load_wanted()
        token = (event.get("fullDocument") or {}).get("token") or \
            ((event.get("updateDescription") or {}).get("updatedFields") or {}).get("token")
        with self._cv:
            covers = self._markers.pop(token, None)
            if covers is not None and covers > self._covered:
                self._covered = covers
                self._cv.notify_all()

    def _place(self, member):
        """Put a member in its round (if that round is loaded), out of any other."""
        with self._cv:
            self._remove_locked(member["_id"])
            competition_id = fields.round_number(member.get("competition_id"))
            if competition_id in self._rounds:
                self._rounds[competition_id][member["_id"]] = member
                self._where[member["_id"]] = competition_id

    def _remove(self, oid):
        with self._cv:
            self._remove_locked(oid)

    def _remove_locked(self, oid):
        competition_id = self._where.pop(oid, None)
        if competition_id is not None:
            self._rounds[competition_id].pop(oid, None)

    def _update(self, oid, change):
        """Apply changed or removed fields; a document moved into a loaded round is read by its id."""
        updated = {key: value for key, value in (change.get("updatedFields") or {}).items() if key in FIELDS}
        removed = [key for key in change.get("removedFields") or () if key in FIELDS]
        with self._cv:
            competition_id = self._where.get(oid)
            member = dict(self._rounds[competition_id][oid]) if competition_id is not None else None
        if member is None:
            if fields.round_number(updated.get("competition_id")) not in self._rounds:
                return  # neither in a loaded round before nor after
            found = self.store.round_member(oid)
            if found is not None:
                self._place(member_of(found))
            return
        member.update(updated)
        for key in removed:
            member.pop(key, None)
        self._place(member)
