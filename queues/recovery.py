"""Puts accepted-but-unfinished submissions back on the right queue.

Runs once at start (work a killed server left behind) and then every
``interval`` seconds (work a worker gave up on during an outage). The
document says where each submission stopped; the pipeline's in-flight
set keeps the sweep from queueing anything twice.
"""
import logging

from queues.pipeline import CONCORDANCE, LEADERBOARD, ORIGINALITY, Job
from queues.store import QUEUED, STAGE_CHECKS

log = logging.getLogger(__name__)


def stages_for(doc):
    """The stages a document still needs, judged from what it records."""
    processing = doc.get("processing") or {}
    if processing.get("state") == QUEUED or processing.get("stage") != STAGE_CHECKS:
        return [LEADERBOARD]
    return [stage for stage, check in ((CONCORDANCE, "concordant"), (ORIGINALITY, "original"))
            if (doc.get(check) or {}).get("pending", True)]


class Recovery:
    """The sweep, and a loop that repeats it."""

    def __init__(self, pipeline, store, interval, metrics=None):
        self.pipeline = pipeline
        self.store = store
        self.interval = interval
        self.metrics = metrics

    def route(self, doc):
        """Queue one unfinished document where it stopped; return the stages queued."""
        sid = str(doc["_id"])
        if self.pipeline.in_flight(LEADERBOARD, sid):
            return []
        stages = stages_for(doc)
        if not stages and self.store.settle(doc["_id"]) and self.metrics is not None:
            self.metrics.outcome("done")
        return [stage for stage in stages if self.pipeline.put(stage, Job(sid))]

    def sweep(self):
        """One pass over the unfinished submissions; returns how many were queued."""
        queued = 0
        for doc in self.store.unfinished():
            stages = self.route(doc)
            if stages:
                log.info("%s: recovered onto %s", doc["_id"], ", ".join(stages))
                queued += 1
        return queued

    def loop(self):
        """Sweep now and then every ``interval`` seconds until stopped."""
        while not self.pipeline.stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # the database may be away; try again next interval
                log.warning("recovery sweep failed (%s: %s); next try in %.0fs", type(exc).__name__, exc, self.interval)
            if self.pipeline.stop.wait(self.interval):
                return
