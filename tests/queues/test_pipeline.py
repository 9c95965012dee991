"""Pipeline: per-stage dedupe of ids in flight, release on done, depth, age and leases; the checks' meeting point;
giving way to the intake."""
import threading
import time

import pytest

from bson import ObjectId

from queues.metrics import Metrics
from queues.pipeline import (CONCORDANCE, DISPATCH, GIVE_WAY_SECONDS, ORIGINALITY, QUIET_SECONDS, STAGES, Job, Pipeline,
                             Verdicts)
from queues.store import Claim
from queues.workers import Worker


def test_put_queues_once_per_stage(pipeline):
    assert pipeline.put(DISPATCH, Job("a")) is True
    assert pipeline.put(DISPATCH, Job("a")) is False
    assert pipeline.queues[DISPATCH].qsize() == 1
    # the same id is independent at another stage, and another id at the same stage
    assert pipeline.put(CONCORDANCE, Job("a")) is True
    assert pipeline.put(DISPATCH, Job("b")) is True
    assert pipeline.queues[DISPATCH].qsize() == 2
    assert pipeline.queues[CONCORDANCE].qsize() == 1
    assert pipeline.queues[ORIGINALITY].qsize() == 0


def test_in_flight_until_done_even_after_taken_off_the_queue(pipeline):
    job = Job("a")
    pipeline.put(ORIGINALITY, job)
    taken = pipeline.queues[ORIGINALITY].get_nowait()
    assert taken is job
    # a worker holds it: still in flight, so still not queued again
    assert pipeline.in_flight(ORIGINALITY, "a")
    assert pipeline.put(ORIGINALITY, Job("a")) is False
    pipeline.done(ORIGINALITY, taken)
    assert not pipeline.in_flight(ORIGINALITY, "a")
    assert pipeline.put(ORIGINALITY, Job("a")) is True


def test_done_only_releases_its_own_stage_and_tolerates_unknown_jobs(pipeline):
    pipeline.put(DISPATCH, Job("a"))
    check = Job("a")
    pipeline.put(CONCORDANCE, check)
    pipeline.done(CONCORDANCE, check)
    pipeline.done(ORIGINALITY, Job("never-queued"))
    assert pipeline.in_flight(DISPATCH, "a")
    assert not pipeline.in_flight(CONCORDANCE, "a")


def test_done_with_another_job_of_the_same_id_keeps_the_one_in_flight(pipeline):
    """A worker finishing a stale job must not let a newer job of the same id be queued twice."""
    current = Job("a", token=ObjectId())
    pipeline.put(DISPATCH, current)
    pipeline.done(DISPATCH, Job("a"))
    assert pipeline.in_flight(DISPATCH, "a")
    assert pipeline.tokens() == {current.token}
    pipeline.done(DISPATCH, current)
    assert not pipeline.anywhere("a")


def test_depth_counts_in_flight_per_stage(pipeline):
    assert all(pipeline.depth(stage) == 0 for stage in STAGES)
    jobs = {sid: Job(sid) for sid in ("a", "b", "c")}
    for job in jobs.values():
        pipeline.put(CONCORDANCE, job)
    pipeline.put(CONCORDANCE, Job("a"))  # duplicate: not counted twice
    pipeline.put(ORIGINALITY, Job("a"))
    assert pipeline.depth(CONCORDANCE) == 3
    assert pipeline.depth(ORIGINALITY) == 1
    assert pipeline.depth(DISPATCH) == 0
    pipeline.done(CONCORDANCE, jobs["b"])
    assert pipeline.depth(CONCORDANCE) == 2


def test_oldest_age_follows_the_oldest_in_flight_job(pipeline):
    assert pipeline.oldest_age(DISPATCH) == 0.0
    now = time.monotonic()
    old = Job("old", enqueued=now - 30)
    young = Job("young", enqueued=now - 5)
    pipeline.put(DISPATCH, young)
    pipeline.put(DISPATCH, old)
    assert 30 <= pipeline.oldest_age(DISPATCH) < 60
    pipeline.done(DISPATCH, old)
    assert 5 <= pipeline.oldest_age(DISPATCH) < 30
    pipeline.done(DISPATCH, young)
    assert pipeline.oldest_age(DISPATCH) == 0.0
    assert pipeline.oldest_age(CONCORDANCE) == 0.0


def test_stop_event_is_shared_when_given():
    stop = threading.Event()
    assert Pipeline(stop).stop is stop
    own = Pipeline()
    assert own.stop is not stop and not own.stop.is_set()


def test_concurrent_puts_of_one_id_queue_it_once(pipeline):
    threads = 16
    barrier = threading.Barrier(threads)
    results = []
    lock = threading.Lock()

    def put():
        barrier.wait()
        queued = pipeline.put(DISPATCH, Job("same"))
        with lock:
            results.append(queued)

    workers = [threading.Thread(target=put) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert sorted(results) == [False] * (threads - 1) + [True]
    assert pipeline.queues[DISPATCH].qsize() == 1


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_a_queue(pipeline, stage):
    job = Job("x")
    pipeline.put(stage, job)
    assert pipeline.queues[stage].get_nowait() is job


def test_anywhere_looks_at_every_stage(pipeline):
    job = Job("a")
    assert not pipeline.anywhere("a")
    pipeline.put(ORIGINALITY, job)
    assert pipeline.anywhere("a") and not pipeline.anywhere("b")
    pipeline.done(ORIGINALITY, job)
    assert not pipeline.anywhere("a")


def claim_of(sid, token):
    return Claim({"_id": ObjectId(sid), "processing": {"state": "queued"}}, token)


def test_a_job_holds_its_claim_s_lease_once_claimed():
    intake, claimed = ObjectId(), ObjectId()
    job = Job("a" * 24, token=intake)
    assert job.lease == intake
    job.claim = claim_of("a" * 24, claimed)
    assert job.lease == claimed
    assert Job("b" * 24).lease is None


def test_tokens_are_the_leases_of_every_job_in_flight(pipeline):
    intake, claimed, shared = ObjectId(), ObjectId(), ObjectId()
    pipeline.put(DISPATCH, Job("a" * 24, token=intake))
    pipeline.put(DISPATCH, Job("b" * 24, claim=claim_of("b" * 24, claimed), token=ObjectId()))
    pipeline.put(CONCORDANCE, Job("c" * 24, claim=claim_of("c" * 24, shared)))
    pipeline.put(ORIGINALITY, Job("c" * 24, claim=claim_of("c" * 24, shared)))
    pipeline.put(ORIGINALITY, Job("d" * 24))  # holds no lease
    assert pipeline.tokens() == {intake, claimed, shared}
    done = pipeline.queues[DISPATCH].get_nowait()
    pipeline.done(DISPATCH, done)
    assert pipeline.tokens() == {claimed, shared}


# -- Verdicts: where the two checks of a claim meet ---------------------------------
def test_verdicts_the_last_check_gets_them_all():
    meeting = Verdicts(["concordant", "original"])
    assert meeting.add("original", False) is None
    assert not meeting.closed
    assert meeting.add("concordant", True) == {"concordant": True, "original": False}
    assert meeting.closed
    # once complete, nothing more is handed out: nobody writes twice
    assert meeting.add("concordant", False) is None
    assert meeting.close() is None


def test_verdicts_for_one_pending_check_complete_at_once():
    assert Verdicts({"original"}).add("original", True) == {"original": True}


def test_a_failure_closes_the_meeting_and_the_other_result_is_dropped():
    meeting = Verdicts(["concordant", "original"])
    assert meeting.add("concordant", True) is None
    assert meeting.close() == {"concordant": True}  # what the failure keeps
    assert meeting.add("original", True) is None
    assert meeting.close() is None  # a second failure does not write again
    assert meeting.values == {"concordant": True}


def test_a_failure_before_any_verdict_keeps_nothing():
    meeting = Verdicts(["concordant", "original"])
    assert meeting.close() == {}
    assert meeting.add("concordant", True) is None


def test_exactly_one_of_two_racing_checks_completes_the_set():
    for _ in range(200):
        meeting = Verdicts(["concordant", "original"])
        barrier = threading.Barrier(2)
        results = {}

        def finish(check):
            barrier.wait()
            results[check] = meeting.add(check, True)

        threads = [threading.Thread(target=finish, args=(check,)) for check in ("concordant", "original")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        complete = [found for found in results.values() if found is not None]
        assert complete == [{"concordant": True, "original": True}]


# -- giving way to the intake: judging waits while submissions keep arriving --------
class Clock:
    """A fake monotonic clock that is also the pipeline's stop event: waiting advances
    the clock (the test never sleeps) and records how long each wait was asked to be.

    ``during_wait`` runs after each wait, as if something happened meanwhile.
    """

    def __init__(self):
        self.now = 1000.0
        self.waits = []
        self.stopped = False
        self.during_wait = None

    def __call__(self):
        return self.now

    def is_set(self):
        return self.stopped

    def set(self):
        self.stopped = True

    def wait(self, timeout=None):
        self.waits.append(timeout)
        self.now += timeout
        if self.during_wait is not None:
            self.during_wait()
        return self.stopped


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def timed(clock):
    """A pipeline on the fake clock."""
    return Pipeline(clock, clock=clock)


def test_with_no_request_the_pipeline_does_not_wait(timed, clock):
    timed.give_way()
    assert clock.waits == []


def request(pipeline):
    """One whole intake request, as the app wraps it."""
    with pipeline.intake:
        pass


def test_a_request_makes_the_pipeline_wait_until_the_intake_has_been_quiet(timed, clock):
    request(timed)
    clock.now += 0.01
    timed.give_way()
    assert sum(clock.waits) == pytest.approx(QUIET_SECONDS - 0.01)
    clock.waits.clear()
    clock.now += QUIET_SECONDS  # long after the request: judging goes on at once
    timed.give_way()
    assert clock.waits == []


def test_a_request_in_progress_keeps_the_intake_busy_however_long_it_takes(timed, clock):
    """A batch waiting for the database: nothing new arrives, but the intake is not done."""
    with timed.intake:
        started = clock.now
        timed.give_way()
        assert clock.now - started == pytest.approx(GIVE_WAY_SECONDS)
        assert len(clock.waits) > 1 and max(clock.waits) <= QUIET_SECONDS  # it looks again every QUIET_SECONDS
    clock.waits.clear()
    timed.give_way()  # it ended just now: quiet only QUIET_SECONDS later
    assert sum(clock.waits) == pytest.approx(QUIET_SECONDS)


def test_while_requests_keep_coming_the_pipeline_waits_at_most_give_way_seconds(timed, clock):
    request(timed)
    clock.during_wait = lambda: request(timed)  # a request during every wait: the intake is never quiet
    started = clock.now
    timed.give_way()
    assert clock.now - started == pytest.approx(GIVE_WAY_SECONDS)


def test_requests_that_fail_still_end(timed, clock):
    with pytest.raises(ValueError):
        with timed.intake:
            raise ValueError("a refused request")
    clock.now += QUIET_SECONDS
    timed.give_way()
    assert clock.waits == []


def test_stopping_ends_the_wait_at_once(timed, clock):
    def stop_meanwhile():  # the intake is still busy, but the server is stopping
        clock.set()
    clock.during_wait = stop_meanwhile
    with timed.intake:
        timed.give_way()
    assert len(clock.waits) == 1


class Stage(Worker):
    """A stage that records what it judged and stops the pipeline after ``last``."""

    stage = DISPATCH

    def __init__(self, pipeline, order, last):
        super().__init__(pipeline, store=None, rounds=None, rules=None, metrics=Metrics())
        self.order = order
        self.last = last

    def process(self, job):
        self.order.append(("judged", job.submission_id))
        if job.submission_id == self.last:
            self.pipeline.stop.set()
        return "ok"


def test_a_worker_gives_way_before_each_job_and_the_waiting_job_keeps_its_lease(pipeline):
    order = []
    first, second = Job("a" * 24, token=ObjectId()), Job("b" * 24, token=ObjectId())

    def give_way():  # what is in flight while a worker waits: the job it took still is
        order.append(("gave way", sorted(pipeline.tokens()), pipeline.anywhere("a" * 24)))
    pipeline.give_way = give_way
    pipeline.put(DISPATCH, first)
    pipeline.put(DISPATCH, second)
    Stage(pipeline, order, last="b" * 24).loop()
    assert order == [("gave way", sorted([first.token, second.token]), True), ("judged", "a" * 24),
                     ("gave way", [second.token], False), ("judged", "b" * 24)]
    assert not pipeline.anywhere("b" * 24)
