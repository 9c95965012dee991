"""The three in-memory queues and what is in flight on them.

The queues are plain ``queue.Queue`` objects; MongoDB remains the record
of what was accepted. ``Pipeline`` adds one thing: it knows which
submission ids are waiting or being worked on at each stage, so neither
a repeated request nor the recovery sweep ever queues one twice.
"""
import dataclasses
import queue
import threading
import time
from typing import Optional

import numpy as np

LEADERBOARD, CONCORDANCE, ORIGINALITY = "leaderboard", "concordance", "originality"
STAGES = (LEADERBOARD, CONCORDANCE, ORIGINALITY)


@dataclasses.dataclass
class Job:
    """One submission on its way through a stage.

    ``doc`` and ``predictions`` are carried from the dispatcher so the
    checks need not read them again; after a restart they are None and
    the stage loads them itself.
    """

    submission_id: str
    doc: Optional[dict] = None
    predictions: Optional[np.ndarray] = None
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


class Pipeline:
    """Queues by stage plus the set of ids in flight at each."""

    def __init__(self, stop=None):
        self.stop = stop or threading.Event()
        self.queues = {stage: queue.Queue() for stage in STAGES}
        self._in_flight = {stage: {} for stage in STAGES}
        self._lock = threading.Lock()

    def put(self, stage, job):
        """Queue ``job`` unless its id is already in flight at ``stage``; True if queued."""
        with self._lock:
            if job.submission_id in self._in_flight[stage]:
                return False
            self._in_flight[stage][job.submission_id] = job.enqueued
        self.queues[stage].put(job)
        return True

    def done(self, stage, job):
        """Forget ``job`` at ``stage`` once a worker has finished with it."""
        with self._lock:
            self._in_flight[stage].pop(job.submission_id, None)

    def in_flight(self, stage, submission_id):
        with self._lock:
            return submission_id in self._in_flight[stage]

    def anywhere(self, submission_id):
        """True while the id is waiting or in work at any stage of this process."""
        with self._lock:
            return any(submission_id in ids for ids in self._in_flight.values())

    def depth(self, stage):
        """Items in flight at a stage (waiting or being worked on)."""
        with self._lock:
            return len(self._in_flight[stage])

    def oldest_age(self, stage):
        """Seconds the oldest in-flight item of a stage has waited, 0 when none."""
        with self._lock:
            times = list(self._in_flight[stage].values())
        return time.monotonic() - min(times) if times else 0.0
