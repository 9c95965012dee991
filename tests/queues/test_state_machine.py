"""A property-based state machine: servers accept, step, crash, recover, race and re-score.

Hypothesis chooses the interleaving: which of two server processes gets
a POST (a first one or a re-POST) or a re-score request, when a process
drives the open re-score, which queued job runs next and where,
when time passes beyond every lease, when a process dies (between jobs,
or at its next k-th database write), when a recovery sweep or a
leaderboard write runs. At every step no settled submission may have a
check pending or a lease. At the end every process recovers until
nothing is left, and then nothing may be unsettled, every verdict must be
the plain rules' and the leaderboard must show each user's newest
dispatched submission with its verdicts, once; no re-score may be left
open, and none may have re-queued a submission twice. Runs against SecantusDB.
"""
import numpy as np
import pymongo
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from queues.files import LocalFiles
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY
from queues.rescore import NoSuchRound

from tests.oracle import Oracle
from tests.queues.harness import ROUND, Crash, Faults, Node, World, check_quiescent, check_settled, expire_leases

USERS = ("alice", "bob", "carol")
KINDS = ("model 1", "model 2", "copy of 1", "broken")
STAGES = (DISPATCH, CONCORDANCE, ORIGINALITY)


class Servers(RuleBasedStateMachine):
    """Two server processes sharing one database; ``env`` is set by the test's fixture.

    (A dict, not attributes: hypothesis looks at every class attribute, and a
    MongoClient answers any attribute name.)
    """

    env = {}

    @initialize()
    def start(self):
        self.client, self.files, self.cache_dir = self.env["client"], self.env["files"], self.env["cache_dir"]
        self.tournament, self.values = self.env["tournament"], self.env["values"]
        self.db = self.client["sm_%s" % ObjectId()]
        self.world = World(self.files, self.tournament)
        self.next_pid = 1
        self.nodes = [self.new_node(), self.new_node()]
        self.ids = []
        self.posted = set()
        self.settled = set()

    def new_node(self):
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        return Node(self.db, self.files, self.cache_dir, pid, Faults(), alive=self.alive)

    def alive(self, pid):
        return any(node.pid == pid for node in self.nodes)

    def teardown(self):
        if hasattr(self, "db"):
            self.db.client.drop_database(self.db.name)

    def guarded(self, index, action):
        """Run ``action`` on node ``index``; a crash replaces the node by a new process."""
        try:
            return action(self.nodes[index])
        except Crash:
            self.nodes[index] = self.new_node()
            return None

    # -- what the world does -------------------------------------------------------
    @rule(user=st.sampled_from(USERS), kind=st.sampled_from(KINDS))
    def submit(self, user, kind):
        if kind == "broken":
            self.ids.append(self.world.submit(self.db, user, raw=b"id,probability\nnope,2\n"))
        else:
            self.ids.append(self.world.submit(self.db, user, self.values[kind]))

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 1), pick=st.integers(0, 100))
    def post(self, index, pick):
        sid = self.ids[pick % len(self.ids)]
        self.settled.discard(ObjectId(sid))  # a POST may legitimately queue it again
        self.posted.add(sid)  # even one that dies unanswered may have been recorded
        answer = self.guarded(index, lambda node: node.post(sid))
        if answer is not None:
            assert answer.status_code == 202, answer.get_json()

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, 1))
    def request_rescore(self, index):
        def request(node):
            try:
                node.rescorer.request(ROUND)
            except NoSuchRound:  # nothing of the round is in the database yet
                pass
        self.guarded(index, request)

    @rule(index=st.integers(0, 1))
    def drive_rescores(self, index):
        """A re-score pass: it may legitimately move settled submissions back to queued, once per run."""
        self.guarded(index, lambda node: node.rescorer.step())
        self.settled = set()

    @rule(index=st.integers(0, 1), stage=st.sampled_from(STAGES))
    def step(self, index, stage):
        self.guarded(index, lambda node: node.step(stage))

    @rule(index=st.integers(0, 1))
    def flush_leaderboard(self, index):
        self.guarded(index, lambda node: node.board.flush(node.board.take(0)))

    @rule(index=st.integers(0, 1))
    def sweep(self, index):
        self.guarded(index, lambda node: node.recovery.sweep())

    @rule()
    def time_passes_beyond_every_lease(self):
        expire_leases(self.db)

    @rule(index=st.integers(0, 1))
    def a_stalled_process_is_overtaken(self, index):
        """Node ``index`` stalls past its leases and the other claims its work: two workers race."""
        expire_leases(self.db)
        self.guarded(1 - index, lambda node: node.recovery.sweep())

    @rule(index=st.integers(0, 1))
    def process_dies(self, index):
        self.nodes[index] = self.new_node()

    @rule(index=st.integers(0, 1), writes=st.integers(1, 6), after=st.booleans())
    def process_will_die_at_a_write(self, index, writes, after):
        faults = self.nodes[index].faults
        faults.fail_at, faults.after = faults.writes + writes, after

    # -- what must always hold -----------------------------------------------------------
    @invariant()
    def settled_means_nothing_pending(self):
        if hasattr(self, "db"):
            check_settled(self.db)

    @invariant()
    def only_a_post_unsettles(self):
        """Fencing: no late write of a stale worker moves a settled submission back."""
        if not hasattr(self, "db"):
            return
        now = {doc["_id"] for doc in self.db.submissions.find({"processing.state": {"$in": ["done", "failed"]}}, {"_id": 1})}
        assert self.settled <= now, self.settled - now
        self.settled = now

    def check_end(self):
        """Every process recovers until nothing is left; then the whole record must be right."""
        for node in self.nodes:
            node.faults.fail_at = None
        for _ in range(3):
            expire_leases(self.db)
            for node in self.nodes:
                node.recover()
                if node.competitions.open_runs():
                    node.rescore()
        rnd = self.nodes[0].workers[CONCORDANCE].rounds
        loaded = rnd.get(ROUND)
        rules = self.nodes[0].workers[CONCORDANCE].rules
        oracle = Oracle(self.db, self.files, rules, rnd.groups(loaded), loaded.tournament)
        expected = {sid: oracle.verdicts(sid) for sid in self.posted}
        check_quiescent(self.db, expected)
        competition = self.db.competitions.find_one({"_id": ROUND}) or {}
        assert competition.get("rescore") is None, competition.get("rescore")
        closed = [summary["run"] for summary in competition.get("rescores", [])]
        assert len(closed) == len(set(closed)), closed
        for doc in self.db.submissions.find({"history": {"$exists": True}}, {"history.run": 1, "history.finished_at": 1}):
            runs = [entry["run"] for entry in doc["history"] if entry.get("run") is not None]
            assert len(runs) == len(set(runs)) and set(runs) <= set(closed), (doc["_id"], runs, closed)
            # a re-POST keeps the judgement it replaces (run None) once, however often its write was retried
            replaced = [entry["finished_at"] for entry in doc["history"] if entry.get("run") is None]
            assert len(replaced) == len(set(replaced)), (doc["_id"], replaced)


@pytest.fixture(scope="module")
def machine(real_mongo_url, round_frames, round_zip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("machine")
    files = LocalFiles(str(folder / "files"))
    files.put_dataset(ROUND, str(round_zip))
    rng = np.random.default_rng(11)
    n = len(round_frames[1])
    one = np.clip(rng.normal(0.5, 0.04, size=n), 0.01, 0.99).round(5)
    two = np.clip(rng.normal(0.5, 0.05, size=n), 0.01, 0.99).round(5)
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)

    class Machine(Servers):
        def teardown(self):
            try:
                if hasattr(self, "db"):
                    self.check_end()
            finally:
                Servers.teardown(self)

    Machine.env = {"client": client, "files": files, "cache_dir": str(folder / "cache"), "tournament": round_frames[1],
                   "values": {"model 1": one, "model 2": two, "copy of 1": one + 1e-6}}
    yield Machine
    client.close()


def test_servers_that_accept_step_crash_recover_and_race_keep_a_right_record(machine):
    run_state_machine_as_test(machine, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
