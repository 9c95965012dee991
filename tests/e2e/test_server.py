"""The server end to end: intake over HTTP, judging, and what lands in MongoDB."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from .conftest import (REPO, SERVER, Predictor, assert_verdicts, expected_verdicts, free_port, leaderboard,
                       listening, load_round, make_round, wait_board_settled, wait_for)


def post_and_expect_queued(server, sub):
    response = server.post(sub.submission_id, user_id=sub.username)
    assert response.status_code == 202, "%s: %s %s\n%s" % (sub.submission_id, response.status_code, response.text, server.tail())
    body = response.json()
    assert body["submission_id"] == sub.submission_id
    assert body["status"] == "queued"
    return body


def wait_done_over_http(server, sub, timeout=60):
    """Poll GET /submissions/<id> until it is done; fail at once if it failed."""
    def finished():
        response = server.show(sub.submission_id)
        assert response.status_code == 200, "%s: %s %s" % (sub.submission_id, response.status_code, response.text)
        body = response.json()
        assert body["status"] != "failed", "%s failed: %s\n%s" % (sub.submission_id, body, server.tail())
        return body if body["status"] == "done" else None
    return wait_for(finished, timeout, "%s to be done" % sub.submission_id, server.tail)


def tournament_round(competition_id, seed):
    """Six users, eight submissions: two users submit twice, two near copies, one discordant."""
    rnd = make_round(competition_id, seed)
    make = Predictor(rnd, seed)
    alice_1 = make.model()
    bob = make.model()
    rnd.add("alice", alice_1, shuffle_seed=1)
    rnd.add("bob", bob)                                        # rows in the round's order
    rnd.add("carol", make.near_copy(bob), shuffle_seed=3)      # bob's predictions: not original
    rnd.add("dave", make.noise(), shuffle_seed=4)
    rnd.add("erin", make.discordant(make.model()), shuffle_seed=5, reported_logloss=0.6789)
    alice_2 = make.model(width=6)
    rnd.add("alice", alice_2, shuffle_seed=6)                  # alice again: her latest counts
    rnd.add("frank", make.model(width=4))
    rnd.add("dave", make.near_copy(alice_2), shuffle_seed=8)   # dave again, copying alice's latest
    return rnd


def integer_id_round(competition_id, seed):
    rnd = make_round(competition_id, seed, integer_ids=True)
    make = Predictor(rnd, seed)
    gina = make.model()
    rnd.add("gina", gina, shuffle_seed=11)
    rnd.add("hank", make.model(), shuffle_seed=12)
    rnd.add("ivan", make.near_copy(gina))
    return rnd


def test_round_is_judged_and_leaderboard_written(storage, start_server):
    rounds = [tournament_round(101, 7), integer_id_round(102, 8)]
    for rnd in rounds:
        load_round(storage, rnd)
    expected = {}
    for rnd in rounds:
        expected.update(expected_verdicts(rnd))
    # the data must exercise both outcomes of each check, or the test proves little
    for check in ("concordant", "original"):
        assert {getattr(e, check) for e in expected.values()} == {True, False}, check
    assert any(sub.reported_logloss is not None for sub in rounds[0].submissions)

    server = start_server()
    started = time.monotonic()
    for rnd in rounds:
        for sub in rnd.submissions:   # in created order, one at a time: the last posted is the last processed
            post_and_expect_queued(server, sub)
            body = wait_done_over_http(server, sub)
            assert body["concordant"] == {"pending": False, "value": expected[sub.submission_id].concordant}
            assert body["original"] == {"pending": False, "value": expected[sub.submission_id].original}
    elapsed = time.monotonic() - started
    print("\n%d submissions in 2 rounds judged in %.2fs" % (sum(len(r.submissions) for r in rounds), elapsed))

    db = storage.db
    for rnd in rounds:
        docs = {str(doc["_id"]): doc for doc in db.submissions.find({"competition_id": rnd.competition_id})}
        for sub in rnd.submissions:
            doc, want = docs[sub.submission_id], expected[sub.submission_id]
            assert_verdicts(doc, want, server.tail())
            if sub.reported_logloss is None:
                assert doc["validationLogloss"] == pytest.approx(want.logloss, abs=1e-12), sub.submission_id
            else:
                assert doc["validationLogloss"] == sub.reported_logloss, "the backend's logloss was overwritten"
            assert doc["processing"]["attempts"] == 1

        wait_board_settled(db, rnd.competition_id)
        board = leaderboard(db, rnd.competition_id)
        usernames = [entry["username"] for entry in board]
        assert sorted(usernames) == sorted({sub.username for sub in rnd.submissions}), "one entry per user"
        latest = {sub.username: sub for sub in rnd.submissions}   # dict keeps the last posted per user
        users = {user["username"]: user for user in db.users.find()}
        for entry in board:
            sub = latest[entry["username"]]
            doc, want = docs[sub.submission_id], expected[sub.submission_id]
            assert str(entry["submission_id"]) == sub.submission_id, "%s's entry is not their last submission" % sub.username
            assert entry["logloss"]["validation"] == doc["validationLogloss"]
            assert entry["logloss"]["consistency"] == pytest.approx(want.consistency, abs=1e-9)
            assert entry["concordant"] == {"pending": False, "value": want.concordant}
            assert entry["original"] == {"pending": False, "value": want.original}
            assert entry["earnings"]["career"] == users[sub.username]["earnings"]["career"]
            assert entry["earnings"]["competition"] == {"usd": 0, "nmr": 0}
    server.stop()


def test_form_encoded_post_is_accepted(storage, start_server):
    rnd = make_round(103, 9)
    make = Predictor(rnd, 9)
    sub = rnd.add("olga", make.model(), shuffle_seed=1)
    load_round(storage, rnd)
    want = expected_verdicts(rnd)[sub.submission_id]
    server = start_server()
    response = requests.post(server.url + "/", data={"submission_id": sub.submission_id, "api_key": server.api_key,
                                                     "user_id": "olga"}, timeout=30)
    assert response.status_code == 202, response.text
    assert response.json()["submission_id"] == sub.submission_id
    assert response.json()["status"] == "queued"
    # ?wait= answers once it is judged: no polling loop
    waited = requests.get(server.url + "/submissions/%s?wait=30" % sub.submission_id,
                          headers={"X-API-Key": server.api_key}, timeout=60)
    assert waited.status_code == 200 and waited.json()["status"] == "done", (waited.text, server.tail())
    assert_verdicts(storage.db.submissions.find_one({"_id": sub.oid}), want, server.tail())
    # a form with a wrong key is refused like JSON is
    refused = requests.post(server.url + "/", data={"submission_id": sub.submission_id, "api_key": "nope"}, timeout=30)
    assert refused.status_code == 401
    # the 2017 README's curl -d: JSON labelled as a form, with user and competition_id
    body = json.dumps({"user": "olga", "submission_id": sub.submission_id, "competition_id": 103, "api_key": server.api_key})
    curl = requests.post(server.url + "/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert curl.status_code == 202, curl.text
    other_round = requests.post(server.url + "/", json={"submission_id": sub.submission_id, "competition_id": 41,
                                                        "api_key": server.api_key}, timeout=30)
    assert other_round.status_code == 400 and "belongs to round 103" in other_round.json()["error"]
    other_user = requests.post(server.url + "/", data={"submission_id": sub.submission_id, "user": "oscar",
                                                       "api_key": server.api_key}, timeout=30)
    assert other_user.status_code == 400
    assert other_user.json()["error"] == "submission %s belongs to olga, not oscar" % sub.submission_id
    # the 2017 curl form with a typo (no closing brace): what is wrong and where, not "an API key is required"
    typo = requests.post(server.url + "/", data=body[:-1], headers={"Content-Type": "application/x-www-form-urlencoded"},
                         timeout=30)
    assert typo.status_code == 400 and typo.json()["error"].startswith("the body is not valid JSON: "), typo.text
    assert "line 1, column %d" % len(body) in typo.json()["error"] and server.api_key not in typo.text
    server.stop()


def test_http_errors_and_monitoring(storage, start_server):
    rnd = make_round(104, 10)
    sub = rnd.add("pete", Predictor(rnd, 10).model())
    load_round(storage, rnd)
    server = start_server()
    url = server.url + "/"
    wrong_key = "wrong-" + server.api_key[::-1]
    bodies = []

    def call(method, path="/", expect=None, **kwargs):
        response = requests.request(method, server.url + path, timeout=10, **kwargs)
        bodies.append(response.text)
        if expect is not None:
            assert response.status_code == expect, "%s %s -> %s %s" % (method, path, response.status_code, response.text)
            if expect >= 400:
                assert response.headers["Content-Type"].startswith("application/json"), response.headers
                assert isinstance(response.json().get("error"), str) and response.json()["error"]
        return response

    # authentication: both the POST and the status page
    call("POST", json={"submission_id": sub.submission_id}, expect=401)
    call("POST", json={"submission_id": sub.submission_id, "api_key": ""}, expect=401)
    call("POST", json={"submission_id": sub.submission_id, "api_key": wrong_key}, expect=401)
    call("POST", json={"submission_id": sub.submission_id, "api_key": server.api_key.upper()}, expect=401)
    call("GET", "/submissions/" + sub.submission_id, expect=401)
    call("GET", "/submissions/" + sub.submission_id, headers={"X-API-Key": wrong_key}, expect=401)
    # malformed requests
    for body in ("[1, 2]", '"%s"' % sub.submission_id, "42", "null", "{not json"):
        call("POST", data=body, headers={"Content-Type": "application/json"}, expect=400)
    call("POST", json={"api_key": server.api_key}, expect=400)
    call("POST", json={"submission_id": "", "api_key": server.api_key}, expect=400)
    for bad_id in ("not-an-object-id", sub.submission_id[:-1], sub.submission_id + "0", 12345, "z" * 24):
        call("POST", json={"submission_id": bad_id, "api_key": server.api_key}, expect=400)
    call("GET", "/submissions/not-an-object-id", headers={"X-API-Key": server.api_key}, expect=400)
    # unknown id
    unknown = "5" * 24
    call("POST", json={"submission_id": unknown, "api_key": server.api_key}, expect=404)
    call("GET", "/submissions/" + unknown, headers={"X-API-Key": server.api_key}, expect=404)
    # a body over 16 KiB, even with a valid key and id
    big = {"submission_id": sub.submission_id, "api_key": server.api_key, "padding": "x" * (16 * 1024)}
    assert "16 KiB (16384 bytes) limit" in call("POST", data=json.dumps(big), headers={"Content-Type": "application/json"},
                                                 expect=413).json()["error"]
    # the same body sent chunked (no Content-Length): 413 as well, not a 400 about the cut JSON
    chunks = (json.dumps(big).encode()[start:start + 4096] for start in range(0, len(json.dumps(big)), 4096))
    chunked = call("POST", data=chunks, headers={"Content-Type": "application/json"}, expect=413)
    assert "16 KiB (16384 bytes) limit" in chunked.json()["error"]
    # none of the refused requests queued anything
    assert "processing" not in storage.db.submissions.find_one({"_id": sub.oid})

    health = call("GET", "/health", expect=200).json()
    assert health["database"] == "ok"
    assert health["status"] == "ok"
    assert health["threads"] and all(alive is True for alive in health["threads"].values()), health["threads"]
    assert {"dispatcher", "concordance", "recovery", "supervisor"} <= set(health["threads"])
    assert set(health["queues"]) == {"dispatch", "concordance", "originality"}
    assert all(isinstance(depth, int) and depth >= 0 for depth in health["queues"].values())

    metrics = call("GET", "/metrics", expect=200)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'criteria_queue_depth{queue="dispatch"}' in metrics.text
    assert "criteria_database_up 1.0" in metrics.text and "criteria_database_misconfigured 0.0" in metrics.text
    assert 'criteria_thread_restarts_total{thread="dispatcher"} 0.0' in metrics.text  # before any restart
    assert "criteria_http_requests" in metrics.text and 'status="401"' in metrics.text

    # the good request still works after all that
    assert requests.post(url, json={"submission_id": sub.submission_id, "api_key": server.api_key}, timeout=10).status_code == 202
    server.stop()

    secrets = [server.api_key, wrong_key, server.api_key.upper(), server.env["S3_SECRET_KEY"], server.env["S3_ACCESS_KEY"]]
    log = server.log_text()
    for secret in secrets:
        for body in bodies:
            assert secret not in body, "a secret appears in a response body: %r" % body[:300]
        assert secret not in log, "a secret appears in the server's log output"


def run_without(names, tmp_path):
    """Run ./server with some required variables missing; watch that it never listens."""
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("MONGO_URL", "MONGO_DB_NAME", "S3_UPLOAD_BUCKET", "S3_DATASET_BUCKET",
                          "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ENDPOINT_URL", "API_KEY", "HOST", "PORT")}
    full = {"MONGO_URL": "mongodb://127.0.0.1:9", "MONGO_DB_NAME": "x", "S3_UPLOAD_BUCKET": "u",
            "S3_DATASET_BUCKET": "d", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s", "API_KEY": "k"}
    env.update({key: value for key, value in full.items() if key not in names})
    env.update({"PORT": str(port), "HOST": "127.0.0.1", "CACHE_DIR": str(tmp_path / "cache")})
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(SERVER)], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    seen_listening = []

    def watch():
        while process.poll() is None:
            if listening(port, 0.05):
                seen_listening.append(time.monotonic())
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        raise AssertionError("./server with missing configuration did not exit within 30s")
    watcher.join(5)
    return process.returncode, (out + err).decode(errors="replace"), time.monotonic() - started, seen_listening, port


REQUIRED = ("MONGO_URL", "MONGO_DB_NAME", "S3_UPLOAD_BUCKET", "S3_DATASET_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "API_KEY")


@pytest.mark.parametrize("missing", [REQUIRED, ("API_KEY",)], ids=["nothing-set", "api-key-only"])
def test_missing_configuration_stops_before_listening(missing, tmp_path):
    code, output, elapsed, seen_listening, port = run_without(missing, tmp_path)
    print("\nexit %d after %.2fs: %s" % (code, elapsed, output.strip().splitlines()[-1] if output.strip() else ""))
    assert code != 0, output
    assert elapsed < 20, "took %.1fs to refuse to start" % elapsed
    assert not seen_listening and not listening(port), "the server listened although it could not run"
    for name in missing:
        assert name in output, "%s not named in: %s" % (name, output)
    # the lines that name what is missing name nothing that is set
    message = [line for line in output.splitlines() if any(name in line for name in missing)]
    for name in set(REQUIRED) - set(missing):
        assert not any(name in line for line in message), "%s named although it is set: %s" % (name, message)
    assert "Traceback" not in output, output
