"""A round with odd backend documents, end to end: the well-formed ones are judged as if the others were not there.

``./server`` in production mode on SecantusDB and moto's S3 server. The
round holds, besides ordinary submissions, documents the backend wrote
with fields of other types (an early exact copy whose ``created`` is
text, a ``competition_id`` as text, a user that is null, a missing file
name), one whose ``processing`` is null, and the backend rewrites the
leaderboard while the round is judged.
"""
import datetime

import pytest
from bson import ObjectId

from .conftest import (FIRST_CREATED, Predictor, assert_verdicts, expected_verdicts, leaderboard, load_round,
                       make_round, wait_board_settled, wait_finished, wait_for)

pytestmark = pytest.mark.slow

ROUND = 301


def test_odd_documents_harm_no_other_and_the_leaderboard_repairs_itself(storage, start_server):
    rnd = make_round(ROUND, 31)
    make = Predictor(rnd, 31)
    bob_values = make.model()
    good = [rnd.add("alice", make.model(), shuffle_seed=1), rnd.add("bob", bob_values),
            rnd.add("carol", make.near_copy(bob_values), shuffle_seed=3), rnd.add("dave", make.model(width=4))]
    load_round(storage, rnd)
    expected = expected_verdicts(rnd)  # the well-formed round alone
    assert {e.original for e in expected.values()} == {True, False}
    db, s3 = storage.db, storage.s3

    def odd(username, fields, values=bob_values):
        """A backend document (with a file) whose fields are then changed as given; its id."""
        sid = ObjectId()
        name = "odd-%s.csv" % sid
        s3.put_object(Bucket=storage.upload_bucket, Key="%s/%s" % (username, name),
                      Body=rnd.tournament.assign(probability=values)[["id", "probability"]].to_csv(index=False).encode())
        doc = {"_id": sid, "username": username, "competition_id": ROUND, "filename": name,
               "created": FIRST_CREATED - datetime.timedelta(hours=1)}  # before everyone: a copy would count
        doc.update(fields)
        db.submissions.insert_one({key: value for key, value in doc.items() if value != "missing"})
        return str(sid)

    bad = {
        odd("mallory", {"created": "2017-03-20T08:00:00Z"}): "created is the text",
        odd("trudy", {"competition_id": str(ROUND)}): "competition_id is the text",
        odd(None, {"username": None}): "username is null",
        odd("victor", {"filename": "missing"}): "filename is missing",
    }
    nulled = rnd.add("peggy", make.model(width=3))
    load_round(storage, type(rnd)(ROUND, rnd.training, rnd.tournament, [nulled], has_dataset=False))
    db.submissions.update_one({"_id": nulled.oid}, {"$set": {"processing": None}})
    expected = expected_verdicts(rnd)

    server = start_server(RECONCILE_INTERVAL="1")
    for sub in good:
        assert server.post(sub.submission_id).status_code == 202, server.tail()
    for sid in bad:
        assert server.post(sid).status_code == 202, server.tail()
    wait_finished(db, good, 120, server.tail)
    # the backend drops bob's entry and puts text where an id was, while the round is judged
    wait_board_settled(db, ROUND, 60, server.tail)
    board = leaderboard(db, ROUND)
    rewritten = [dict(entry, submission_id=str(entry["submission_id"])) if entry["username"] == "alice" else entry
                 for entry in board if entry["username"] != "bob"]
    db.competitions.update_one({"_id": ROUND}, {"$set": {"leaderboard": rewritten}})
    assert server.post(nulled.submission_id).status_code == 202, server.tail()  # processing: null, accepted
    docs = wait_finished(db, good + [nulled], 120, server.tail)
    for sub in good + [nulled]:
        assert_verdicts(docs[sub.submission_id], expected[sub.submission_id], server.tail())
    for sid, words in bad.items():
        doc = db.submissions.find_one({"_id": ObjectId(sid)})
        wait_for(lambda: (db.submissions.find_one({"_id": ObjectId(sid)}).get("processing") or {}).get("state")
                 == "failed", 60, "%s to fail" % sid, server.tail)
        doc = db.submissions.find_one({"_id": ObjectId(sid)})
        assert words in doc["processing"]["error"], (sid, doc["processing"]["error"])
    carol = docs[good[2].submission_id]["evidence"]["originality"]
    assert {entry["field"] for entry in carol["left_out"]} >= {"created", "username"}

    def board_repaired():
        entries = {entry["username"]: entry for entry in leaderboard(db, ROUND)}
        for sub in good + [nulled]:
            entry = entries.get(sub.username)
            doc = docs[sub.submission_id]
            if entry is None or entry["submission_id"] != doc["_id"] or entry["original"] != doc["original"]:
                return False
        return set(entries) == {sub.username for sub in good + [nulled]}
    wait_for(board_repaired, 60, "the reconciliation to repair the rewritten leaderboard", server.tail)
    assert "repaired" in server.log_text()
    server.stop()
