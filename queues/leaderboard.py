"""Keeps each round's leaderboard in line with its submissions, in grouped writes.

A user's entry shows that user's newest submission (by ``created``, then
``_id``) that has passed dispatch, with that submission's ``concordant``
and ``original``. Transitions only say *which* entries may have changed
(:meth:`Leaderboard.touch`); the writer works out what each entry should
be from a fresh read of the submissions and writes every change of a
round in one update. Changes that arrive while a write is in flight go
together in the next one.

Why it converges: entries only move forward. An entry is written only if
it shows an older submission of the user, or the same submission at a
lower revision (``criteria_rev``, the submission's ``processing.rev``,
which every transition counts up). So a replay, or a writer of another
server working from an older read, changes nothing, and after the last
transition the last write shows it. Only the fields the service owns are
written (``submission_id``, ``logloss``, ``concordant``, ``original``,
``criteria_rev``; ``earnings`` when an entry is first made), so the
backend may write the rest of the same entries meanwhile. New entries are
pushed guarded by "no entry for these users yet": never two entries for
one user. After a write, the ``processing.board`` stamps of the
submissions read are cleared unless a newer transition re-stamped them;
the recovery sweep re-touches any stamp a crash left behind.

A write costs the database about the same whatever it carries (SecantusDB
rewrites the whole competition document: some 100 ms of its CPU for a
1,000-entry leaderboard), so after each write the writer lets changes
gather until ``WRITE_INTERVAL`` has passed since it started: under a burst
that is one write per interval however many changes arrive, where writing
again as soon as a write returned made it nearly one per change. A change
after a quiet spell is written at once.
"""
import collections
import logging
import threading
import time

from queues.store import PENDING, REV

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
RETRY_SECONDS = 1.0
#: Least seconds from the start of one write to the start of the next.
WRITE_INTERVAL = 1.0


def order(doc):
    return (doc["created"], doc["_id"])


def newest(docs):
    """The newest document (by created, then _id) of those that ever passed dispatch, or None."""
    passed = [doc for doc in docs if (doc.get("processing") or {}).get("dispatched") and doc.get("created") is not None]
    return max(passed, key=order, default=None)


def desired_entry(doc):
    """The owned fields of an entry that shows submission ``doc``."""
    return {"submission_id": doc["_id"],
            "logloss": {"validation": doc.get("validationLogloss"), "consistency": doc.get("consistency")},
            "concordant": doc.get("concordant") or PENDING,
            "original": doc.get("original") or PENDING,
            REV: (doc.get("processing") or {}).get("rev", 0)}


class Leaderboard:
    """The writer: ``touch`` from any thread, ``loop`` on its own."""

    def __init__(self, store, stop, interval=WRITE_INTERVAL):
        self.store = store
        self.stop = stop
        self.interval = interval
        self._dirty = collections.defaultdict(set)
        self._changed = threading.Condition()
        self._present = {}
        self.writes = 0

    def touch(self, competition_id, username):
        """Note that ``username``'s entry in round ``competition_id`` may be out of line."""
        if competition_id is None or not username:
            return
        with self._changed:
            self._dirty[int(competition_id)].add(username)
            self._changed.notify()

    def pending(self):
        with self._changed:
            return sum(len(users) for users in self._dirty.values())

    def take(self, timeout=POLL_SECONDS):
        """Everything touched so far, waiting up to ``timeout`` for something to arrive."""
        with self._changed:
            if not self._dirty:
                self._changed.wait(timeout)
            taken, self._dirty = self._dirty, collections.defaultdict(set)
        return taken

    def loop(self):
        """Write each batch of touched entries until stopped; a failed batch is retried.

        After a write, changes gather until ``interval`` has passed since it
        started, and then go together in the next.
        """
        while not self.stop.is_set():
            taken = self.take()
            if taken:
                started = time.monotonic()
                self.flush(taken)
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def flush(self, taken):
        """Bring every touched entry in line; entries that could not be are touched again."""
        for competition_id, users in taken.items():
            try:
                left = self.sync(competition_id, users)
            except Exception as exc:  # the database may be away: keep the work for the next try
                log.warning("round %s: leaderboard write failed (%s: %s); will retry", competition_id, type(exc).__name__, exc)
                left = users
                self.stop.wait(RETRY_SECONDS)
            for username in left:
                self.touch(competition_id, username)

    def sync(self, competition_id, usernames):
        """Write the entries of ``usernames`` from one read of their submissions; returns users left over.

        Three round trips for a batch of any size once the round's users
        are known: read the submissions, one conditional write, clear the
        stamps. Users without an entry are pushed first.
        """
        docs = self.store.board_submissions(competition_id, usernames)
        by_user = collections.defaultdict(list)
        for doc in docs:
            by_user[doc["username"]].append(doc)
        present = self._usernames(competition_id)
        changes, fresh = [], []
        for username in usernames:
            target = newest(by_user[username])
            if target is None:
                continue
            if username not in present:
                fresh.append(username)
                continue
            older = [doc["_id"] for doc in by_user[username] if order(doc) < order(target)]
            changes.append((username, older, desired_entry(target)))
        if fresh:
            changes.extend(self._push(competition_id, fresh, by_user, present))
        if changes:
            self.writes += 1
            self.store.swap_entries(competition_id, changes)
        self.store.clear_board_stamps([(doc["_id"], doc["processing"]["board"]) for doc in docs
                                       if (doc.get("processing") or {}).get("board")])
        return set()

    def _usernames(self, competition_id):
        """Users known to have an entry in the round (read once per round, then kept up to date)."""
        present = self._present.get(competition_id)
        if present is None:
            present = self.store.board_usernames(competition_id)
            if present is None:
                self.store.ensure_competition(competition_id)
                present = set()
            self._present[competition_id] = present
        return present

    def _push(self, competition_id, usernames, by_user, present):
        """Create entries for users without one; returns changes for those someone else created meanwhile."""
        earnings = self.store.career_earnings(usernames)
        entries = {}
        for username in usernames:
            entry = {"username": username}
            entry.update(desired_entry(newest(by_user[username])))
            entry["earnings"] = {"career": earnings[username], "competition": {"usd": 0, "nmr": 0}}
            entries[username] = entry
        self.writes += 1
        if self.store.push_entries(competition_id, list(entries.values())):
            present.update(usernames)
            return []
        present.update(self.store.board_usernames(competition_id) or ())  # someone else added some
        changes = []
        for username, entry in entries.items():
            target = newest(by_user[username])
            if username in present:
                older = [doc["_id"] for doc in by_user[username] if order(doc) < order(target)]
                changes.append((username, older, desired_entry(target)))
            else:
                self.writes += 1
                if not self.store.push_entries(competition_id, [entry]):
                    raise RuntimeError("round %s: could not add %s's entry; will retry" % (competition_id, username))
                present.add(username)
        return changes
