"""Group commit at the intake: batches share round trips, answers stay per request."""
import threading
import time

import pymongo.errors
import pytest

from queues.intake import Acceptor


class Gate:
    """A store whose first accept_many waits until released, recording every batch."""

    def __init__(self, store):
        self.store = store
        self.batches = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error = None

    def accept_many(self, ids):
        self.batches.append(list(ids))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return self.store.accept_many(ids)


def run_all(acceptor, ids):
    answers = [None] * len(ids)
    errors = [None] * len(ids)

    def one(number):
        try:
            answers[number] = acceptor.accept(ids[number])
        except Exception as exc:
            errors[number] = exc
    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(ids))]
    return threads, answers, errors


def wait_until(condition, timeout=10):
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def pile_up(gate, acceptor, first, rest):
    """Block a first batch in the store, queue ``rest`` behind it, then release."""
    lead, lead_answer, _ = run_all(acceptor, [first])
    lead[0].start()
    assert gate.entered.wait(10)
    threads, answers, errors = run_all(acceptor, rest)
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acceptor._waiting) == len(rest))
    gate.release.set()
    for thread in lead + threads:
        thread.join(10)
    return lead_answer[0], answers, errors


def test_concurrent_requests_share_one_batch_and_get_their_own_answers(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(6)]
    store.accept(ids[5])  # already queued before
    gate = Gate(store)
    acceptor = Acceptor(gate)
    first, answers, errors = pile_up(gate, acceptor, ids[0], ids[1:] + ["5" * 24, ids[1]])
    assert first == "queued"
    assert errors == [None] * 7
    assert answers[:4] == ["queued"] * 4
    assert answers[4] == "already" and answers[5] == "missing"
    assert answers[6] == "already"  # the same id twice in one batch is queued once
    assert len(gate.batches) == 2 and sorted(gate.batches[1]) == sorted(ids[1:] + ["5" * 24, ids[1]])
    assert all(store.get(sid)["processing"]["state"] == "queued" for sid in ids)


def test_a_failed_write_fails_every_request_of_its_batch(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(4)]
    gate = Gate(store)
    gate.error = pymongo.errors.AutoReconnect("down")
    acceptor = Acceptor(gate)
    first, answers, errors = pile_up(gate, acceptor, ids[0], ids[1:])
    assert first is None
    assert all(isinstance(error, pymongo.errors.AutoReconnect) for error in errors)
    assert all("processing" not in store.get(sid) for sid in ids)
    gate.error = None
    assert acceptor.accept(ids[1]) == "queued"  # the next batch goes through


def test_without_concurrency_each_request_is_its_own_batch(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(3)]
    gate = Gate(store)
    gate.release.set()
    acceptor = Acceptor(gate)
    assert [acceptor.accept(sid) for sid in ids] == ["queued"] * 3
    assert gate.batches == [[sid] for sid in ids]


@pytest.mark.parametrize("state, answer", [(None, "queued"), ("queued", "already"), ("scoring", "already"),
                                           ("done", "queued"), ("failed", "queued")])
def test_accept_many_by_state(store, submit, model, db, state, answer):
    sid = submit("alice", model(1))
    if state:
        db.submissions.update_one({}, {"$set": {"processing.state": state}})
    assert store.accept_many([sid, "6" * 24]) == [answer, "missing"]
    assert store.get(sid)["processing"]["state"] == ("scoring" if state == "scoring" else "queued")
