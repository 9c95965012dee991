"""The pipeline stages: one class per queue, each with one ``loop``.

A worker takes a job, does its stage, and hands the submission on; every
write goes through a transition of :mod:`queues.store` under the job's
lease. What goes wrong is sorted at the top of the loop: a permanent
problem ends the submission as failed with its reason; a transient one
is retried with bounded exponential backoff, then the lease is given up
for the recovery sweep of any server; a lost lease means someone else
owns the work now, so the result is dropped; anything unexpected is
logged with the submission id and recorded as an internal error, and the
loop carries on with the next job.
"""
import logging
import queue
import random
import time

from bson import ObjectId

from queues import fields
from queues.errors import (PERMANENT, LateFile, MalformedSubmission, MissingSubmission, is_misconfiguration, is_transient,
                           misconfiguration, reason)
from queues.explain import named_originality
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY, Job, Verdicts
from queues.provenance import Provenance
from queues.store import LeaseLost
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


def backoff(attempt):
    """Delay before retry number ``attempt`` (0-based), with jitter."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1.0)


def require_judgeable(doc, submission_id):
    """Raise a permanent error, naming the field and what it holds, unless the document has what judging needs."""
    if doc is None:
        raise MissingSubmission("submission %s no longer exists" % submission_id)
    bad = fields.malformed(doc)
    if bad is not None:
        raise MalformedSubmission("the submission document cannot be judged: %s" % bad[1])
    return doc


class Worker:
    """The shared loop; subclasses say what a stage does with one job.

    ``board`` is told which leaderboard entries a transition changed;
    ``members`` answers originality's "who else submitted" from memory;
    ``provenance`` stamps each step's evidence with who judged it and how.
    """

    stage = None

    def __init__(self, pipeline, store, rounds, rules, metrics, board=None, members=None, provenance=None):
        self.pipeline = pipeline
        self.store = store
        self.rounds = rounds
        self.rules = rules
        self.metrics = metrics
        self.board = board
        self.members = members
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
                self.pipeline.give_way()  # the intake first: see Pipeline.give_way
                self.run(job)
            finally:
                self.pipeline.done(self.stage, job)

    def run(self, job):
        """Process one job, sorting failures; returns the outcome for tests and metrics."""
        sid = job.submission_id
        for attempt in range(MAX_ATTEMPTS):
            started = time.monotonic()
            try:
                outcome = self.process(job)
                self.metrics.stage_finished(self.stage, time.monotonic() - started)
                return outcome
            except LeaseLost:
                log.warning("%s: %s lost its lease to another worker; its result is dropped", sid, self.stage)
                return "lost"
            except PERMANENT as exc:
                log.info("%s: %s failed: %s", sid, self.stage, reason(exc))
                return self.fail(job, reason(exc))
            except LateFile as exc:  # judged later rather than without the file; no thread waits for it
                log.info("%s: %s waits: %s; the recovery sweep judges it again", sid, self.stage, exc)
                self.metrics.outcome("retried")
                self.give_up(job)
                return "deferred"
            except Exception as exc:  # sorted below: misconfiguration, transient or a bug
                if is_misconfiguration(exc):  # no submission's fault, and retrying now cannot help
                    log.error("%s: %s cannot go on: %s; the recovery sweep will retry it when the lease runs out",
                              sid, self.stage, misconfiguration(exc))
                    if job.verdicts is not None:
                        job.verdicts.close()
                    return "deferred"
                if not is_transient(exc):
                    log.exception("%s: unexpected error in %s", sid, self.stage)
                    return self.fail(job, INTERNAL_ERROR % type(exc).__name__)
                delay = backoff(attempt)
                log.warning("%s: %s hit a transient error (%s: %s); retry %d in %.1fs",
                            sid, self.stage, type(exc).__name__, exc, attempt + 1, delay)
                self.metrics.outcome("retried")
                if self.pipeline.stop.wait(delay):
                    return "stopped"
        log.error("%s: %s still failing after %d attempts; giving the lease up for the recovery sweep",
                  sid, self.stage, MAX_ATTEMPTS)
        self.give_up(job)
        return "deferred"

    def give_up(self, job):
        """Let any server's sweep take the submission now, rather than when the lease runs out."""
        if job.verdicts is not None:
            job.verdicts.close()
        if job.claim is not None:
            try:
                self.store.release([job.claim.token], job.claim.oid)
            except Exception as exc:  # the database may be away: the lease expires on its own
                log.warning("%s: could not release the lease (%s); it expires on its own", job.submission_id, type(exc).__name__)

    def fail(self, job, error):
        """End the submission as failed (one transition); if that cannot be written, leave it to recovery."""
        if job.claim is None:
            return "skipped"
        verdicts = job.verdicts.close() if job.verdicts is not None else {}
        if verdicts is None:  # the other check already ended this claim
            return "skipped"
        evidence = job.verdicts.evidence if job.verdicts is not None else None
        try:
            self.store.failed(job.claim, error, verdicts, evidence)
        except LeaseLost:
            log.warning("%s: lost the lease before recording the failure; the new owner judges it", job.submission_id)
            return "lost"
        except Exception as exc:  # the database may be down: the lease expires and recovery retries
            log.error("%s: could not record failure (%s); recovery will retry", job.submission_id, type(exc).__name__)
            return "deferred"
        self.metrics.outcome("failed")
        self.touch_board(job.claim)
        return "failed"

    def touch_board(self, claim):
        if self.board is not None:
            self.board.touch(claim.doc.get("competition_id"), claim.doc.get("username"), claim.oid)

    def predictions(self, job, rnd):
        """The job's predictions in ``rnd``'s row order: parsed once, and again when the round was
        rebuilt on a replaced dataset (rows parsed against the old order would be misaligned)."""
        if job.predictions is None or job.predictions_version != rnd.version:
            doc = job.claim.doc
            job.predictions = self.rounds.predictions(rnd, doc["username"], doc["filename"])
            job.predictions_version = rnd.version
        return job.predictions

    def consistency_fields(self, job, rnd):
        """``(score, logloss, fields)``: consistency and validation logloss on ``rnd``'s rows, with
        the evidence and provenance written beside them."""
        values = self.predictions(job, rnd)
        tournament = rnd.tournament
        valid = tournament.validation
        found = consistency.consistency_evidence(tournament.validation_eras, tournament.targets[valid], values[valid],
                                                 self.rules)
        loss = consistency.logloss(tournament.targets[valid], values[valid], self.rules.logloss_epsilon)
        return found["consistency"], loss, self.provenance.fields("consistency", found, rnd, self.rules)


class Dispatcher(Worker):
    """Claims a submission, then consistency and logloss, then hands it to both checks."""

    stage = DISPATCH

    def process(self, job):
        sid = job.submission_id
        if job.claim is None:
            job.claim = self.store.claim(sid, token=job.token)
            if job.claim is None and job.token is not None:
                job.claim = self.accept_again(job)
            if job.claim is None:
                log.info("%s: nothing to claim (finished, gone, or another worker holds it)", sid)
                return "skipped"
        claim = job.claim
        require_judgeable(claim.doc, sid)
        if not claim.dispatched:
            self.dispatch(job)
        if not claim.pending:  # dispatched with both verdicts in: only the final transition is missing
            self.store.judged(claim, {})
            self.metrics.outcome("done")
            self.touch_board(claim)
            return "ok"
        job.verdicts = Verdicts(claim.pending)
        for stage, check in ((CONCORDANCE, "concordant"), (ORIGINALITY, "original")):
            if check in claim.pending:
                self.pipeline.put(stage, Job(sid, claim=claim, predictions=job.predictions,
                                             predictions_version=job.predictions_version, verdicts=job.verdicts))
        return "ok"

    def accept_again(self, job):
        """The claim of an accepted submission whose document the backend rewrote meanwhile, or None.

        A rewrite (``replace_one``) drops ``processing`` and with it the
        intake's lease, while a repeated POST of the same id is answered
        from this process's memory as already queued: the 202 promised a
        judgement, so the submission is accepted again here.
        """
        doc = self.store.get(job.submission_id)
        processing = (doc or {}).get("processing")
        if doc is None or (isinstance(processing, dict) and processing.get("state")):
            return None
        log.info("%s: the document was rewritten after it was accepted; accepting it again", job.submission_id)
        job.token = ObjectId()
        if self.store.accept_many([job.submission_id], job.token) != ["queued"]:
            return None
        return self.store.claim(job.submission_id, token=job.token)

    def measure(self, job, rnd):
        """:meth:`consistency_fields` of the job on ``rnd``, its predictions prepared for originality; writes nothing.

        Prepared now, while the parsed values are at hand, so later
        submissions' originality checks find them instead of reading the
        file again.
        """
        doc = job.claim.doc
        self.rounds.prepare(rnd, job.submission_id, doc["username"], doc["filename"], self.predictions(job, rnd))
        return self.consistency_fields(job, rnd)

    def dispatch(self, job):
        """Consistency and logloss on validation rows, written in one transition."""
        claim = job.claim
        with self.rounds.hold(claim.doc["competition_id"]) as rnd:
            score, loss, fields = self.measure(job, rnd)
        self.store.dispatched(claim, score, loss, fields)
        claim.doc.setdefault("provenance", {})["dataset_version"] = rnd.version  # as written: the checks compare it
        self.touch_board(claim)
        log.info("%s: consistency %.1f%%, validation logloss %.5f", job.submission_id, score, loss)


class CheckWorker(Worker):
    """A stage that judges one check (``concordant`` or ``original``).

    The checks of a claim meet in its :class:`~queues.pipeline.Verdicts`;
    whichever finishes last writes every verdict and DONE in one transition.
    """

    check = None
    evidence = None  # the check's name in the document's ``evidence``

    def process(self, job):
        claim = job.claim
        if job.complete is None:
            with self.rounds.hold(claim.doc["competition_id"]) as rnd:
                value, found = self.judge(job, claim.doc, rnd)
                log.info("%s: %s = %s", job.submission_id, self.check, bool(value))
                fields = self.provenance.fields(self.evidence, found, rnd, self.rules)
                job.complete = job.verdicts.add(self.check, bool(value), fields)
            if job.complete is None:
                return "ok"
        if not job.aligned:
            self.align(job)
            job.aligned = True
        self.store.judged(claim, job.complete, job.verdicts.evidence)
        self.metrics.outcome("done")
        self.touch_board(claim)
        return "ok"

    def align(self, job):
        """Make every verdict of the final write one judged on the round's current dataset.

        The dataset may be replaced between dispatch and the checks, or
        between the two checks; a write mixing versions would be judged on
        no dataset at all. So the check that completes the set compares the
        version each part was judged on (consistency's from dispatch, each
        check's from its provenance) with the current round's and judges
        again, on the current rows, whatever was judged on another.
        """
        claim = job.claim
        doc = claim.doc
        evidence = job.verdicts.evidence
        with self.rounds.hold(doc["competition_id"]) as rnd:
            dispatched_on = (doc.get("provenance") or {}).get("dataset_version")
            if dispatched_on is not None and dispatched_on != rnd.version:
                score, loss, fields = self.consistency_fields(job, rnd)
                log.info("%s: the dataset changed since dispatch; consistency on the new rows is %.1f%%",
                         job.submission_id, score)
                evidence.update(fields, consistency=score)
            for worker in CHECK_WORKERS:
                judged_on = (evidence.get("provenance.judged_by.%s" % worker.evidence) or {}).get("dataset_version")
                if worker.check in job.complete and judged_on != rnd.version:
                    # the judges use only what every worker has, so any worker can run either
                    value, found = worker.judge(self, job, doc, rnd)
                    log.info("%s: the dataset changed since %s was judged; on the new rows %s = %s",
                             job.submission_id, worker.check, worker.check, bool(value))
                    job.complete[worker.check] = bool(value)
                    evidence.update(self.provenance.fields(worker.evidence, found, rnd, self.rules))


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
        others, malformed = self.members.latest_others(doc["competition_id"], doc["username"], doc["created"])
        # its verdict is is_original's, exactly, over the submissions that counted
        found, left_out = self.rounds.compare(rnd, job.submission_id, values, others, self.rules)
        left_out = malformed + left_out
        self.rounds.prepare(rnd, job.submission_id, doc["username"], doc["filename"], values)
        log.info("%s: compared with %d other submissions, %d left out", job.submission_id, found["compared"],
                 len(left_out))
        return found["original"], named_originality(found, others, left_out)


#: The checks, for :meth:`CheckWorker.align` to judge again whichever was judged on a replaced dataset.
CHECK_WORKERS = (ConcordanceWorker, OriginalityWorker)
