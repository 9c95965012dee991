"""Re-scoring a round: a run flips exactly what the plain rules flip, keeps what it replaces, never overlaps.

The round is judged once under the default rules by one process; a
second process, started with a changed rule, re-scores it. What the run
must change is computed from the plain rules under both rule sets, never
written down by hand. Runs against SecantusDB (the leaderboard's grouped
writes use array filters).
"""
import dataclasses

import numpy as np
import pymongo
import pytest
from bson import ObjectId

from queues.files import LocalFiles
from queues.pipeline import CONCORDANCE
from queues.rescore import NoSuchRound, describe, differences, judgement, scope
from queues.store import DONE, FAILED
from scoring.rules import Rules

from tests.oracle import Oracle
from tests.queues.harness import API_KEY, ROUND, Faults, Node, World, check_quiescent, expire_leases

#: The changed rule: a looser correlation limit, which the strongly correlated
#: but differently spread submission passes and the near copy does not.
LOOSER = Rules(correlation_limit=0.999)


@pytest.fixture(scope="module")
def place(real_mongo_url, round_zip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rescore")
    files = LocalFiles(str(folder / "files"))
    files.put_dataset(ROUND, str(round_zip))
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    yield client, files, str(folder / "cache")
    client.close()


@pytest.fixture
def judged(place, round_frames):
    """A round judged under the default rules: ``(db, files, cache, world, ids)``."""
    client, files, cache = place
    db = client["rescore_%s" % ObjectId()]
    world = World(files, round_frames[1])
    rng = np.random.default_rng(11)
    n = len(round_frames[1])
    base = np.clip(rng.normal(0.5, 0.04, n), 0.01, 0.99).round(5)
    spread = np.clip(0.5 + 1.6 * (base - 0.5) + rng.normal(0, 0.004, n), 0.01, 0.99).round(5)
    other = np.clip(rng.normal(0.5, 0.05, n), 0.01, 0.99).round(5)
    ids = {"alice": world.submit(db, "alice", base),
           "bob": world.submit(db, "bob", spread),
           "carol": world.submit(db, "carol", other),
           "dave": world.submit(db, "dave", other + 1e-6),
           "erin": world.submit(db, "erin", raw=b"id,probability\nx,1.5\n")}
    first = Node(db, files, cache, pid=1)
    for sid in ids.values():
        assert first.post(sid).status_code == 202
    first.drain()
    yield db, files, cache, world, ids
    client.drop_database(db.name)


def plain(db, files, node, ids, rules):
    """The plain rules' verdicts of every submission under ``rules``."""
    rounds = node.workers[CONCORDANCE].rounds
    rnd = rounds.get(ROUND)
    groups = rounds.groups(rnd)
    oracle = Oracle(db, files, rules, groups, rnd.tournament)
    return {sid: oracle.verdicts(sid) for sid in ids.values()}


def flipped(before, after):
    """Ids whose plain verdicts differ between two rule sets."""
    return {sid for sid in before if before[sid] != after[sid]}


def test_a_rescore_flips_exactly_what_the_plain_rules_flip(judged):
    db, files, cache, world, ids = judged
    second = Node(db, files, cache, pid=2, rules=LOOSER)
    before, after = plain(db, files, second, ids, Rules()), plain(db, files, second, ids, LOOSER)
    expected = flipped(before, after)
    assert expected, "the changed rule must flip something, or this test proves nothing"
    old = {sid: db.submissions.find_one({"_id": ObjectId(sid)}) for sid in ids.values()}

    run, opened = second.rescorer.request(ROUND)
    assert opened
    second.rescore()

    check_quiescent(db, after)
    status = second.rescorer.status(ROUND)
    assert status["status"] == "finished" and status["run"] == run["run"]
    assert {entry["submission_id"] for entry in status["changes"]} == expected
    assert status["submissions"] == len(ids) and status["changed"] == len(expected)
    for entry in status["changes"]:
        sid = entry["submission_id"]
        assert entry["before"]["original"] == before[sid]["original"] and entry["after"]["original"] == after[sid]["original"]
        assert entry["rules"]["before"] == dataclasses.asdict(Rules())
        assert entry["rules"]["after"] == dataclasses.asdict(LOOSER)
        assert entry["evidence"]["before"]["originality"] != entry["evidence"]["after"]["originality"]
        assert "original false -> true" in describe(entry) or "original true -> false" in describe(entry)
    # Nothing lost: each submission keeps exactly the judgement the run replaced, and the failed one fails again.
    for sid, doc in old.items():
        now = db.submissions.find_one({"_id": ObjectId(sid)})
        assert [entry["run"] for entry in now["history"]] == [run["run"]]
        kept = now["history"][0]
        assert judgement(kept) == judgement(doc, doc["processing"])
        assert kept.get("provenance") == doc.get("provenance") and kept.get("evidence") == doc.get("evidence")
    assert db.submissions.find_one({"_id": ObjectId(ids["erin"])})["processing"]["state"] == FAILED
    competition = db.competitions.find_one({"_id": ROUND})
    assert "rescore" not in competition and [summary["run"] for summary in competition["rescores"]] == [run["run"]]


def test_a_dry_run_writes_nothing_and_foretells_the_run(judged):
    db, files, cache, world, ids = judged
    faults = Faults()
    second = Node(db, files, cache, pid=2, faults=faults, rules=LOOSER)
    foretold = second.rescorer.dry_run(ROUND)
    assert faults.writes == 0
    assert db.submissions.count_documents({"history": {"$exists": True}}) == 0
    second.rescorer.request(ROUND)
    second.rescore()
    done = second.rescorer.status(ROUND)
    assert foretold["submissions"] == done["submissions"] == len(ids)
    assert [(e["submission_id"], e["before"], e["after"]) for e in foretold["changes"]] == \
           [(e["submission_id"], e["before"], e["after"]) for e in done["changes"]]
    assert foretold["changes"], "the changed rule must flip something"


def test_only_the_listed_submissions_are_judged_again(judged):
    db, files, cache, world, ids = judged
    second = Node(db, files, cache, pid=2, rules=LOOSER)
    second.rescorer.request(ROUND, only=[ids["bob"]])
    second.rescore()
    rescored = {str(doc["_id"]) for doc in db.submissions.find({"history": {"$exists": True}})}
    assert rescored == {ids["bob"]}


def test_a_round_never_has_two_runs_at_once(judged):
    db, files, cache, world, ids = judged
    first, second = Node(db, files, cache, pid=2), Node(db, files, cache, pid=3)
    run, opened = first.rescorer.request(ROUND)
    again, opened_again = second.rescorer.request(ROUND, only=[ids["alice"]])
    assert opened and not opened_again and again["run"] == run["run"]
    assert second.rescorer.step() == []  # the first process holds the run's lease
    first.rescore()
    later, opened_later = second.rescorer.request(ROUND)
    assert opened_later and later["run"] != run["run"]
    second.rescore()
    histories = [len(doc["history"]) for doc in db.submissions.find({"competition_id": ROUND})]
    assert histories == [2] * len(ids)


def test_a_run_left_by_a_process_is_finished_by_another(judged):
    db, files, cache, world, ids = judged
    gone = Node(db, files, cache, pid=2, rules=LOOSER)
    gone.rescorer.request(ROUND)
    gone.rescorer.step()  # re-queued everything, then died before judging any of it
    assert db.submissions.count_documents({"processing.rescore": {"$exists": True}}) == len(ids)
    other = Node(db, files, cache, pid=5, rules=LOOSER, alive=lambda pid: pid == 2)  # another host's view: 2 lives
    assert other.rescorer.step() == []  # the lease is live: not taken
    expire_leases(db)
    db.competitions.update_one({"_id": ROUND}, {"$set": {"rescore.lease.expires": world.clock}})
    other.rescore()
    after = plain(db, files, other, ids, LOOSER)
    check_quiescent(db, after)
    assert all(len(doc["history"]) == 1 for doc in db.submissions.find({"competition_id": ROUND}))


def test_a_request_names_what_is_wrong(judged):
    db, files, cache, world, ids = judged
    node = Node(db, files, cache, pid=2)
    with pytest.raises(NoSuchRound, match="round 42 has no submissions"):
        node.rescorer.request(42)
    stranger = str(ObjectId())
    with pytest.raises(NoSuchRound, match=stranger):
        node.rescorer.request(ROUND, only=[stranger])
    assert node.competitions.open_runs() == {}


def test_a_stale_read_re_queues_nothing(judged):
    """The kept copy must be what it replaces: a document read before another write is not moved."""
    db, files, cache, world, ids = judged
    node = Node(db, files, cache, pid=2)
    stale = db.submissions.find_one({"_id": ObjectId(ids["alice"])})
    db.submissions.update_one({"_id": stale["_id"]}, {"$inc": {"processing.rev": 1}})
    assert node.store.rescore(stale, ObjectId(), ObjectId()) is False
    fresh = db.submissions.find_one({"_id": stale["_id"]})
    run = ObjectId()
    assert node.store.rescore(fresh, run, ObjectId()) is True
    assert node.store.rescore(db.submissions.find_one({"_id": stale["_id"]}), run, ObjectId()) is False


def test_differences_compare_each_run_with_what_followed_it():
    """With two runs, the first run's 'after' is the second run's 'before', not the document now."""
    first, second = ObjectId(), ObjectId()
    verdict = lambda value: {"pending": False, "value": value}  # noqa: E731
    doc = {"_id": ObjectId(), "username": "bob", "created": 1,
           "history": [{"run": first, "state": DONE, "consistency": 50.0, "concordant": verdict(True), "original": verdict(False)},
                       {"run": second, "state": DONE, "consistency": 50.0, "concordant": verdict(True), "original": verdict(True)}],
           "consistency": 50.0, "concordant": verdict(True), "original": verdict(True),
           "processing": {"state": DONE}}
    assert [e["after"]["original"] for e in differences([doc], first)] == [True]
    assert differences([doc], second) == []


def test_scope_without_a_list_stops_at_the_request():
    run = {"competition_id": 41, "only": None, "requested_at": "t"}
    assert scope(run) == {"competition_id": 41, "created": {"$lt": "t"}}
    listed = ObjectId()
    assert scope(dict(run, only=[str(listed)])) == {"competition_id": 41, "_id": {"$in": [listed]}}


def test_the_http_endpoint_opens_a_run_refuses_a_second_and_shows_the_changes(judged):
    db, files, cache, world, ids = judged
    node = Node(db, files, cache, pid=2, rules=LOOSER)
    key = {"X-API-Key": API_KEY}
    assert node.client.post("/rounds/41/rescore", headers={"X-API-Key": "wrong"}).status_code == 401
    assert node.client.post("/rounds/41/rescore", headers=key, json={"only": "x"}).status_code == 400
    assert node.client.post("/rounds/41/rescore", headers=key, json={"dry_run": "yes"}).status_code == 400
    typo = node.client.post("/rounds/41/rescore", headers=key, json={"onyl": [ids["bob"]]})
    assert typo.status_code == 400 and "onyl" in typo.get_json()["error"]
    wrong_id = node.client.post("/rounds/41/rescore", headers=key, json={"only": ["x"]})
    assert wrong_id.status_code == 400 and '"x" is not one' in wrong_id.get_json()["error"]
    assert node.client.post("/rounds/99999999999/rescore", headers=key).status_code == 400
    assert node.client.get("/rounds/41/rescore?api_key=%s" % API_KEY).status_code == 400
    assert db.competitions.find_one({"_id": ROUND}).get("rescore") is None
    missing = node.client.post("/rounds/42/rescore", headers=key)
    assert missing.status_code == 404 and "round 42 has no submissions" in missing.get_json()["error"]
    assert node.client.get("/rounds/41/rescore", headers=key).status_code == 404  # never re-scored

    foretold = node.client.post("/rounds/41/rescore", data={"api_key": API_KEY, "dry_run": "true"})  # a form
    assert foretold.status_code == 200 and db.competitions.find_one({"_id": ROUND}).get("rescore") is None
    opened = node.client.post("/rounds/41/rescore", headers=key)
    assert opened.status_code == 202, opened.get_json()
    run = opened.get_json()["run"]
    assert opened.headers["Location"] == "/rounds/41/rescore?run=%s" % run
    second = node.client.post("/rounds/41/rescore", headers=key, json={"only": [ids["alice"]]})
    assert second.status_code == 409 and run in second.get_json()["error"]
    running = node.client.get("/rounds/41/rescore", headers=key).get_json()
    assert running["status"] == "running" and running["left"] == len(ids)

    node.rescore()
    finished = node.client.get("/rounds/41/rescore?run=%s" % run, headers=key).get_json()
    assert finished["status"] == "finished" and finished["run"] == run
    assert [(e["submission_id"], e["after"]) for e in finished["changes"]] == \
           [(e["submission_id"], e["after"]) for e in foretold.get_json()["changes"]]
    assert finished["changes"] and "api_key" not in str(finished) and API_KEY not in str(finished)
    bob = finished["changes"][0]["submission_id"]
    explained = node.client.get("/submissions/%s/explain" % bob, headers=key).get_json()
    assert [entry["rescore_run"] for entry in explained["history"]] == [run]
    earlier = explained["history"][0]
    assert earlier["rules"] == dataclasses.asdict(Rules()) and explained["provenance"]["rules"] == dataclasses.asdict(LOOSER)
    assert earlier["verdicts"]["originality"]["value"] == finished["changes"][0]["before"]["original"]
    page = node.client.get("/submissions/%s/report" % bob, headers=key).get_data(as_text=True)
    assert "Earlier judgements" in page and str(run) in page and "correlation_limit=0.95" in page
    assert "or when any has KS" in page  # max_similar is 1: one similar submission is enough
