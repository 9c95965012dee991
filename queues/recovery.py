"""Recovery: claim whatever nobody holds, and keep this process's leases alive.

The sweep runs once at start and then every ``interval`` seconds. It
claims submissions that are active but unleased or whose lease expired
(a server was killed, or gave up during an outage) and queues them for
the dispatcher, which carries each on from where its document says it
stopped. At start it also takes back leases held by earlier processes of
this same server (same host and port) that are no longer running, so a
restart does not wait for them to expire. It re-touches leaderboard
entries whose change a crash left unconfirmed, and drops the data of
rounds that have been idle too long.

The keeper extends the lease of every job in this process's queues a few
times per lease period, in one write for all of them.
"""
import logging
import os

from queues.pipeline import DISPATCH, Job

log = logging.getLogger(__name__)

#: At most this many submissions waiting in this process's dispatch queue
#: after a sweep, so that several servers share a backlog.
SWEEP_BATCH = 200


def process_alive(pid):
    """True when a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Recovery:
    """The sweep, and a loop that repeats it."""

    def __init__(self, pipeline, store, interval, metrics=None, board=None,
                 owner_prefix=None, batch=SWEEP_BATCH, alive=process_alive, rounds=None):
        self.pipeline = pipeline
        self.store = store
        self.interval = interval
        self.metrics = metrics
        self.board = board
        self.owner_prefix = owner_prefix
        self.batch = batch
        self.alive = alive
        self.rounds = rounds
        self.orphans = None

    def sweep(self):
        """One pass: claim what nobody holds and queue it; returns how many were claimed."""
        if self.rounds is not None:  # first: no database needed, so an outage does not keep idle rounds
            self.rounds.evict_idle()
        if self.orphans is None and self.owner_prefix:
            self.orphans = self.store.orphaned_owners(self.owner_prefix, self.alive)
            if self.orphans:
                log.info("taking back the leases of this server's earlier processes: %s", ", ".join(self.orphans))
        room = self.batch - self.pipeline.depth(DISPATCH)
        claimed = 0
        if room > 0:
            for sid, owner in self.store.claimable(room, self.orphans or ()):
                if self.pipeline.anywhere(sid):
                    continue
                claim = self.store.claim(sid, owner=owner if owner in (self.orphans or ()) else None)
                if claim is not None and self.pipeline.put(DISPATCH, Job(sid, claim=claim)):
                    log.info("%s: recovered (attempt %s)", sid, claim.doc["processing"].get("attempts"))
                    claimed += 1
        if self.board is not None:
            unshowable = []
            for competition_id, username, oid, stamp in self.store.stamped(10 * self.batch):
                if competition_id is None or username is None:
                    unshowable.append((oid, stamp))  # on no leaderboard: nothing to bring in line
                else:
                    self.board.touch(competition_id, username, oid)
            self.store.clear_board_stamps(unshowable)
        return claimed

    def loop(self):
        """Sweep now and then every ``interval`` seconds until stopped."""
        while not self.pipeline.stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # the database may be away; try again next interval
                log.warning("recovery sweep failed (%s: %s); next try in %.0fs", type(exc).__name__, exc, self.interval)
            if self.pipeline.stop.wait(self.interval):
                return


class LeaseKeeper:
    """Extends the leases of this process's jobs every ``period`` seconds."""

    def __init__(self, pipeline, store, period):
        self.pipeline = pipeline
        self.store = store
        self.period = period

    def keep(self):
        """One extension of every lease in flight; returns how many documents it reached."""
        return self.store.extend(self.pipeline.tokens())

    def loop(self):
        while not self.pipeline.stop.wait(self.period):
            try:
                self.keep()
            except Exception as exc:  # the database may be away; leases that expire are re-claimed
                log.warning("could not extend leases (%s: %s)", type(exc).__name__, exc)
