"""Keeps each round's leaderboard in line with its submissions, in few, cheap, conditional writes.

A user's entry shows that user's newest submission (by ``created``, then
``_id``) that has passed dispatch, with that submission's ``concordant``
and ``original``. Transitions only say *which* entries may have changed
(:meth:`Leaderboard.touch`); the writer works out what each entry should
be from a fresh read of those users' submissions and writes every change
of a round in one update.

**Why a write is never stale.** The writer keeps a copy of each round's
entries as it last read or wrote them. It reads the submissions *after*
that copy was taken, so what it read is at least as new as whatever any
entry in the copy was made from. Each write is conditioned on the whole
array still being exactly as the copy says: if anyone changed any of it
meanwhile (another server's writer, the backend), the write matches
nothing, the copy is dropped, and the writer reads the entries and then the submissions
again. So an entry is only ever replaced by something made from newer
data, and the writer may simply write whatever differs: a newer
submission, a new verdict, an entry pointing at a deleted or rewritten
submission (a rewritten document starts its revisions again, which a
rule "only a higher revision" would never show). A write that matched
less than it meant to is never followed by clearing the stamps.

**What it costs.** Measured on SecantusDB with 1,000 entries, one write
of the whole array, conditioned on the whole array, cost the database
about 80 ms, whatever it changed; a write by position (``leaderboard.17.x``,
conditioned on the user, submission and revision at each changed
position) cost more than that even for one entry, and about 2 ms more
for each further one. So the writer replaces the whole array, and falls
back to a write by position only on its second try: that one lands even
while something elsewhere in the board keeps changing. Both cost the database about
the same whatever they carry, so writes are grouped, and the writer
paces itself by what its own calls cost: after a batch that kept the
database busy for ``t`` seconds it waits ``t (1 - share) / share`` (and
at least ``interval``) before the next, so it never takes more than
``share`` of the database's time, however large the round. A change
after a quiet spell is written at once.

Only the fields the service owns change (``submission_id``, ``logloss``,
``concordant``, ``original``, ``criteria_rev``; ``earnings`` when an entry
is first made); every other field goes back as read, and a backend write
that lands between the read and the write makes the write match nothing,
so it is never lost. After a write, the ``processing.board`` stamps of
the submissions read are cleared unless a newer transition re-stamped
them; the recovery sweep re-touches any stamp a crash left behind.
"""
import collections
import datetime
import logging
import threading
import time

from queues.competitions import Competitions
from queues.fields import round_number, usable_name
from queues.store import PENDING, REV

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
RETRY_SECONDS = 1.0
#: Least seconds from the start of one write to the start of the next.
WRITE_INTERVAL = 1.0
#: The largest share of the database's time the writer lets itself take.
WRITE_SHARE = 0.1
#: The owned fields of an entry, which the writer compares and writes.
OWNED = ("submission_id", "logloss", "concordant", "original", REV)
#: Seconds between two reconciliations of a round (a whole read of its entries and submissions).
RECONCILE_SECONDS = 300.0
#: A round the writer has not touched for this long is no longer reconciled.
ACTIVE_SECONDS = 6 * 3600.0


def order(doc):
    return (doc["created"], doc["_id"])


def shown(doc):
    """Whether a submission may be what its user's entry shows: it passed dispatch and has a time.

    A document whose ``created`` is not a date (the backend's) cannot be
    ordered, so it is never shown; the user's other submissions are.
    """
    processing = doc.get("processing")
    return (isinstance(processing, dict) and bool(processing.get("dispatched"))
            and isinstance(doc.get("created"), datetime.datetime))


def newest(docs):
    """The newest document (by created, then _id) of those that may be shown, or None."""
    return max((doc for doc in docs if shown(doc)), key=order, default=None)


def desired_entry(doc):
    """The owned fields of an entry that shows submission ``doc``."""
    return {"submission_id": doc["_id"],
            "logloss": {"validation": doc.get("validationLogloss"), "consistency": doc.get("consistency")},
            "concordant": doc.get("concordant") or PENDING,
            "original": doc.get("original") or PENDING,
            REV: doc["processing"].get("rev", 0)}


def owned(entry):
    """The owned fields of an entry as stored (None for a missing one)."""
    return {key: entry.get(key) for key in OWNED}


class Copy:
    """The writer's copy of a round's entries: position by position, as last read or written."""

    def __init__(self, entries):
        self.raw = list(entries)  # exactly as stored: what a whole-array write is conditioned on
        self.entries = [dict(entry) if isinstance(entry, dict) else {} for entry in entries]
        self.position = {}
        for number, entry in enumerate(self.entries):
            if usable_name(entry.get("username")):
                self.position.setdefault(entry["username"], number)

    def __len__(self):
        return len(self.entries)


class Leaderboard:
    """The writer: ``touch`` from any thread, ``loop`` on its own.

    ``store`` reads the submissions and clears their stamps;
    ``competitions`` reads and writes the entries (by default on the
    store's database).

    ``members`` (optional) tells which submissions each user has in a
    round, so the writer reads them by ``_id``; without it, or before the
    round is known, it asks for the users' submissions by name.
    """

    def __init__(self, store, stop, interval=WRITE_INTERVAL, share=WRITE_SHARE, members=None, clock=time.monotonic,
                 metrics=None, reconcile_seconds=RECONCILE_SECONDS, competitions=None):
        self.store = store
        self.competitions = competitions if competitions is not None else Competitions(store.db, store.owner)
        self.stop = stop
        self.interval = interval
        self.share = share
        self.members = members
        self.clock = clock
        self.metrics = metrics
        self.reconcile_seconds = reconcile_seconds
        self._dirty = collections.defaultdict(dict)
        self._changed = threading.Condition()
        self._copies = {}
        self._active = {}      # round -> clock() of its last touch
        self._reconciled = {}  # round -> clock() of its last reconciliation
        self.writes = 0
        self.spent = 0.0

    def touch(self, competition_id, username, submission_id=None):
        """Note that ``username``'s entry in round ``competition_id`` may be out of line (``submission_id`` changed).

        A round or user the service cannot use (see :mod:`queues.fields`) has no entry to bring in line.
        """
        competition_id = round_number(competition_id)
        if competition_id is None or not usable_name(username):
            return
        with self._changed:
            self._active.setdefault(competition_id, self.clock())
            ids = self._dirty[competition_id].setdefault(username, set())
            if submission_id is not None:
                ids.add(submission_id)
            self._changed.notify()

    def pending(self):
        with self._changed:
            return sum(len(users) for users in self._dirty.values())

    def take(self, timeout=POLL_SECONDS):
        """Everything touched so far ``{round: {user: ids}}``, waiting up to ``timeout`` for something."""
        with self._changed:
            if not self._dirty:
                self._changed.wait(timeout)
            taken, self._dirty = self._dirty, collections.defaultdict(dict)
        return taken

    def loop(self):
        """Write each batch of touched entries until stopped, pacing the writes by their cost."""
        while not self.stop.is_set():
            taken = self.take()
            started, spent = self.clock(), self.spent
            if taken:
                self.flush(taken)
            reconciled = self.reconcile_due()
            if taken or reconciled:
                cost = self.spent - spent
                pause = max(self.interval - (self.clock() - started), cost * (1 - self.share) / self.share)
                self.stop.wait(pause)

    def flush(self, taken):
        """Bring every touched entry in line; what could not be is touched again."""
        for competition_id, users in taken.items():
            try:
                left = self.sync(competition_id, users)
            except Exception as exc:  # the database may be away: keep the work for the next try
                log.warning("round %s: leaderboard write failed (%s: %s); will retry", competition_id, type(exc).__name__, exc)
                self._copies.pop(competition_id, None)
                left = users
                self.stop.wait(RETRY_SECONDS)
            for username, ids in left.items():
                for oid in ids or [None]:
                    self.touch(competition_id, username, oid)

    def sync(self, competition_id, users):
        """Write the entries of ``users`` ({name: touched ids}); returns the users left for a later try.

        Reads the submissions after the round's entries (see the module
        docstring); when the conditional write finds the entries changed,
        both are read again once.
        """
        with self._changed:
            self._active[competition_id] = self.clock()
        for attempt in range(2):
            copy = self._copy(competition_id)
            docs, elsewhere = self._submissions(competition_id, users, copy)
            if self._write(competition_id, users, copy, docs, whole=attempt == 0):
                self._timed(self.store.clear_board_stamps, stamps(docs + elsewhere))
                return {}
            self._copies.pop(competition_id, None)
            log.info("round %s: the leaderboard changed under the writer; reading it again", competition_id)
        return users

    # -- reads ---------------------------------------------------------------------
    def _timed(self, call, *args):
        """Run one database call, adding its time to ``spent`` (what pacing counts)."""
        started = self.clock()
        try:
            return call(*args)
        finally:
            self.spent += self.clock() - started

    def _copy(self, competition_id):
        """The writer's copy of the round's entries, read when it has none."""
        copy = self._copies.get(competition_id)
        if copy is None:
            entries = self._timed(self.competitions.board_entries, competition_id)
            if entries is None:
                self._timed(self.competitions.ensure, competition_id)
                entries = []
            copy = self._copies[competition_id] = Copy(entries)
        return copy

    def _submissions(self, competition_id, users, copy):
        """The touched users' submissions in the round, and whatever their entries show."""
        """``(docs, elsewhere)``: the touched users' submissions in the round (and whatever their entries
        show), and submissions read that are no longer in it.

        One that moved to another round is touched there; the stamps of
        those in no usable round are cleared with the others (they are
        shown nowhere).
        """
        known = self.members.user_ids(competition_id, users) if self.members is not None else None
        if known is None:
            return self._timed(self.store.board_submissions, competition_id, list(users)), []
        ids = set()
        for username, touched in users.items():
            ids.update(known.get(username, ()))
            ids.update(touched or ())
            position = copy.position.get(username)
            if position is not None and copy.entries[position].get("submission_id") is not None:
                ids.add(copy.entries[position]["submission_id"])
        docs, elsewhere = [], []
        for doc in self._timed(self.store.board_docs, list(ids)):
            where, name = round_number(doc.get("competition_id")), doc.get("username")
            if where == competition_id and usable_name(name) and name in users:
                docs.append(doc)
            elif where is not None and where != competition_id and usable_name(name):
                self.touch(where, name, doc["_id"])
            elif where is None or not usable_name(name):
                elsewhere.append(doc)
        return docs, elsewhere

    # -- the write -------------------------------------------------------------------
    def _write(self, competition_id, users, copy, docs, whole=True):
        """One conditional write of every entry that differs; False when the entries changed meanwhile.

        ``whole``: the whole array, conditioned on all of it being as
        copied (the cheaper write, see the module docstring); otherwise by
        position, conditioned only on the entries it changes, which lands
        even while something elsewhere in the board keeps changing.
        """
        by_user = collections.defaultdict(list)
        for doc in docs:
            by_user[doc["username"]].append(doc)
        changes, fresh = {}, {}  # {position: owned fields} of entries that differ; {user: owned fields} of new ones
        for username in users:
            target = newest(by_user[username])
            if target is None:
                continue
            wanted = desired_entry(target)
            position = copy.position.get(username)
            if position is None:
                fresh[username] = wanted
            elif owned(copy.entries[position]) != wanted:
                changes[position] = wanted
        if whole:
            return self._replace(competition_id, copy, changes, fresh)
        conditions, sets = {}, {}
        for position, wanted in changes.items():
            entry, prefix = copy.entries[position], "leaderboard.%d." % position
            conditions[prefix + "username"] = entry["username"]
            conditions[prefix + "submission_id"] = entry.get("submission_id")
            conditions[prefix + REV] = entry.get(REV)
            sets.update((prefix + key, value) for key, value in wanted.items())
        appended = self._appended(copy, fresh, conditions, sets)
        if not sets:
            return True
        self.writes += 1
        if not self._timed(self.competitions.write_board, competition_id, conditions, sets):
            return False
        self._remember(copy, sets, appended)
        return True

    def _replace(self, competition_id, copy, changes, fresh):
        """The same changes as one write of the whole array, only if it is still exactly as copied.

        ``changes`` maps positions to their owned fields: each changed entry
        keeps every field the backend wrote, and the new users' entries go
        at the end. The copy becomes the array as written.
        """
        if not changes and not fresh:
            return True
        replacement = list(copy.raw)
        for position, wanted in changes.items():
            replacement[position] = dict(copy.raw[position], **wanted)
        replacement.extend(self._new_entries(fresh))
        self.writes += 1
        if not self._timed(self.competitions.replace_board, competition_id, copy.raw, replacement):
            return False
        self._copies[competition_id] = Copy(replacement)
        return True

    def _new_entries(self, fresh):
        """Entries for the users ``{name: owned fields}`` who have none, in name order, with their career earnings."""
        if not fresh:
            return []
        earnings = self._timed(self.competitions.career_earnings, list(fresh))
        return [{"username": username, **wanted, "earnings": {"career": earnings[username], "competition": {"usd": 0, "nmr": 0}}}
                for username, wanted in sorted(fresh.items())]

    def _appended(self, copy, fresh, conditions, sets):
        """Entries for users without one, appended by position after the ``len(copy)`` known ones.

        Guarded by the array's length (exactly as copied) and by none of
        these users having an entry, so two writers never add one user twice.
        """
        if not fresh:
            return []
        length = len(copy)
        if length:
            conditions["leaderboard.%d" % (length - 1)] = {"$exists": True}
        else:
            conditions["leaderboard"] = {"$size": 0}
        conditions["leaderboard.%d" % length] = {"$exists": False}
        conditions["leaderboard.username"] = {"$nin": list(fresh)}
        appended = self._new_entries(fresh)
        for number, entry in enumerate(appended):
            sets["leaderboard.%d" % (length + number)] = entry
        return appended

    # -- reconciliation ---------------------------------------------------------------
    def reconcile_due(self):
        """Reconcile each active round whose last reconciliation is ``reconcile_seconds`` old; True when one ran."""
        now = self.clock()
        with self._changed:
            active = [cid for cid, last in self._active.items() if now - last < ACTIVE_SECONDS]
            for cid in [cid for cid, last in self._active.items() if now - last >= ACTIVE_SECONDS]:
                del self._active[cid]
                self._reconciled.pop(cid, None)
        ran = False
        for competition_id in active:
            last = self._reconciled.setdefault(competition_id, now)
            if now - last < self.reconcile_seconds:
                continue
            self._reconciled[competition_id] = now
            ran = True
            try:
                self.reconcile(competition_id)
            except Exception as exc:  # the database may be away: the next pass tries again
                log.warning("round %s: leaderboard reconciliation failed (%s: %s); next pass in %.0fs",
                            competition_id, type(exc).__name__, exc, self.reconcile_seconds)
        return ran

    def reconcile(self, competition_id):
        """Compare the round's whole leaderboard with its submissions and repair what differs; repairs by reason.

        The repairs: a user with more than one entry keeps the first (one
        conditional rewrite of the array as read); a user whose newest shown
        submission has no entry gets one (``missing``); an entry showing
        another submission (deleted, older, rewritten) moves (``stale``);
        one showing the right submission with other verdicts is corrected
        (``verdicts``). Users with a change the writer has not written yet
        (a stamped submission) are left to it. Entries of users with no
        submission to show are left as the backend made them.
        """
        self._copies.pop(competition_id, None)
        repairs = collections.Counter()
        entries = self._timed(self.competitions.board_entries, competition_id)
        if entries is not None and self._deduplicate(competition_id, entries):
            repairs["duplicate"] += 1
        copy = self._copy(competition_id)
        docs = self._timed(self.store.round_board_docs, competition_id)
        named = [doc for doc in docs if usable_name(doc.get("username"))]
        pending = {doc["username"] for doc in named if isinstance(doc.get("processing"), dict) and doc["processing"].get("board")}
        by_user = collections.defaultdict(list)
        for doc in named:
            if doc["username"] not in pending:
                by_user[doc["username"]].append(doc)
        found = {}
        for username, mine in by_user.items():
            target = newest(mine)
            if target is None:
                continue
            position = copy.position.get(username)
            if position is None:
                found[username] = "missing"
            elif copy.entries[position].get("submission_id") != target["_id"]:
                found[username] = "stale"
            elif owned(copy.entries[position]) != desired_entry(target):
                found[username] = "verdicts"
        users, shown = {name: set() for name in found}, [doc for name in found for doc in by_user[name]]
        if found and (self._write(competition_id, users, copy, shown)
                      or self._write(competition_id, users, copy, shown, whole=False)):
            repairs.update(found.values())
        elif found:
            self._copies.pop(competition_id, None)  # changed meanwhile: the next pass looks again
        for why, count in repairs.items():
            log.warning("round %s: the leaderboard had %d entr%s out of line (%s); repaired", competition_id, count,
                        "y" if count == 1 else "ies", why)
            if self.metrics is not None:
                self.metrics.leaderboard_repaired(why, count)
        return repairs

    def _deduplicate(self, competition_id, entries):
        """Drop every entry of a user after the user's first, if the array is still as read; True when done."""
        seen, kept = set(), []
        for entry in entries:
            name = entry.get("username") if isinstance(entry, dict) else None
            if usable_name(name):
                if name in seen:
                    continue
                seen.add(name)
            kept.append(entry)
        if len(kept) == len(entries):
            return False
        self.writes += 1
        return self._timed(self.competitions.replace_board, competition_id, entries, kept)

    @staticmethod
    def _remember(copy, sets, appended):
        """Bring the copy (both its entries and the array as stored) in line with a positional write that matched."""
        for path, value in sets.items():
            parts = path.split(".")
            if len(parts) == 3:
                number = int(parts[1])
                copy.entries[number][parts[2]] = value
                copy.raw[number] = dict(copy.raw[number], **{parts[2]: value})
        for entry in appended:
            copy.position.setdefault(entry["username"], len(copy.entries))
            copy.entries.append(dict(entry))
            copy.raw.append(entry)


def stamps(docs):
    """``[(oid, stamp)]`` of the documents that carry a leaderboard stamp."""
    return [(doc["_id"], doc["processing"]["board"]) for doc in docs
            if isinstance(doc.get("processing"), dict) and doc["processing"].get("board")]
