"""Whatever the backend writes, one document never harms another, and the leaderboard repairs itself.

One test per way an odd backend document or a concurrent backend write
used to harm other documents (each failed before this was built), then a
property test: between pipeline steps the backend writes documents and
entries of any shape, and at the end the record is the plain rules'
(:mod:`tests.oracle`). Runs the server's own wiring (``Node``) against
SecantusDB.
"""
import collections
import datetime

import numpy as np
import pymongo
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queues import rescore
from queues.files import LocalFiles
from queues.pipeline import CONCORDANCE
from scoring.rules import Rules

from tests.oracle import Oracle, unusable_field
from tests.queues.harness import ROUND, Node, World

MALFORMED = {
    "username": [None, 7, ["x"], ""],
    "filename": [None, 3.5, ""],
    "competition_id": ["41", None, True, 41.5],
    "created": [None, "2017-03-20T09:00:00Z", 1490000000, "missing"],
}


@pytest.fixture(scope="module")
def values(round_frames):
    rng = np.random.default_rng(8)
    n = len(round_frames[1])
    return [np.clip(rng.normal(0.5, 0.04 + 0.01 * i, size=n), 0.01, 0.99).round(5) for i in range(4)]


class Setting:
    """A round in a fresh database on the session's SecantusDB, and a server process over it."""

    def __init__(self, client, tmp_path, round_zip, tournament):
        self.db = client["backend_%s" % ObjectId()]
        self.files = LocalFiles(str(tmp_path / "files"))
        self.files.put_dataset(ROUND, str(round_zip))
        self.cache = str(tmp_path / "cache")
        self.world = World(self.files, tournament)
        self.node = Node(self.db, self.files, self.cache, pid=1)
        self.node.board.reconcile_seconds = 0  # every reconcile_due() pass reconciles

    def submit(self, user, values, **changes):
        """A submission document (with its file), then the backend's changes to it; its id."""
        sid = self.world.submit(self.db, user, values)
        oid = ObjectId(sid)
        unset = {field: "" for field, value in changes.items() if value == "missing"}
        sets = {field: value for field, value in changes.items() if value != "missing"}
        if sets:
            self.db.submissions.update_one({"_id": oid}, {"$set": sets})
        if unset:
            self.db.submissions.update_one({"_id": oid}, {"$unset": unset})
        return sid

    def judge(self, *sids):
        for sid in sids:
            assert self.node.post(sid).status_code == 202
        self.node.drain()

    def doc(self, sid):
        return self.db.submissions.find_one({"_id": ObjectId(sid)})

    def board(self):
        return (self.db.competitions.find_one({"_id": ROUND}) or {}).get("leaderboard", [])

    def entries_of(self, user):
        return [entry for entry in self.board() if isinstance(entry, dict) and entry.get("username") == user]

    def oracle(self):
        rounds = self.node.workers[CONCORDANCE].rounds
        rnd = rounds.get(ROUND)
        return Oracle(self.db, self.files, Rules(), rounds.groups(rnd), rnd.tournament)


@pytest.fixture
def setting(real_mongo_url, tmp_path, round_zip, round_frames):
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    made = Setting(client, tmp_path, round_zip, round_frames[1])
    yield made
    client.drop_database(made.db.name)
    client.close()


def assert_as_the_oracle_says(setting, sids):
    oracle = setting.oracle()
    for sid in sids:
        want, doc = oracle.verdicts(sid), setting.doc(sid)
        assert want is not None, sid
        assert doc["processing"]["state"] == "done", (sid, doc["processing"])
        assert (doc["consistency"], doc["concordant"]["value"], doc["original"]["value"]) == \
            (want["consistency"], want["concordant"], want["original"]), sid


def assert_board_in_line(setting):
    """Each user with a dispatched usable submission: exactly one entry, showing the newest with its verdicts."""
    for user, wanted in setting.oracle().board().items():
        (entry,) = setting.entries_of(user)
        assert {key: entry.get(key) for key in wanted} == wanted, user


# -- 1. a document without created froze the round's leaderboard --------------------------------
@pytest.mark.parametrize("created", [None, "missing"])
def test_a_document_without_created_does_not_freeze_the_leaderboard(setting, values, created):
    first = setting.submit("bob", values[0])
    setting.judge(first)
    setting.submit("carol", values[1], created=created)  # never POSTed: only in the round
    newer = setting.submit("bob", values[2])
    setting.judge(newer)
    assert setting.entries_of("bob")[0]["submission_id"] == ObjectId(newer)
    assert setting.node.store.stamped(100) == set()
    assert_board_in_line(setting)


# -- 2. a created that is not a date failed everyone's originality --------------------------------
def test_a_created_that_is_not_a_date_is_left_out_of_other_checks_and_said_so(setting, values):
    text = setting.submit("mallory", values[0], created="2017-03-20T09:00:00Z")
    number = setting.submit("trudy", values[0], created=1490000000)
    bob = setting.submit("bob", values[1])
    alice = setting.submit("alice", values[2])
    setting.judge(bob, alice)
    assert_as_the_oracle_says(setting, [bob, alice])
    left_out = setting.doc(alice)["evidence"]["originality"]["left_out"]
    assert {(entry["submission_id"], entry["field"]) for entry in left_out} == {(text, "created"), (number, "created")}
    assert {entry["reason"] for entry in left_out} == {"created is the text '2017-03-20T09:00:00Z', not a date",
                                                       "created is the number 1490000000, not a date"}


# -- 3. a deleted submission pinned its user's entry --------------------------------------------------
def test_an_entry_showing_a_deleted_submission_moves_to_the_users_newer_one(setting, values):
    old = setting.submit("alice", values[0])
    setting.judge(old)
    setting.db.submissions.delete_one({"_id": ObjectId(old)})
    new = setting.submit("alice", values[1])
    setting.judge(new)
    (entry,) = setting.entries_of("alice")
    assert entry["submission_id"] == ObjectId(new) and entry["original"] == setting.doc(new)["original"]


def test_reconciliation_moves_an_entry_off_a_deleted_submission_to_the_users_earlier_one(setting, values):
    old, new = setting.submit("alice", values[0]), setting.submit("alice", values[1])
    setting.judge(old, new)
    setting.db.submissions.delete_one({"_id": ObjectId(new)})  # nothing is touched: only the reconciliation sees it
    assert setting.node.board.reconcile(ROUND) == {"stale": 1}
    assert setting.entries_of("alice")[0]["submission_id"] == ObjectId(old)
    assert_board_in_line(setting)


# -- 4. a rewritten leaderboard was not noticed ------------------------------------------------------
def test_a_leaderboard_rewritten_without_a_user_gets_the_entry_back(setting, values):
    ids = [setting.submit(user, values[i]) for i, user in enumerate(("alice", "bob", "carol"))]
    setting.judge(*ids)
    kept = [entry for entry in setting.board() if entry["username"] != "bob"]
    setting.db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard": kept}})
    assert setting.node.board.reconcile(ROUND) == {"missing": 1}
    assert_board_in_line(setting)
    # and through the writer's own copy: the next change of a user it no longer finds where it was
    setting.db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard": setting.board()[::-1]}})
    again = setting.submit("carol", values[3])
    setting.judge(again)
    assert_board_in_line(setting)


def test_an_entry_whose_submission_id_is_text_gets_its_verdicts(setting, values):
    sid = setting.submit("alice", values[0])
    assert setting.node.post(sid).status_code == 202
    setting.node.drain()
    setting.db.competitions.update_one({"_id": ROUND, "leaderboard.username": "alice"},
                                       {"$set": {"leaderboard.$.submission_id": sid, "leaderboard.$.original": None}})
    assert setting.node.board.reconcile(ROUND) == {"stale": 1}
    (entry,) = setting.entries_of("alice")
    assert entry["submission_id"] == ObjectId(sid) and entry["original"] == setting.doc(sid)["original"]


# -- 5. a text competition_id split the round -------------------------------------------------------
def test_a_text_competition_id_fails_with_its_reason_and_stays_out_of_the_round(setting, values):
    text = setting.submit("mallory", values[0], competition_id="41")
    setting.judge(text)
    doc = setting.doc(text)
    assert doc["processing"]["state"] == "failed"
    assert doc["processing"]["error"] == ("the submission document cannot be judged: competition_id is the text '41', "
                                          "not a round number")
    copy = setting.submit("alice", values[0])  # a copy of a file in no round is not a copy of a round member
    setting.judge(copy)
    assert setting.doc(copy)["original"]["value"] is True
    assert setting.entries_of("mallory") == []
    setting.node.recovery.sweep()  # its stamp is cleared, not re-touched by every sweep for ever
    assert setting.node.store.stamped(100) == set()


# -- 6. a whole-round re-score joined a narrower run in silence ----------------------------------------
def test_a_whole_round_rescore_refuses_to_join_a_narrower_run(setting, values):
    ids = [setting.submit(user, values[i]) for i, user in enumerate(("alice", "bob"))]
    setting.judge(*ids)
    run, opened = setting.node.rescorer.request(ROUND, [ids[0]])
    assert opened
    with pytest.raises(rescore.Busy) as refused:
        rescore.follow(setting.node.rescorer, ROUND, None)
    assert str(run["run"]) in str(refused.value) and "1 listed submissions" in str(refused.value)


def test_a_run_judged_under_two_rule_sets_records_both(setting, values, tmp_path):
    ids = [setting.submit(user, values[i]) for i, user in enumerate(("alice", "bob"))]
    setting.judge(*ids)
    setting.node.rescorer.request(ROUND)
    setting.node.rescorer.step()  # queues both; this process judges the first under the default rules
    setting.node.step("dispatch")
    setting.node.step("concordance")
    setting.node.step("originality")
    changed = Node(setting.db, setting.files, setting.cache, pid=2, rules=Rules(concordance_threshold=0.06))
    setting.node = None  # the first process stops; the second takes its leases over once they expire
    setting.db.submissions.update_many({}, {"$set": {"processing.lease.expires": datetime.datetime(2000, 1, 1)}})
    setting.db.competitions.update_many({}, {"$set": {"rescore.lease.expires": datetime.datetime(2000, 1, 1)}})
    changed.rescore()
    (summary,) = setting.db.competitions.find_one({"_id": ROUND})["rescores"]
    assert [rules["concordance_threshold"] for rules in summary["rules_used"]] == [0.12, 0.06]


# -- 7. processing: null was never accepted ---------------------------------------------------------
@pytest.mark.parametrize("processing", [None, "junk", 7, ["x"]])
def test_a_processing_that_is_not_an_object_is_replaced_and_harms_no_one_in_its_batch(setting, values, processing):
    odd = setting.submit("alice", values[0], processing=processing)
    plain = setting.submit("bob", values[1])
    token = ObjectId()
    assert setting.node.store.accept_many([plain, odd], token) == ["queued", "queued"]
    for sid in (plain, odd):
        assert setting.doc(sid)["processing"]["lease"]["token"] == token
    # the test's batch has no jobs in this process: once the leases expire, recovery takes them
    setting.db.submissions.update_many({}, {"$set": {"processing.lease.expires": datetime.datetime(2000, 1, 1)}})
    setting.node.recover()
    assert_as_the_oracle_says(setting, [plain, odd])


# -- 8. a rewritten document kept its old verdicts on the board ----------------------------------------
def test_a_rewritten_document_shows_its_new_verdicts(setting, values):
    sid = setting.submit("alice", values[0])
    setting.judge(sid)
    for _ in range(2):  # a few re-POSTs: the entry's revision climbs above where the rewrite restarts
        setting.judge(sid)
    before = setting.entries_of("alice")[0]
    doc = setting.doc(sid)
    setting.files.put_submission("alice", "rewritten.csv", _csv(setting, values[3]))
    setting.db.submissions.replace_one({"_id": ObjectId(sid)}, {
        "username": "alice", "competition_id": ROUND, "filename": "rewritten.csv", "created": doc["created"]})
    setting.judge(sid)
    (entry,) = setting.entries_of("alice")
    assert entry["criteria_rev"] < before["criteria_rev"]
    assert entry["logloss"] == {"validation": setting.doc(sid)["validationLogloss"],
                                "consistency": setting.doc(sid)["consistency"]}
    assert entry["logloss"] != before["logloss"]
    assert_board_in_line(setting)


def _csv(setting, values):
    from queues import demo
    return demo.submission_csv(setting.world.tournament["id"], np.asarray(values), seed=99)


# -- duplicates and the repairs counter ----------------------------------------------------------------
def test_a_duplicated_entry_is_removed_keeping_the_first_and_counted(setting, values):
    ids = [setting.submit(user, values[i]) for i, user in enumerate(("alice", "bob"))]
    setting.judge(*ids)
    board = setting.board()
    alice = dict(next(entry for entry in board if entry["username"] == "alice"), paid=True)
    setting.db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard": [alice] + board + [alice]}})
    assert setting.node.board.reconcile(ROUND) == {"duplicate": 1}
    (entry,) = setting.entries_of("alice")
    assert entry["paid"] is True  # the first one, the backend's fields with it
    text = setting.node.metrics.render()[0].decode()
    assert 'criteria_leaderboard_repairs_total{reason="duplicate"} 1.0' in text
    assert 'criteria_leaderboard_repairs_total{reason="missing"} 0.0' in text


def test_reconciliation_leaves_changes_the_writer_has_not_written_yet_to_it(setting, values):
    sid = setting.submit("alice", values[0])
    assert setting.node.post(sid).status_code == 202
    for stage in ("dispatch", "concordance", "originality"):
        setting.node.step(stage)
    assert setting.node.board.reconcile(ROUND) == {}  # alice's submission still carries its stamp
    assert setting.entries_of("alice") == []


# -- the property: any backend shapes between steps ------------------------------------------------------
USERS = ("alice", "bob", "carol")
FIELDS = sorted(MALFORMED)
operation = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(USERS), st.integers(0, 3)),
    st.tuples(st.just("malformed"), st.sampled_from(USERS), st.integers(0, 3), st.sampled_from(FIELDS), st.integers(0, 3)),
    st.tuples(st.just("odd processing"), st.sampled_from(USERS), st.integers(0, 3), st.sampled_from([None, "junk"])),
    st.tuples(st.just("post"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.sampled_from(["dispatch", "concordance", "originality"])),
    st.tuples(st.just("flush"),),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("replace"), st.integers(0, 50), st.sampled_from(USERS), st.integers(0, 3)),
    st.tuples(st.just("drop entry"), st.integers(0, 10)),
    st.tuples(st.just("text id"), st.integers(0, 10)),
    st.tuples(st.just("odd rev"), st.integers(0, 10)),
    st.tuples(st.just("duplicate"), st.integers(0, 10)),
    st.tuples(st.just("annotate"), st.integers(0, 10)),
)


def apply(setting, op, values, annotated):
    """One backend write or pipeline step."""
    db, kind = setting.db, op[0]
    ids = [doc["_id"] for doc in db.submissions.find({}, {"_id": 1}).sort("_id", 1)]
    board = setting.board()
    if kind == "submit":
        setting.submit(op[1], values[op[2]])
    elif kind == "malformed":
        bad = MALFORMED[op[3]][op[4] % len(MALFORMED[op[3]])]
        setting.submit(op[1], values[op[2]], **{op[3]: bad, "backend_note": "kept"})
    elif kind == "odd processing":
        setting.submit(op[1], values[op[2]], processing=op[3])
    elif kind == "post" and ids:
        assert setting.node.post(str(ids[op[1] % len(ids)])).status_code == 202
    elif kind == "step":
        setting.node.step(op[1])
    elif kind == "flush":
        setting.node.board.flush(setting.node.board.take(0))
    elif kind == "delete" and ids:
        db.submissions.delete_one({"_id": ids[op[1] % len(ids)]})
    elif kind == "replace" and ids:
        oid = ids[op[1] % len(ids)]
        name = "replaced-%s.csv" % ObjectId()
        setting.files.put_submission(op[2], name, _csv(setting, values[op[3]]))
        db.submissions.replace_one({"_id": oid}, {"username": op[2], "competition_id": ROUND, "filename": name,
                                                  "created": setting.world.clock})
    elif board and kind in ("drop entry", "text id", "odd rev", "duplicate", "annotate"):
        position = op[1] % len(board)
        entry = board[position]
        if kind == "drop entry":
            board.pop(position)
            if isinstance(entry, dict):
                annotated.pop(entry.get("username"), None)
        elif kind == "text id" and isinstance(entry, dict):
            entry["submission_id"] = str(entry.get("submission_id"))
        elif kind == "odd rev" and isinstance(entry, dict):
            entry["criteria_rev"] = "seven"
        elif kind == "duplicate":
            board.append(dict(entry) if isinstance(entry, dict) else entry)
        elif kind == "annotate" and isinstance(entry, dict) and isinstance(entry.get("username"), str):
            first = next(e for e in board if isinstance(e, dict) and e.get("username") == entry["username"])
            first["paid"] = annotated[entry["username"]] = annotated.get(entry["username"], 0) + 1
        db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard": board}})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=30))
def test_whatever_shapes_the_backend_writes_the_record_is_the_plain_rules(real_mongo_url, tmp_path_factory, round_zip,
                                                                        round_frames, values, ops):
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    setting = Setting(client, tmp_path_factory.mktemp("shapes"), round_zip, round_frames[1])
    try:
        annotated = {}
        for op in ops:
            apply(setting, op, values, annotated)
        # the end: every existing submission POSTed once more, everything judged, one reconciliation
        posted = [str(doc["_id"]) for doc in setting.db.submissions.find({}, {"_id": 1}).sort("created", 1)]
        for sid in posted:
            assert setting.node.post(sid).status_code == 202
        setting.node.drain()
        setting.node.recover()
        setting.node.board.reconcile(ROUND)
        oracle = setting.oracle()
        for sid in posted:
            doc = setting.doc(sid)
            state = doc["processing"]["state"]
            assert state in ("done", "failed"), (sid, doc["processing"])  # nothing pending
            want = oracle.verdicts(sid)
            if want is not None:
                assert state == "done", (sid, doc["processing"])
                assert (doc["consistency"], doc["concordant"]["value"], doc["original"]["value"]) == \
                    (want["consistency"], want["concordant"], want["original"]), sid
            else:
                assert state == "failed", sid
                field = unusable_field(doc)
                if field is not None:  # its reason names the field
                    assert field in doc["processing"]["error"], (sid, doc["processing"]["error"])
            if doc.get("backend_note") is not None:
                assert doc["backend_note"] == "kept"
        assert setting.node.store.stamped(1000) == set()
        assert_board_in_line(setting)
        counts = collections.Counter(e.get("username") for e in setting.board() if isinstance(e, dict))
        assert all(count == 1 for name, count in counts.items() if isinstance(name, str)), counts
        for user, paid in annotated.items():  # the backend's own fields survive on the entry kept
            entries = setting.entries_of(user)
            assert not entries or entries[0].get("paid") is not None, (user, entries)
    finally:
        client.drop_database(setting.db.name)
        client.close()
