"""Pipeline: per-stage dedupe of ids in flight, release on done, depth and age."""
import threading
import time

import pytest

from queues.pipeline import CONCORDANCE, LEADERBOARD, ORIGINALITY, STAGES, Job, Pipeline


def test_put_queues_once_per_stage(pipeline):
    assert pipeline.put(LEADERBOARD, Job("a")) is True
    assert pipeline.put(LEADERBOARD, Job("a")) is False
    assert pipeline.queues[LEADERBOARD].qsize() == 1
    # the same id is independent at another stage, and another id at the same stage
    assert pipeline.put(CONCORDANCE, Job("a")) is True
    assert pipeline.put(LEADERBOARD, Job("b")) is True
    assert pipeline.queues[LEADERBOARD].qsize() == 2
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
    pipeline.put(LEADERBOARD, Job("a"))
    pipeline.put(CONCORDANCE, Job("a"))
    pipeline.done(CONCORDANCE, Job("a"))
    pipeline.done(ORIGINALITY, Job("never-queued"))
    assert pipeline.in_flight(LEADERBOARD, "a")
    assert not pipeline.in_flight(CONCORDANCE, "a")


def test_depth_counts_in_flight_per_stage(pipeline):
    assert all(pipeline.depth(stage) == 0 for stage in STAGES)
    for sid in ("a", "b", "c"):
        pipeline.put(CONCORDANCE, Job(sid))
    pipeline.put(CONCORDANCE, Job("a"))  # duplicate: not counted twice
    pipeline.put(ORIGINALITY, Job("a"))
    assert pipeline.depth(CONCORDANCE) == 3
    assert pipeline.depth(ORIGINALITY) == 1
    assert pipeline.depth(LEADERBOARD) == 0
    pipeline.done(CONCORDANCE, Job("b"))
    assert pipeline.depth(CONCORDANCE) == 2


def test_oldest_age_follows_the_oldest_in_flight_job(pipeline):
    assert pipeline.oldest_age(LEADERBOARD) == 0.0
    now = time.monotonic()
    old = Job("old", enqueued=now - 30)
    young = Job("young", enqueued=now - 5)
    pipeline.put(LEADERBOARD, young)
    pipeline.put(LEADERBOARD, old)
    assert 30 <= pipeline.oldest_age(LEADERBOARD) < 60
    pipeline.done(LEADERBOARD, old)
    assert 5 <= pipeline.oldest_age(LEADERBOARD) < 30
    pipeline.done(LEADERBOARD, young)
    assert pipeline.oldest_age(LEADERBOARD) == 0.0
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
        queued = pipeline.put(LEADERBOARD, Job("same"))
        with lock:
            results.append(queued)

    workers = [threading.Thread(target=put) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert sorted(results) == [False] * (threads - 1) + [True]
    assert pipeline.queues[LEADERBOARD].qsize() == 1


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_a_queue(pipeline, stage):
    job = Job("x")
    pipeline.put(stage, job)
    assert pipeline.queues[stage].get_nowait() is job
