"""The competition document (``competitions``, one per round): its re-score run lock and its leaderboard.

The submission's state machine (:mod:`queues.store`) writes submission
documents only; everything this service writes to a round's own
document is here, each operation one conditional write:

- the open re-score run, ``rescore``: started only where none is open
  (the lock), driven under a lease any process of the service may take
  over when it expires, closed with its summary appended to ``rescores``
  (and, with webhooks on, its ``round.rescored`` event in the same write);
- the leaderboard, ``leaderboard``: read whole, written whole or by
  position, each write conditioned on what the writer read (see
  :mod:`queues.leaderboard` for why and what it costs).

Naming: a *run request* is the dict stored in ``rescore`` (``{run,
competition_id, only, requested_at, requested_by, rules, lease}``); a
*run id* is its ``run`` field, an ObjectId.
"""
import datetime

from queues.store import owner_name, utcnow

#: The leaderboard is read whole: projecting fields of its entries would drop entries that are
#: not documents and so shift the positions the writer addresses.
ENTRY_FIELDS = {"leaderboard": 1}


class Competitions:
    """The ``competitions`` collection (and the ``users`` career earnings a new entry starts with).

    ``owner`` names this process in a run's lease, as the store's owner
    names it in a submission's; ``notify`` is a queues.notify.Recorder
    when webhooks are on.
    """

    def __init__(self, db, owner=None, lease_seconds=30.0):
        self.competitions = db.competitions
        self.users = db.users
        self.owner = owner or owner_name()
        self.lease_seconds = lease_seconds
        self.notify = None

    # -- the re-score run lock ----------------------------------------------------------
    def ensure(self, competition_id):
        """The round's document exists (with an empty leaderboard if it had none); idempotent."""
        self.competitions.update_one({"_id": int(competition_id)}, {"$setOnInsert": {"leaderboard": []}}, upsert=True)

    def start_run(self, competition_id, request):
        """Open the run ``request`` unless one is open; True when this call opened it.

        The open run is the competition document's ``rescore`` field, set
        only where it is absent: that one conditional write is the lock
        that keeps two re-scores of a round from running at once.
        """
        self.ensure(competition_id)  # idempotent: a crash after it leaves nothing to finish
        return bool(self.competitions.update_one({"_id": int(competition_id), "rescore": None},
                                                 {"$set": {"rescore": request}}).modified_count)

    def open_runs(self):
        """``{competition_id: run request}`` of every open re-score."""
        return {doc["_id"]: doc["rescore"] for doc in self.competitions.find({"rescore": {"$ne": None}}, {"rescore": 1})}

    def runs_of(self, competition_id):
        """``(open run request or None, [summaries of the closed runs]))`` of one round."""
        doc = self.competitions.find_one({"_id": int(competition_id)}, {"rescore": 1, "rescores": 1}) or {}
        return doc.get("rescore"), doc.get("rescores") or []

    def drive_run(self, competition_id, run_id, owners=()):
        """Take or keep the right to drive an open run (its lease); True when this process has it.

        Taken when this process holds it, when it has no lease or an
        expired one, or when one of ``owners`` (dead processes of this
        server) held it; one conditional write each, as for a claim.
        """
        now = utcnow()
        lease = {"owner": self.owner, "expires": now + datetime.timedelta(seconds=self.lease_seconds)}
        conditions = [{"rescore.lease.owner": self.owner}, {"rescore.lease.expires": {"$not": {"$gt": now}}}]
        conditions += [{"rescore.lease.owner": owner} for owner in owners]
        for condition in conditions:
            held = {"_id": int(competition_id), "rescore.run": run_id, **condition}
            if self.competitions.update_one(held, {"$set": {"rescore.lease": lease}}).matched_count:
                return True
        return False

    def release_runs(self):
        """Give up driving any run this process drives (stopping): another process may take it at once."""
        self.competitions.update_many({"rescore.lease.owner": self.owner}, {"$set": {"rescore.lease.expires": utcnow()}})

    def close_run(self, competition_id, run_id, summary):
        """Close the open run ``run_id``, keeping ``summary`` in ``rescores``; True when this call closed it."""
        update = {"$unset": {"rescore": ""}, "$push": {"rescores": summary}}
        if self.notify is not None:  # the webhook event, in the same write
            update["$set"] = self.notify.rescored(competition_id, summary, utcnow())
        closed = bool(self.competitions.update_one({"_id": int(competition_id), "rescore.run": run_id},
                                                   update).modified_count)
        if closed and self.notify is not None:
            self.notify.wake()
        return closed

    # -- the leaderboard (see queues.leaderboard) ------------------------------------
    def board_entries(self, competition_id):
        """The round's leaderboard entries, or None when the round has no document."""
        doc = self.competitions.find_one({"_id": int(competition_id)}, ENTRY_FIELDS)
        if doc is None:
            return None
        entries = doc.get("leaderboard")
        return entries if isinstance(entries, list) else []

    def replace_board(self, competition_id, entries, replacement):
        """Replace the round's whole leaderboard, only if it is still exactly ``entries``; True when it was."""
        return bool(self.competitions.update_one({"_id": int(competition_id), "leaderboard": entries},
                                                 {"$set": {"leaderboard": replacement}}).matched_count)

    def write_board(self, competition_id, conditions, sets):
        """One conditional ``$set`` by position on the round's leaderboard; True when it matched."""
        return bool(self.competitions.update_one({"_id": int(competition_id), **conditions},
                                                 {"$set": sets}).matched_count)

    def career_earnings(self, usernames):
        """``{username: {usd, nmr}}`` career earnings, zeros for users with none recorded."""
        found = {doc["username"]: ((doc.get("earnings") or {}).get("career") or {})
                 for doc in self.users.find({"username": {"$in": list(usernames)}}, {"username": 1, "earnings.career": 1})}
        return {name: {"usd": found.get(name, {}).get("usd", 0), "nmr": found.get(name, {}).get("nmr", 0)}
                for name in usernames}
