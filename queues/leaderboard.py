"""Keeps each round's leaderboard in line with its submissions, in grouped writes.

A user's entry shows that user's newest submission (by ``created``, then
``_id``) that has passed dispatch, with that submission's ``concordant``
and ``original``. Transitions only say *which* entries may have changed
(:meth:`Leaderboard.touch`); the writer works out what each entry should
be from a fresh read of the submissions and writes every change of a
round in one compare-and-set update. Changes that arrive while a write
is in flight go together in the next one.

Why it converges: each entry is written only if it still holds what the
writer read *before* reading the submissions, so an entry only ever moves
to a state computed from a newer read than the one it had; a writer with
an older read finds the entry changed and reads again. Only the fields
the service owns are written (``submission_id``, ``logloss``,
``concordant``, ``original``; ``earnings`` when an entry is first made),
so the backend may write the rest of the same entries meanwhile. New
entries are pushed guarded by "no entry for these users yet": never two
entries for one user. Once an entry is confirmed in line, the
``processing.board`` stamps of the submissions it was built from are
cleared; the recovery sweep re-touches any stamp a crash left behind.
"""
import collections
import logging
import threading

from queues.store import PENDING

log = logging.getLogger(__name__)

#: Fields of an entry this service writes after creating it.
OWNED = ("submission_id", "logloss", "concordant", "original")
#: Rounds of read-and-swap before a change is left for the next wake-up.
MAX_ROUNDS = 5
POLL_SECONDS = 0.5
RETRY_SECONDS = 1.0


def newest(docs):
    """The newest document (by created, then _id) of those that passed dispatch, or None."""
    passed = [doc for doc in docs if (doc.get("processing") or {}).get("dispatched") and doc.get("created") is not None]
    return max(passed, key=lambda doc: (doc["created"], doc["_id"]), default=None)


def desired_entry(doc):
    """The owned fields of an entry that shows submission ``doc``."""
    return {"submission_id": doc["_id"],
            "logloss": {"validation": doc.get("validationLogloss"), "consistency": doc.get("consistency")},
            "concordant": doc.get("concordant") or PENDING,
            "original": doc.get("original") or PENDING}


def owned(entry):
    """The owned fields of an entry as stored (None where absent)."""
    return {key: entry.get(key) for key in OWNED}


class Leaderboard:
    """The writer: ``touch`` from any thread, ``loop`` on its own."""

    def __init__(self, store, stop, metrics=None):
        self.store = store
        self.stop = stop
        self.metrics = metrics
        self._dirty = collections.defaultdict(set)
        self._changed = threading.Condition()
        self._entries = {}
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
        """Write each batch of touched entries until stopped; a failed batch is retried."""
        while not self.stop.is_set():
            self.flush(self.take())

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
        """Compare-and-set the entries of ``usernames`` and confirm them; returns users left out of line.

        The entries are those of the last read (kept from the previous
        batch): the submissions are always read after them, which is what
        makes a swap safe. A steady batch costs four round trips: read the
        submissions, swap, read the entries back, clear the stamps.
        """
        usernames = set(usernames)
        entries = self._entries.get(competition_id)
        if entries is None:
            entries = self._read_entries(competition_id)
        for _ in range(MAX_ROUNDS):
            docs = self.store.board_candidates(competition_id, usernames)
            by_user = collections.defaultdict(list)
            for doc in docs:
                by_user[doc["username"]].append(doc)
            wants = {}
            for username in usernames:
                target = newest(by_user[username])
                if target is not None:
                    wants[username] = desired_entry(target)
            fresh = [name for name in wants if name not in entries]
            changes = [(name, owned(entries[name]), want) for name, want in wants.items()
                       if name in entries and owned(entries[name]) != want]
            if fresh:
                self._push(competition_id, fresh, by_user)
            if changes:
                self.writes += 1
                self.store.swap_entries(competition_id, changes)
            if fresh or changes:
                entries = self._read_entries(competition_id)
            confirmed = {name for name in usernames if name not in wants or
                         (name in entries and owned(entries[name]) == wants[name])}
            self.store.clear_board_stamps([(doc["_id"], doc["processing"]["board"]) for name in confirmed
                                           for doc in by_user[name] if (doc.get("processing") or {}).get("board")])
            usernames -= confirmed
            if not usernames:
                return set()
            entries = self._read_entries(competition_id)
        log.info("round %s: %d leaderboard entries still changing; will retry", competition_id, len(usernames))
        return usernames

    def _read_entries(self, competition_id):
        """Read the round's entries (creating an empty leaderboard when there is none) and keep them."""
        entries = self.store.board_entries(competition_id)
        if entries is None:
            self.store.ensure_competition(competition_id)
            entries = {}
        self._entries[competition_id] = entries
        return entries

    def _push(self, competition_id, usernames, by_user):
        """Create entries for users without one; all in one write when none appeared meanwhile."""
        earnings = self.store.career_earnings(usernames)
        entries = []
        for username in usernames:
            entry = {"username": username}
            entry.update(desired_entry(newest(by_user[username])))
            entry["earnings"] = {"career": earnings[username], "competition": {"usd": 0, "nmr": 0}}
            entries.append(entry)
        self.writes += 1
        if self.store.push_entries(competition_id, entries):
            return
        for entry in entries:  # someone else added one of them: one at a time, each guarded
            self.writes += 1
            self.store.push_entries(competition_id, [entry])
