"""Re-scoring a round from the command line and over HTTP, against SecantusDB and moto_server.

A round is judged by ``./server`` under the default rules. Then:

- ``./server rescore 41 --dry-run`` under a changed rule lists exactly the
  verdicts the plain rules flip, and writes nothing;
- ``./server rescore 41`` is SIGKILLed after it has re-queued every
  submission (it cannot judge any: its S3 endpoint is a closed port), and
  run again: the second process takes back its dead predecessor's run and
  leases at once, finishes the same run, and prints the same changes;
- then a server started under another changed rule re-scores the round
  through ``POST /rounds/41/rescore``, and ``GET`` shows that run's changes.

Every "expected" comes from ``scoring`` applied directly under each rule set.
"""
import json
import signal
import subprocess
import sys

import numpy as np
import requests

from scoring.rules import Rules

from .conftest import (HOST, REPO, SERVER, Predictor, assert_verdicts, expected_verdicts, free_port, load_round,
                       make_round, server_env, wait_finished, wait_for)

ROUND = 41
#: The first changed rule: a looser correlation limit the scaled copy passes, the near copy does not.
LOOSER = {"RULE_CORRELATION_LIMIT": "0.9999"}
#: The second: a stricter concordance threshold.
STRICTER = {"RULE_CONCORDANCE_THRESHOLD": "0.06"}


def rules_of(variables):
    return Rules.from_env(variables)


def scaled(values, rng):
    """Strongly correlated with ``values`` but spread differently: the correlation rule decides it."""
    return np.clip(0.5 + 1.5 * (values - 0.5) + rng.normal(0, 0.002, len(values)), 0.01, 0.99).round(5)


def six_users():
    """Round 41 with six users: a model, a scaled copy of it (original only under the default
    correlation limit), another model, a near copy of that, a third model, noise."""
    rnd = make_round(ROUND, seed=808)
    predict = Predictor(rnd, seed=809)
    rng = np.random.default_rng(810)
    first, other = predict.model(), predict.model()
    for username, values in (("alice", first), ("bob", scaled(first, rng)), ("carol", other),
                             ("dave", predict.near_copy(other)), ("erin", predict.model()), ("frank", predict.noise())):
        rnd.add(username, values)
    return rnd


def judged_round(storage, start_server):
    """Round 41 with six users, judged by a server under the default rules (stopped afterwards)."""
    rnd = six_users()
    load_round(storage, rnd)
    server = start_server()
    for sub in rnd.submissions:
        assert server.post(sub.submission_id).status_code == 202
    docs = wait_finished(storage.db, rnd.submissions, 60, server.tail)
    for sid, want in expected_verdicts(rnd).items():
        assert_verdicts(docs[sid], want)
    server.stop()
    return rnd, server


def flips(rnd, changed, was=None):
    """``{submission_id: (old verdicts, new verdicts)}`` of those the changed rules judge otherwise."""
    before, after = expected_verdicts(rnd, rules_of(was or {})), expected_verdicts(rnd, rules_of(changed))
    shown = lambda e: {"concordant": e.concordant, "original": e.original}  # noqa: E731
    return {sid: (shown(before[sid]), shown(after[sid])) for sid in before
            if shown(before[sid]) != shown(after[sid])}


def rescore(env, *arguments, **popen):
    command = [sys.executable, str(SERVER), "rescore", str(ROUND), *arguments]
    return subprocess.Popen(command, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True, **popen)


def finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, "exit %s\n%s" % (process.returncode, err[-3000:])
    return out, err


def changes_of(entries):
    return {entry["submission_id"]: ({"concordant": entry["before"]["concordant"], "original": entry["before"]["original"]},
                                     {"concordant": entry["after"]["concordant"], "original": entry["after"]["original"]})
            for entry in entries}


def test_a_rescore_killed_midway_is_finished_by_running_it_again_then_a_server_rescores(storage, database,
                                                                                        start_server, tmp_path):
    rnd, _ = judged_round(storage, start_server)
    expected = flips(rnd, LOOSER)
    assert expected, "the changed rule must flip a verdict, or this test proves nothing"
    env = server_env(storage, database.url, tmp_path, **LOOSER)

    out, _ = finish(rescore(env, "--dry-run", "--json"))
    foretold = json.loads(out)
    assert changes_of(foretold["changes"]) == expected
    assert storage.db.submissions.count_documents({"history": {"$exists": True}}) == 0
    assert storage.db.competitions.find_one({"_id": ROUND}).get("rescore") is None

    # A process that cannot reach S3 re-queues every submission, then is killed before judging any.
    cut_off = dict(env, S3_ENDPOINT_URL="http://%s:%d" % (HOST, free_port()))
    doomed = rescore(cut_off)
    n = len(rnd.submissions)
    try:
        wait_for(lambda: storage.db.submissions.count_documents({"processing.rescore": {"$exists": True}}) == n, 60,
                 "the first process to re-queue every submission")
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
    run = storage.db.competitions.find_one({"_id": ROUND})["rescore"]["run"]
    assert storage.db.submissions.count_documents({"processing.state": {"$in": ["queued", "scoring"]}}) == n

    out, err = finish(rescore(env, "--json"))
    result = json.loads(out)
    assert result["run"] == str(run) and "joined the open re-score" in err
    assert changes_of(result["changes"]) == expected
    assert result["submissions"] == n and result["changed"] == len(expected)
    after = expected_verdicts(rnd, rules_of(LOOSER))
    docs = wait_finished(storage.db, rnd.submissions, 5)
    for sid, want in after.items():
        assert_verdicts(docs[sid], want)
        assert [entry["run"] for entry in docs[sid]["history"]] == [run]
        assert docs[sid]["provenance"]["rules"]["correlation_limit"] == 0.9999
        assert docs[sid]["history"][0]["provenance"]["rules"]["correlation_limit"] == Rules().correlation_limit
    competition = storage.db.competitions.find_one({"_id": ROUND})
    assert "rescore" not in competition and [s["run"] for s in competition["rescores"]] == [run]

    # Then a server started under another rule re-scores the round over HTTP.
    expected = flips(rnd, STRICTER, was=LOOSER)
    assert expected, "the changed rule must flip a verdict, or this test proves nothing"
    server = start_server(**STRICTER)
    key = {"X-API-Key": server.api_key}
    opened = requests.post(server.url + "/rounds/%d/rescore" % ROUND, headers=key, timeout=10)
    assert opened.status_code == 202, opened.text
    where = server.url + opened.headers["Location"]

    def finished():
        found = requests.get(where, headers=key, timeout=10).json()
        return found if found["status"] == "finished" else None
    wait_for(finished, 60, "the re-score to finish", server.tail)
    result = finished()
    assert result["run"] == opened.json()["run"]
    assert changes_of(result["changes"]) == expected
    for entry in result["changes"]:
        assert entry["rules"]["before"]["correlation_limit"] == 0.9999
        assert entry["evidence"]["after"]["concordance"]["threshold"] == 0.06
    assert [len(doc["history"]) for doc in storage.db.submissions.find({"competition_id": ROUND})] == [2] * n
