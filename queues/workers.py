"""The pipeline stages: one class per queue, each with one ``loop``.

A worker takes a job, does its stage, and hands the submission on. What
goes wrong is sorted at the top of the loop: a permanent problem is
recorded in the submission as a failure with its reason; a transient one
is retried with bounded exponential backoff; anything unexpected is
logged with the submission id and recorded as an internal error, and the
loop carries on with the next job.
"""
import logging
import queue
import random
import time

from queues.errors import PERMANENT, MissingSubmission, is_transient, reason
from queues.explain import named_originality
from queues.pipeline import CONCORDANCE, LEADERBOARD, ORIGINALITY, Job
from queues.provenance import Provenance
from scoring import concordance, consistency

log = logging.getLogger(__name__)

#: How long ``loop`` waits on an empty queue before looking at the stop flag.
POLL_SECONDS = 0.2
#: Transient-failure retries: delays grow from BASE doubling up to CAP ...
BACKOFF_BASE = 0.5
BACKOFF_CAP = 15.0
#: ... for this many attempts; after that the recovery sweep takes over.
MAX_ATTEMPTS = 8
INTERNAL_ERROR = "internal error while judging this submission; the operators have been alerted (%s)"
REQUIRED_FIELDS = ("username", "competition_id", "filename", "created")


def backoff(attempt):
    """Delay before retry number ``attempt`` (0-based), with jitter."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1.0)


def check_document(doc, submission_id):
    """Raise a permanent error unless the document has what judging needs."""
    if doc is None:
        raise MissingSubmission("submission %s no longer exists" % submission_id)
    missing = [field for field in REQUIRED_FIELDS if doc.get(field) in (None, "")]
    if missing:
        raise MissingSubmission("the submission document lacks %s" % ", ".join(missing))
    return doc


class Worker:
    """The shared loop; subclasses say what a stage does with one job."""

    stage = None

    def __init__(self, pipeline, store, rounds, rules, metrics, provenance=None):
        self.pipeline = pipeline
        self.store = store
        self.rounds = rounds
        self.rules = rules
        self.metrics = metrics
        self.provenance = provenance or Provenance.current()

    @property
    def inbox(self):
        return self.pipeline.queues[self.stage]

    def loop(self):
        """Work until the stop flag is set; one bad job never ends the loop."""
        while not self.pipeline.stop.is_set():
            try:
                job = self.inbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            try:
                self.run(job)
            finally:
                self.pipeline.done(self.stage, job)

    def run(self, job):
        """Process one job, sorting failures; returns the outcome for tests and metrics."""
        sid = job.submission_id
        for attempt in range(MAX_ATTEMPTS):
            started = time.monotonic()
            try:
                self.process(job)
                self.metrics.stage_finished(self.stage, time.monotonic() - started)
                return "ok"
            except PERMANENT as exc:
                log.info("%s: %s failed: %s", sid, self.stage, reason(exc))
                return self.fail(job, reason(exc))
            except Exception as exc:  # sorted below: transient or a bug
                if not is_transient(exc):
                    log.exception("%s: unexpected error in %s", sid, self.stage)
                    return self.fail(job, INTERNAL_ERROR % type(exc).__name__)
                delay = backoff(attempt)
                log.warning("%s: %s hit a transient error (%s: %s); retry %d in %.1fs",
                            sid, self.stage, type(exc).__name__, exc, attempt + 1, delay)
                self.metrics.outcome("retried")
                if self.pipeline.stop.wait(delay):
                    return "stopped"
        log.error("%s: %s still failing after %d attempts; the recovery sweep will retry it", sid, self.stage, MAX_ATTEMPTS)
        return "deferred"

    def fail(self, job, error):
        """Record a failure; if even that cannot be written, leave it to recovery."""
        try:
            self.record_failure(job, error)
        except Exception as exc:  # the database may be down: recovery will see it unfinished
            log.error("%s: could not record failure (%s); recovery will retry", job.submission_id, type(exc).__name__)
            return "deferred"
        self.metrics.outcome("failed")
        return "failed"

    def document(self, job):
        """The submission document, from the job or the store."""
        if job.doc is None:
            job.doc = check_document(self.store.get(job.submission_id), job.submission_id)
        return job.doc

    def predictions(self, job, rnd):
        if job.predictions is None:
            doc = self.document(job)
            job.predictions = self.rounds.predictions(rnd, doc["username"], doc["filename"])
        return job.predictions


class Dispatcher(Worker):
    """Consistency and the leaderboard, then hands the submission to both checks."""

    stage = LEADERBOARD

    def process(self, job):
        sid = job.submission_id
        doc = self.store.begin(sid)
        if doc is None:
            log.info("%s: not queued any more (finished, or gone); nothing to dispatch", sid)
            return
        doc = check_document(doc, sid)
        job.doc = doc
        rnd = self.rounds.get(doc["competition_id"])
        values = self.predictions(job, rnd)
        # Prepared now, while the parsed values are at hand, so later submissions'
        # originality checks find it instead of reading the file again.
        self.rounds.prepare(rnd, sid, doc["username"], doc["filename"], values)
        tournament = rnd.tournament
        valid = tournament.validation
        found = consistency.consistency_evidence(tournament.eras[valid], tournament.targets[valid], values[valid], self.rules)
        score = found["consistency"]
        loss = consistency.logloss(tournament.targets[valid], values[valid], self.rules.logloss_epsilon)
        self.store.record_consistency(doc, score, loss, self.provenance.fields("consistency", found, rnd, self.rules))
        reported = doc.get("validationLogloss")
        self.store.update_leaderboard(doc, score, loss if reported is None else reported)
        self.store.enter_checks(doc)
        log.info("%s: consistency %.1f%%, validation logloss %.5f", sid, score, loss)
        for stage in (CONCORDANCE, ORIGINALITY):
            self.pipeline.put(stage, Job(sid, doc=doc, predictions=values))

    def record_failure(self, job, error):
        self.store.fail(job.submission_id, error)


class CheckWorker(Worker):
    """A stage that writes one check (``concordant`` or ``original``)."""

    check = None
    evidence = None  # the check's name in the document's ``evidence``

    def process(self, job):
        doc = self.document(job)
        if not (doc.get(self.check) or {}).get("pending", True):
            log.info("%s: %s already judged; nothing to do", job.submission_id, self.check)
            return
        rnd = self.rounds.get(doc["competition_id"])
        verdict, found = self.judge(job, doc, rnd)
        log.info("%s: %s = %s", job.submission_id, self.check, bool(verdict))
        fields = self.provenance.fields(self.evidence, found, rnd, self.rules)
        if self.store.record_check(doc, self.check, bool(verdict), evidence=fields):
            self.metrics.outcome("done")

    def record_failure(self, job, error):
        doc = self.store.get(job.submission_id)
        if doc is None:
            return
        self.store.record_check(doc, self.check, None, error)


class ConcordanceWorker(CheckWorker):
    """Judges concordance against the round's (cached) clusters."""

    stage = CONCORDANCE
    check = "concordant"
    evidence = "concordance"

    def judge(self, job, doc, rnd):
        groups = self.rounds.groups(rnd)
        found = concordance.concordance_evidence(groups, self.predictions(job, rnd), self.rules)
        log.info("%s: concordance %.4f", job.submission_id, found["mean"])
        return found["concordant"], found


class OriginalityWorker(CheckWorker):
    """Judges originality against everyone else's latest earlier submission."""

    stage = ORIGINALITY
    check = "original"
    evidence = "originality"

    def judge(self, job, doc, rnd):
        values = self.predictions(job, rnd)
        others = self.store.latest_others(doc["competition_id"], doc["username"], doc["created"])
        keys, left_out = [], []
        for other in others:
            try:
                self.rounds.prepare(rnd, other["submission_id"], other["username"], other["filename"])
                keys.append(other["submission_id"])
            except PERMANENT as exc:
                log.warning("%s: skipping %s's submission %s in originality: %s",
                            job.submission_id, other["username"], other["submission_id"], reason(exc))
                left_out.append({"submission_id": other["submission_id"], "username": other["username"],
                                 "reason": reason(exc)})
        found = rnd.index.explain(values, keys, self.rules)  # its verdict is is_original's, exactly
        self.rounds.prepare(rnd, job.submission_id, doc["username"], doc["filename"], values)
        log.info("%s: compared with %d other submissions", job.submission_id, len(keys))
        return found["original"], named_originality(found, others, left_out)
