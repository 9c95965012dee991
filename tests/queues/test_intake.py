"""Group commit at the intake: batches share round trips, answers (and leases) stay per request."""
import threading

import pymongo.errors
import pytest
from bson import ObjectId

from queues.intake import Acceptor


class Gate:
    """A store whose first accept_many waits until released, recording every batch and its token.

    ``error`` is raised by every batch, ``errors[n]`` by batch number ``n`` only.
    """

    def __init__(self, store):
        self.store = store
        self.batches = []
        self.tokens = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error = None
        self.errors = {}

    def accept_many(self, ids, token):
        self.batches.append(list(ids))
        self.tokens.append(token)
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        error = self.errors.get(len(self.batches) - 1, self.error)
        if error is not None:
            raise error
        return self.store.accept_many(ids, token)


class Arrivals(list):
    """The acceptor's waiting list, setting ``full`` once ``count`` requests wait in it."""

    def __init__(self, count):
        super().__init__()
        self.count = count
        self.full = threading.Event()

    def append(self, ticket):
        super().append(ticket)
        if len(self) >= self.count:
            self.full.set()


def run_all(acceptor, ids):
    """Threads that each accept one id; what each got back or raised (BaseException included)."""
    answers = [None] * len(ids)
    errors = [None] * len(ids)

    def one(number):
        try:
            answers[number] = acceptor.accept(ids[number])
        except BaseException as exc:  # the leader of an interrupted batch re-raises what stopped it
            errors[number] = exc
    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(ids))]
    return threads, answers, errors


def pile_up(gate, acceptor, first, rest):
    """Block a first batch in the store, queue ``rest`` behind it, then release.

    Returns the first request's (answer, error) and the others' answers and errors.
    """
    lead, lead_answer, lead_error = run_all(acceptor, [first])
    lead[0].start()
    assert gate.entered.wait(10)
    arrivals = Arrivals(len(rest))
    with acceptor._changed:  # the leader took the batch; later requests wait in a fresh list
        assert acceptor._writing and acceptor._waiting == []
        acceptor._waiting = arrivals
    threads, answers, errors = run_all(acceptor, rest)
    for thread in threads:
        thread.start()
    assert arrivals.full.wait(10), "the requests never queued behind the first batch"
    gate.release.set()
    for thread in lead + threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in lead + threads), "a request never got its answer"
    return (lead_answer[0], lead_error[0]), answers, errors


def lease_token(store, sid):
    return store.get(sid)["processing"]["lease"]["token"]


def test_concurrent_requests_share_one_batch_and_get_their_own_answers(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(6)]
    earlier = ObjectId()
    store.accept_many([ids[5]], earlier)  # already queued before
    gate = Gate(store)
    acceptor = Acceptor(gate)
    (first, lead_error), answers, errors = pile_up(gate, acceptor, ids[0], ids[1:] + ["5" * 24, ids[1]])
    assert lead_error is None
    assert first == ("queued", gate.tokens[0])
    assert errors == [None] * 7
    assert [answer for answer, _ in answers] == ["queued"] * 4 + ["already", "missing", "already"]
    assert len(gate.batches) == 2 and sorted(gate.batches[1]) == sorted(ids[1:] + ["5" * 24, ids[1]])
    # every request of the second batch holds that batch's lease, the first batch its own
    assert {token for _, token in answers} == {gate.tokens[1]} and gate.tokens[0] != gate.tokens[1]
    assert lease_token(store, ids[0]) == gate.tokens[0]
    assert all(lease_token(store, sid) == gate.tokens[1] for sid in ids[1:5])
    assert lease_token(store, ids[5]) == earlier  # 'already': the earlier lease is left alone
    assert all(store.get(sid)["processing"]["state"] == "queued" for sid in ids)


def test_a_failed_write_fails_every_request_of_its_batch(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(4)]
    gate = Gate(store)
    gate.error = pymongo.errors.AutoReconnect("down")
    acceptor = Acceptor(gate)
    (first, lead_error), answers, errors = pile_up(gate, acceptor, ids[0], ids[1:])
    assert first is None and isinstance(lead_error, pymongo.errors.AutoReconnect)
    assert answers == [None] * 3
    assert all(isinstance(error, pymongo.errors.AutoReconnect) for error in errors)
    assert all("processing" not in store.get(sid) for sid in ids)
    gate.error = None
    answer, token = acceptor.accept(ids[1])  # the next batch goes through
    assert answer == "queued" and lease_token(store, ids[1]) == token


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C of our own making, so that no real one is mistaken for it."""


@pytest.mark.parametrize("stop", [Interrupted(), SystemExit(3)], ids=["KeyboardInterrupt", "SystemExit"])
def test_a_leader_stopped_by_a_base_exception_still_answers_everyone(store, submit, model, stop):
    """An exception that is not an Exception must neither strand the waiting requests nor the next leader."""
    ids = [submit("u%d" % n, model(n)) for n in range(5)]
    gate = Gate(store)
    gate.errors[1] = stop  # the batch of requests that waited behind the first
    acceptor = Acceptor(gate)
    (first, lead_error), answers, errors = pile_up(gate, acceptor, ids[0], ids[1:4])
    assert lead_error is None and first == ("queued", gate.tokens[0])
    assert len(gate.batches) == 2 and sorted(gate.batches[1]) == sorted(ids[1:4])
    assert answers == [None] * 3
    # the second batch's leader sees what stopped it in its own thread; the others get an error to answer with
    assert sum(error is stop for error in errors) == 1
    others = [error for error in errors if error is not stop]
    assert len(others) == 2
    for error in others:
        assert isinstance(error, RuntimeError) and "send it again" in str(error)
    assert not acceptor._writing and acceptor._waiting == []
    assert all("processing" not in store.get(sid) for sid in ids[1:4])
    answer, token = acceptor.accept(ids[4])  # the next request leads a batch of its own and goes through
    assert answer == "queued" and lease_token(store, ids[4]) == token
    assert gate.batches[2] == [ids[4]]


class Short:
    """A store answering fewer ids than it was asked about."""

    def __init__(self, store):
        self.store = store

    def accept_many(self, ids, token):
        return self.store.accept_many(ids, token)[:-1]


def test_answers_that_do_not_fit_the_batch_fail_the_unanswered_requests(store, submit, model):
    sid = submit("alice", model(1))
    acceptor = Acceptor(Short(store))
    with pytest.raises(RuntimeError, match="send it again"):
        acceptor.accept(sid)
    assert not acceptor._writing
    assert Acceptor(store).accept(sid)[0] == "already"  # the write itself happened


def test_without_concurrency_each_request_is_its_own_batch(store, submit, model):
    ids = [submit("u%d" % n, model(n)) for n in range(3)]
    gate = Gate(store)
    gate.release.set()
    acceptor = Acceptor(gate)
    answers = [acceptor.accept(sid) for sid in ids]
    assert [answer for answer, _ in answers] == ["queued"] * 3
    assert gate.batches == [[sid] for sid in ids]
    assert [token for _, token in answers] == gate.tokens and len(set(gate.tokens)) == 3


@pytest.mark.parametrize("state, answer", [(None, "queued"), ("queued", "already"), ("scoring", "already"),
                                           ("done", "queued"), ("failed", "queued")])
def test_accept_many_by_state(store, submit, model, db, state, answer):
    sid = submit("alice", model(1))
    if state:
        db.submissions.update_one({}, {"$set": {"processing.state": state}})
    token = ObjectId()
    assert store.accept_many([sid, "6" * 24], token) == [answer, "missing"]
    assert store.get(sid)["processing"]["state"] == ("scoring" if state == "scoring" else "queued")
    assert (store.get(sid)["processing"].get("lease") or {}).get("token") == (token if answer == "queued" else None)
