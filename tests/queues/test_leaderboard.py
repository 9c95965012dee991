"""The leaderboard writer: grouped compare-and-set writes that converge on the submissions.

Runs against SecantusDB (``real_db``): the grouped write uses array
filters, which mongomock does not implement.
"""
import collections
import datetime
import threading

import pytest
from bson import ObjectId

from queues.competitions import Competitions
from queues.leaderboard import Leaderboard, desired_entry
from queues.store import Store

ROUND = 41
T0 = datetime.datetime(2017, 3, 20, 12, 0)


class Round:
    """Submissions moved through the store's transitions, as the workers would."""

    def __init__(self, db):
        self.db = db
        self.store = Store(db, owner="test:1:1")
        self.clock = T0
        self.claims = {}
        db.users.insert_one({"username": "alice", "earnings": {"career": {"usd": 7.0, "nmr": 1.5}}})

    def submit(self, username, created=None):
        self.clock += datetime.timedelta(minutes=1)
        oid = ObjectId()
        self.db.submissions.insert_one({"_id": oid, "username": username, "competition_id": ROUND,
                                        "filename": "f.csv", "created": created or self.clock})
        token = ObjectId()
        self.store.accept_many([str(oid)], token)
        self.claims[oid] = self.store.claim(str(oid), token=token)
        return oid

    def dispatch(self, oid, consistency=50.0, logloss=0.69):
        self.store.dispatched(self.claims[oid], consistency, logloss)

    def judge(self, oid, concordant=True, original=True):
        self.store.judged(self.claims[oid], {"concordant": concordant, "original": original})

    def fail(self, oid, reason="broken"):
        self.store.failed(self.claims[oid], reason)

    def doc(self, oid):
        return self.db.submissions.find_one({"_id": oid})

    def entries(self):
        return (self.db.competitions.find_one({"_id": ROUND}) or {}).get("leaderboard", [])

    def entry(self, username):
        found = [e for e in self.entries() if e["username"] == username]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture
def rnd(real_db):
    return Round(real_db)


@pytest.fixture
def board(rnd):
    return Leaderboard(rnd.store, threading.Event())


def assert_in_line(rnd):
    """Every user's single entry shows their newest dispatched submission, verdicts included."""
    newest = {}
    for doc in rnd.db.submissions.find({"processing.dispatched": True}):
        mine = newest.get(doc["username"])
        if mine is None or (doc["created"], doc["_id"]) > (mine["created"], mine["_id"]):
            newest[doc["username"]] = doc
    counts = collections.Counter(e["username"] for e in rnd.entries())
    assert set(counts.values()) <= {1}, counts
    assert set(counts) == set(newest)
    for username, doc in newest.items():
        entry = rnd.entry(username)
        assert {key: entry.get(key) for key in desired_entry(doc)} == desired_entry(doc), username


def test_new_users_get_their_entries_in_one_write(rnd, board):
    oids = [rnd.submit("u%02d" % i) for i in range(30)] + [rnd.submit("alice")]
    for oid in oids:
        rnd.dispatch(oid)
        board.touch(ROUND, rnd.doc(oid)["username"])
    board.flush(board.take(0))
    assert board.writes == 1
    assert_in_line(rnd)
    alice = rnd.entry("alice")
    assert alice["earnings"] == {"career": {"usd": 7.0, "nmr": 1.5}, "competition": {"usd": 0, "nmr": 0}}
    assert alice["concordant"] == {"pending": True} and alice["logloss"] == {"validation": 0.69, "consistency": 50.0}
    assert rnd.entry("u00")["earnings"]["career"] == {"usd": 0, "nmr": 0}
    assert rnd.store.stamped(100) == set()


def test_many_changes_go_in_one_write_and_a_replay_writes_nothing(rnd, board):
    oids = [rnd.submit("u%02d" % i) for i in range(40)]
    for oid in oids:
        rnd.dispatch(oid)
        board.touch(ROUND, rnd.doc(oid)["username"])
    board.flush(board.take(0))
    writes = board.writes
    for number, oid in enumerate(oids):
        rnd.judge(oid, concordant=number % 2 == 0, original=number % 3 == 0)
        board.touch(ROUND, rnd.doc(oid)["username"])
    board.flush(board.take(0))
    assert board.writes == writes + 1  # forty verdict changes, one write
    assert_in_line(rnd)
    before = rnd.db.competitions.find_one({"_id": ROUND})
    for oid in oids:
        board.touch(ROUND, rnd.doc(oid)["username"])
    board.flush(board.take(0))
    assert rnd.db.competitions.find_one({"_id": ROUND}) == before  # a replay changes nothing


class Gathering(threading.Event):
    """A stop flag whose waits stand for time passing: each wait runs the next of ``arrivals``;
    once they are all done, the next wait stops the writer."""

    def __init__(self, arrivals):
        super().__init__()
        self.arrivals = list(arrivals)
        self.waited = []

    def wait(self, timeout=None):
        self.waited.append(timeout)
        if self.arrivals:
            self.arrivals.pop(0)()
        else:
            self.set()
        return self.is_set()


def test_under_a_burst_the_writer_writes_once_per_interval_not_once_per_change(rnd):
    oids = [rnd.submit("u%02d" % i) for i in range(30)]

    def transitions(chosen, step):
        """Each submission's transition and its touch, one after the other, as workers make them."""
        def arrive():
            for oid in chosen:
                step(oid)
                board.touch(ROUND, rnd.doc(oid)["username"])
        return arrive
    stop = Gathering([transitions(oids[10:], rnd.dispatch), transitions(oids, rnd.judge)])
    board = Leaderboard(rnd.store, stop, interval=5.0)
    transitions(oids[:10], rnd.dispatch)()
    writer = threading.Thread(target=board.loop, daemon=True)
    writer.start()
    writer.join(30)
    assert not writer.is_alive()
    # three bursts of 10, 20 and 30 changes, each change touched on its own: one write per burst
    # (the first ten entries pushed, the next twenty pushed, the thirty verdicts in one grouped write),
    # each burst gathered while the writer waited out the interval after the write before
    assert board.writes == 3, board.writes
    assert len(stop.waited) == 3 and all(0 < timeout <= 5.0 for timeout in stop.waited), stop.waited
    assert_in_line(rnd)
    assert rnd.store.stamped(100) == set()


def test_the_entry_shows_the_newest_submission_whatever_order_they_are_dispatched(rnd, board):
    older = rnd.submit("alice")
    newer = rnd.submit("alice")
    rnd.dispatch(newer, consistency=75.0)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    assert rnd.entry("alice")["submission_id"] == newer
    rnd.dispatch(older, consistency=25.0)  # a retry or re-POST of the older one, dispatched later
    rnd.judge(older)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    assert rnd.entry("alice")["submission_id"] == newer
    assert rnd.entry("alice")["logloss"]["consistency"] == 75.0
    rnd.judge(newer, concordant=False)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    assert rnd.entry("alice")["concordant"] == {"pending": False, "value": False}
    assert_in_line(rnd)


def test_equal_created_times_are_ordered_by_id(rnd, board):
    oids = sorted(rnd.submit("alice", created=T0) for _ in range(3))
    for oid in reversed(oids):
        rnd.dispatch(oid)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    assert rnd.entry("alice")["submission_id"] == oids[-1]


def test_a_submission_that_fails_before_dispatch_never_displaces_the_entry(rnd, board):
    good = rnd.submit("alice")
    rnd.dispatch(good)
    rnd.judge(good)
    broken = rnd.submit("alice")
    rnd.fail(broken)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    assert rnd.entry("alice")["submission_id"] == good
    assert rnd.store.stamped(10) == set()  # the failed one's stamp is confirmed too


def test_only_the_fields_the_service_owns_are_written(rnd, board):
    oid = rnd.submit("alice")
    rnd.dispatch(oid)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    rnd.db.competitions.update_one(
        {"_id": ROUND, "leaderboard.username": "alice"},
        {"$set": {"leaderboard.$.earnings.competition": {"usd": 12.5, "nmr": 3}, "leaderboard.$.paid": True,
                  "resolved": True}})
    rnd.judge(oid, original=False)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    entry = rnd.entry("alice")
    assert entry["original"] == {"pending": False, "value": False}
    assert entry["earnings"]["competition"] == {"usd": 12.5, "nmr": 3} and entry["paid"] is True
    assert rnd.db.competitions.find_one({"_id": ROUND})["resolved"] is True


class Interrupted:
    """Competitions whose next leaderboard write first lets ``meanwhile`` run: the writer read the
    entries and the submissions, then another server's writer (and workers) went first."""

    def __init__(self, competitions, meanwhile):
        self.competitions = competitions
        self.meanwhile = list(meanwhile)
        self.matched = []

    def __getattr__(self, name):
        return getattr(self.competitions, name)

    def _interrupted(self, write, *args):
        if self.meanwhile:
            self.meanwhile.pop(0)()
        self.matched.append(write(*args))
        return self.matched[-1]

    def write_board(self, *args):
        return self._interrupted(self.competitions.write_board, *args)

    def replace_board(self, *args):
        return self._interrupted(self.competitions.replace_board, *args)


@pytest.mark.parametrize("stale", ["older submission", "older revision"])
def test_a_writer_whose_read_was_overtaken_cannot_move_an_entry_backwards(rnd, board, stale):
    """A second server's writer read the entries and the submissions, then a fresher writer wrote
    before it: its write matches nothing, and it reads everything again instead of writing what it had."""
    older = rnd.submit("alice")
    rnd.dispatch(older)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    newer = rnd.submit("alice") if stale == "older submission" else older

    def overtake():
        if stale == "older submission":
            rnd.dispatch(newer)
        else:  # judged again after a re-POST: a higher revision of the same submission
            token = ObjectId()
            assert rnd.store.accept_many([str(older)], token) == ["queued"]
            claim = rnd.store.claim(str(older), token=token)
            rnd.store.dispatched(claim, 60.0, 0.5)
            rnd.store.judged(claim, {"concordant": False, "original": False})
        board.touch(ROUND, "alice")
        board.flush(board.take(0))
    rnd.judge(older, concordant=True)  # what the slow writer reads
    interrupted = Interrupted(Competitions(rnd.db), [overtake])
    slow = Leaderboard(rnd.store, threading.Event(), competitions=interrupted)
    slow.touch(ROUND, "alice")
    slow.flush(slow.take(0))
    # the overtaken write matched nothing; from fresh reads the entry was then in line, or written again
    assert interrupted.matched[0] is False and all(interrupted.matched[1:])
    assert rnd.entry("alice")["submission_id"] == newer
    assert_in_line(rnd)


def test_racing_writers_of_several_servers_converge_with_one_entry_each(rnd):
    users = ["u%d" % i for i in range(6)]
    oids = {name: [rnd.submit(name) for _ in range(3)] for name in users}
    for name in users:
        for oid in oids[name]:
            rnd.dispatch(oid)
    writers = [Leaderboard(Store(rnd.db, owner="s:%d:1" % i), threading.Event()) for i in range(4)]
    barrier = threading.Barrier(len(writers))
    errors = []

    def work(writer):
        barrier.wait()
        try:
            for name in users:
                writer.touch(ROUND, name)
            for _ in range(3):
                left = writer.take(0)
                if not left:
                    break
                writer.flush(left)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for number, name in enumerate(users):
        rnd.judge(oids[name][number % 3])  # verdicts land while the writers race
    for thread in threads:
        thread.join(60)
    assert errors == []
    for name in users:
        writers[0].touch(ROUND, name)
    writers[0].flush(writers[0].take(0))  # the judged ones' own touch, as their workers would
    assert_in_line(rnd)


def test_after_a_crash_the_sweep_finds_unconfirmed_changes(rnd, board):
    """Transitions were written but the process died before its writer ran."""
    oids = [rnd.submit("u%d" % i) for i in range(5)]
    for oid in oids:
        rnd.dispatch(oid)
        rnd.judge(oid)
    assert rnd.entries() == []
    assert {found[:3] for found in rnd.store.stamped(100)} == {(ROUND, "u%d" % i, oid) for i, oid in enumerate(oids)}
    for competition_id, username, oid, _ in rnd.store.stamped(100):  # what Recovery.sweep does
        board.touch(competition_id, username, oid)
    board.flush(board.take(0))
    assert_in_line(rnd)
    assert rnd.store.stamped(100) == set()


def test_moving_to_a_newer_submission_at_the_same_revision_writes_every_field(rnd, board):
    """Both submissions judged (same revision count): the entry must take all of the newer one's fields."""
    older, newer = rnd.submit("alice"), rnd.submit("alice")
    rnd.dispatch(older, consistency=25.0, logloss=0.70)
    rnd.judge(older, concordant=False)
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    rnd.dispatch(newer, consistency=75.0, logloss=0.68)
    rnd.judge(newer, concordant=True)
    assert rnd.doc(older)["processing"]["rev"] == rnd.doc(newer)["processing"]["rev"]
    board.touch(ROUND, "alice")
    board.flush(board.take(0))
    entry = rnd.entry("alice")
    assert entry["submission_id"] == newer
    assert entry["logloss"] == {"validation": 0.68, "consistency": 75.0}
    assert entry["concordant"] == {"pending": False, "value": True}
    assert_in_line(rnd)


def test_a_backend_writing_elsewhere_on_the_board_is_kept_and_does_not_stop_the_writer(rnd, board):
    """The backend writes another user's entry before each of the writer's writes: the whole-array
    write matches nothing; the second try, by position, is not conditioned on that entry and lands;
    the backend's writes are kept."""
    for name in ("alice", "bob"):
        rnd.dispatch(rnd.submit(name))
        board.touch(ROUND, name)
    board.flush(board.take(0))
    newer = rnd.submit("alice")
    rnd.dispatch(newer)

    def backend(paid):
        return lambda: rnd.db.competitions.update_one({"_id": ROUND, "leaderboard.username": "bob"},
                                                      {"$set": {"leaderboard.$.paid": paid}})
    interrupted = Interrupted(Competitions(rnd.db), [backend(1), backend(2)])
    writer = Leaderboard(rnd.store, threading.Event(), competitions=interrupted)
    writer.touch(ROUND, "alice")
    writer.flush(writer.take(0))
    assert interrupted.matched == [False, True] and writer.pending() == 0
    assert rnd.entry("bob")["paid"] == 2
    assert rnd.entry("alice")["submission_id"] == newer
    assert_in_line(rnd)

