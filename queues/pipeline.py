"""The three in-memory queues and what is in flight on them.

The queues are plain ``queue.Queue`` objects; MongoDB decides who owns
what (see the leases in :mod:`queues.store`). ``Pipeline`` adds one
thing: it knows which submission ids are waiting or being worked on at
each stage, so neither a repeated request nor the recovery sweep queues
one twice in this process, and the lease keeper knows which leases to
extend. It also lets the HTTP intake go first: the judging shares the
process (and its GIL) with the HTTP threads, so while submissions keep
arriving a pipeline thread waits a little before its next job (see
:meth:`Pipeline.give_way`).
"""
import dataclasses
import math
import queue
import threading
import time
from typing import Any, Optional

import numpy as np

#: The stages, by one name each: dispatch (consistency, logloss, leaderboard) then the two checks.
DISPATCH, CONCORDANCE, ORIGINALITY = "dispatch", "concordance", "originality"
STAGES = (DISPATCH, CONCORDANCE, ORIGINALITY)
#: The intake counts as busy while a request is in progress and for this long after ...
QUIET_SECONDS = 0.05
#: ... and while it is, a pipeline thread waits up to this long before each job.
GIVE_WAY_SECONDS = 2.0


class Intake:
    """How busy the HTTP intake is, for :meth:`Pipeline.give_way`: its requests in progress
    and when the last one ended.

    The intake wraps each request in ``with pipeline.intake:``; a plain
    class rather than ``contextlib`` because it runs on every request.
    Requests in progress count, not only arrivals: while a batch waits
    for the database nothing new arrives, yet the intake is not done.
    """

    def __init__(self, clock):
        self.clock = clock
        self.in_progress = 0
        self.ended = -math.inf
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            self.in_progress += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self.in_progress -= 1
            self.ended = self.clock()

    def quiet_in(self):
        """Seconds until the intake counts as quiet, 0 or less when it does (QUIET_SECONDS while busy)."""
        if self.in_progress:
            return QUIET_SECONDS
        return self.ended + QUIET_SECONDS - self.clock()


class Verdicts:
    """Where the checks of one claim meet: the last to finish writes them all in one transition."""

    def __init__(self, needed):
        self.needed = set(needed)
        self.values = {}
        self.evidence = {}  # the fields each check's evidence adds to the final write
        self.closed = False
        self._lock = threading.Lock()

    def add(self, check, value, evidence=None):
        """Record one verdict (and its evidence); returns every verdict when this one completed the set."""
        with self._lock:
            if self.closed:
                return None
            self.values[check] = value
            self.evidence.update(evidence or {})
            if self.needed <= self.values.keys():
                self.closed = True
                return dict(self.values)
            return None

    def close(self):
        """End the meeting early (a failure): the verdicts so far, or None when already closed."""
        with self._lock:
            if self.closed:
                return None
            self.closed = True
            return dict(self.values)


@dataclasses.dataclass
class Job:
    """One submission on its way through a stage.

    ``token`` is the intake's lease, exchanged for a :class:`~queues.store.Claim`
    by the dispatcher; the claim, the parsed predictions and the checks'
    meeting point travel with the job so later stages need not read them again.
    """

    submission_id: str
    token: Any = None
    claim: Any = None
    predictions: Optional[np.ndarray] = None
    #: The dataset version ``predictions`` were parsed against (its row order): a
    #: round rebuilt on a replaced dataset makes them stale, to be parsed again.
    predictions_version: Optional[str] = None
    verdicts: Optional[Verdicts] = None
    #: Every verdict of the claim, once this job's check completed the set: kept so
    #: that a retry of the final write does not depend on the meeting again.
    complete: Optional[dict] = None
    #: True once every verdict in ``complete`` stands on one dataset version (see CheckWorker.align).
    aligned: bool = False
    enqueued: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def lease(self):
        """The lease token this job holds right now."""
        return self.claim.token if self.claim is not None else self.token


class Pipeline:
    """Queues by stage plus the jobs in flight at each.

    ``clock`` (seconds, monotonic) times :meth:`give_way`; tests give a fake one.
    ``intake`` is what the HTTP intake marks its requests with.
    """

    def __init__(self, stop=None, clock=time.monotonic):
        self.stop = stop or threading.Event()
        self.queues = {stage: queue.Queue() for stage in STAGES}
        self._in_flight = {stage: {} for stage in STAGES}
        self._lock = threading.Lock()
        self.clock = clock
        self.intake = Intake(clock)

    def give_way(self):
        """Before a job: wait while the intake is busy, at most GIVE_WAY_SECONDS, or until stop.

        Judging holds the GIL for tens of milliseconds per submission, and
        every HTTP thread that needs the GIL meanwhile waits its turn; so
        under a burst of submissions each pipeline thread takes one job
        per GIVE_WAY_SECONDS, and works at full speed again QUIET_SECONDS
        after the last request. Nothing is lost by waiting: a job waiting
        here is still in flight, so the lease keeper extends its lease and
        a repeat of its submission is answered as a duplicate.
        """
        deadline = self.clock() + GIVE_WAY_SECONDS
        while True:
            left = min(self.intake.quiet_in(), deadline - self.clock())
            if left <= 0 or self.stop.wait(left):
                return

    def put(self, stage, job):
        """Queue ``job`` unless its id is already in flight at ``stage``; True if queued."""
        with self._lock:
            if job.submission_id in self._in_flight[stage]:
                return False
            self._in_flight[stage][job.submission_id] = job
        self.queues[stage].put(job)
        return True

    def done(self, stage, job):
        """Forget ``job`` at ``stage`` once a worker has finished with it."""
        with self._lock:
            if self._in_flight[stage].get(job.submission_id) is job:
                del self._in_flight[stage][job.submission_id]

    def in_flight(self, stage, submission_id):
        with self._lock:
            return submission_id in self._in_flight[stage]

    def anywhere(self, submission_id):
        """True while the id is waiting or in work at any stage of this process."""
        with self._lock:
            return any(submission_id in jobs for jobs in self._in_flight.values())

    def tokens(self):
        """The lease tokens of every job in flight (what the lease keeper extends)."""
        with self._lock:
            return {job.lease for jobs in self._in_flight.values() for job in jobs.values() if job.lease is not None}

    def depth(self, stage):
        """Items in flight at a stage (waiting or being worked on)."""
        with self._lock:
            return len(self._in_flight[stage])

    def oldest_age(self, stage):
        """Seconds the oldest in-flight item of a stage has waited, 0 when none."""
        with self._lock:
            times = [job.enqueued for job in self._in_flight[stage].values()]
        return time.monotonic() - min(times) if times else 0.0
