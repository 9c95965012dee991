"""Nothing accepted is lost: killed servers, database outages, broken files, request storms."""
import collections
import concurrent.futures
import datetime
import random
import re
import threading
import time

import numpy as np
import pytest
import requests

from .conftest import (Predictor, assert_verdicts, expected_verdicts, leaderboard, load_round, make_round, states,
                       wait_board_settled, wait_finished, wait_for)

UNFINISHED = ("queued", "scoring")


def utcnow():
    """Naive UTC, as MongoDB hands datetimes back."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def crowd_round(competition_id, seed, users, submissions, **sizes):
    """``submissions`` submissions from ``users`` users; the first ones submit twice, some copy others."""
    rnd = make_round(competition_id, seed, **sizes)
    make = Predictor(rnd, seed)
    names = ["user%03d" % number for number in range(users)]
    made = []
    for number in range(submissions):
        username = names[number % users]
        if made and number % 7 == 3:
            values = make.near_copy(made[-2])     # a near copy of someone else's: not original
        elif number % 11 == 5:
            values = make.noise()
        else:
            values = make.model(width=int(make.rng.integers(3, 7)))
        made.append(values)
        rnd.add(username, values, shuffle_seed=number if number % 2 else None)
    return rnd


def post_concurrently(server, subs, threads=8):
    """POST every submission from a pool of threads; returns the responses in order."""
    local = threading.local()

    def post(sub):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return server.post(sub.submission_id, session=local.session)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, subs))


def assert_leaderboard(db, rnd, expected, docs):
    """One entry per user, pointing at their newest (created, _id) dispatched submission, with its verdicts."""
    wait_board_settled(db, rnd.competition_id)
    board = leaderboard(db, rnd.competition_id)
    counts = collections.Counter(entry["username"] for entry in board)
    users = {sub.username for sub in rnd.submissions if sub.values is not None}
    assert set(counts) == users and set(counts.values()) == {1}, "entries per user: %s" % dict(counts)
    latest = {}
    for sub in sorted((s for s in rnd.submissions if s.values is not None),
                      key=lambda s: (docs[s.submission_id]["created"], s.oid)):
        latest[sub.username] = sub
    for entry in board:
        sub = latest[entry["username"]]
        want = expected[sub.submission_id]
        assert str(entry["submission_id"]) == sub.submission_id, entry["username"]
        assert entry["logloss"]["consistency"] == pytest.approx(want.consistency, abs=1e-9)
        assert entry["logloss"]["validation"] == docs[sub.submission_id]["validationLogloss"]
        assert entry["concordant"] == {"pending": False, "value": want.concordant}, entry
        assert entry["original"] == {"pending": False, "value": want.original}, entry


def test_sigkill_mid_round_then_restart_finishes_everything(storage, start_server):
    rnd = crowd_round(201, 21, users=20, submissions=30, validation_rows=2400, test_rows=2400, live_rows=1200)
    load_round(storage, rnd)
    expected = expected_verdicts(rnd)
    db, subs = storage.db, rnd.submissions
    server = start_server()

    for sub in subs[:3]:
        assert server.post(sub.submission_id).status_code == 202
    wait_for(lambda: "done" in states(db, subs[:3]).values(), 60, "a first submission to be done", server.tail)
    responses = post_concurrently(server, subs[3:])
    assert [r.status_code for r in responses] == [202] * len(subs[3:]), [r.text for r in responses if r.status_code != 202]

    def mid_round():
        found = collections.Counter(states(db, subs).values())
        return found if found["done"] >= 1 and found["queued"] + found["scoring"] >= 5 else None
    wait_for(mid_round, 30, "at least one done and five unfinished submissions", server.tail, interval=0.01)
    server.kill()

    at_kill = list(db.submissions.find({"_id": {"$in": [s.oid for s in subs]}}, {"processing": 1}))
    unfinished = [doc for doc in at_kill if doc["processing"]["state"] in UNFINISHED]
    by_stage = collections.Counter("%s/%s" % (doc["processing"]["state"], "dispatched" if doc["processing"].get("dispatched") else "not dispatched") for doc in unfinished)
    print("\nat the kill: %d of %d unfinished (%s)" % (len(unfinished), len(subs), dict(by_stage)))
    assert len(unfinished) >= 5

    restarted = time.monotonic()
    server.start()   # same environment; no request is sent from here on
    healthy = time.monotonic()
    docs = wait_finished(db, subs, 120, server.tail)
    finished = time.monotonic()
    print("after restart: healthy in %.2fs, all %d done %.2fs after the restart" % (healthy - restarted, len(subs), finished - restarted))

    for sub in subs:
        doc = docs[sub.submission_id]
        assert_verdicts(doc, expected[sub.submission_id], server.tail())
        assert doc["processing"]["attempts"] >= 1
    assert_leaderboard(db, rnd, expected, docs)
    assert "recovered (attempt" in server.log_text()
    server.stop()


def test_database_outage_refuses_with_503_and_loses_nothing(storage, start_server, database):
    rnd = crowd_round(202, 22, users=12, submissions=12)
    load_round(storage, rnd)
    expected = expected_verdicts(rnd)
    db = storage.db
    accepted, refused = rnd.submissions[:6], rnd.submissions[6:]
    server = start_server()
    statuses = collections.Counter()

    for sub in accepted:
        response = server.post(sub.submission_id)
        statuses[response.status_code] += 1
        assert response.status_code == 202, response.text
    outage = 6.0
    before = collections.Counter(states(db, accepted).values())
    stopped = time.monotonic()
    database.stop()
    try:
        slowest = 0.0
        attempts = 0
        while time.monotonic() - stopped < outage:
            sub = refused[attempts % len(refused)]
            attempts += 1
            began = time.monotonic()
            try:
                response = server.post(sub.submission_id, timeout=10)
            except requests.Timeout:
                raise AssertionError("POST hung for 10s during the outage\n" + server.tail())
            took = time.monotonic() - began
            slowest = max(slowest, took)
            statuses[response.status_code] += 1
            assert response.status_code == 503, "%s %s\n%s" % (response.status_code, response.text, server.tail())
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.json()["error"]
            assert int(response.headers["Retry-After"]) > 0
            assert took < 5, "a refusal took %.1fs" % took
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["database"] != "ok", health.text
        shown = server.show(accepted[0].submission_id)
        assert shown.status_code == 503 and "Retry-After" in shown.headers, shown.text
    finally:
        database.start()
    restored, restored_at = time.monotonic(), utcnow()
    print("\noutage of %.1fs: %d POSTs answered 202 before it, %d answered 503 during it (slowest %.2fs), other: %s"
          % (restored - stopped, statuses[202], statuses[503], slowest,
             {code: n for code, n in statuses.items() if code not in (202, 503)}))
    assert set(statuses) == {202, 503}

    docs = wait_finished(db, accepted, 90, server.tail)   # no request is sent for them
    late = [sid for sid, doc in docs.items() if doc["processing"]["finished_at"] >= restored_at]
    print("states just before the outage: %s; %d accepted submissions finished only after it; all %d done %.2fs "
          "after the database came back" % (dict(before), len(late), len(accepted), time.monotonic() - restored))
    assert late, "the outage hit no work in progress, so it proves nothing"
    for sub in accepted:
        assert_verdicts(docs[sub.submission_id], expected[sub.submission_id], server.tail())
    # a 503 recorded nothing
    for sub in refused:
        assert "processing" not in db.submissions.find_one({"_id": sub.oid}), "a refused submission was queued"
    wait_for(lambda: requests.get(server.url + "/health", timeout=5).status_code == 200, 30, "health to recover", server.tail)

    # the client retries what was refused, as Retry-After says, and it is judged
    for sub in refused:
        assert server.post(sub.submission_id).status_code == 202
    docs = wait_finished(db, rnd.submissions, 60, server.tail)
    for sub in rnd.submissions:
        assert_verdicts(docs[sub.submission_id], expected[sub.submission_id], server.tail())
    assert_leaderboard(db, rnd, expected, docs)
    server.stop()


def broken_round(rnd, make):
    """One submission per way a file can be broken; returns {submission: word the reason must contain}."""
    ids = rnd.ids
    good_text = rnd.tournament.assign(probability=make.model())[["id", "probability"]].to_csv(index=False)
    header, *rows = good_text.strip().splitlines()

    def with_rows(new_rows, head=header):
        return ("\n".join([head] + new_rows) + "\n").encode()

    def replaced(row, value):
        changed = list(rows)
        changed[row] = "%s,%s" % (ids[row], value)
        return with_rows(changed)
    garbage = np.random.default_rng(5).integers(0, 256, size=4096).astype(np.uint8).tobytes()
    cases = [
        ("missing", None, "not in storage"),
        ("empty", b"", "empty"),
        ("garbage", garbage, "csv"),
        ("noheader", with_rows(rows, "id,prob"), "probability"),
        ("nan", replaced(17, "NaN"), "missing"),
        ("text", replaced(18, "high"), "not a number"),
        ("toobig", replaced(19, "1.5"), "outside"),
        ("duplicate", with_rows(rows + [rows[20]]), "more than once"),
        ("dropped", with_rows(rows[:21] + rows[22:]), "no prediction"),
    ]
    reasons = {}
    for username, raw, word in cases:
        sub = rnd.add(username, raw=raw)
        reasons[sub.submission_id] = word
    return reasons


def test_broken_files_fail_with_reasons_and_the_next_good_one_is_judged(storage, start_server):
    rnd = make_round(203, 23)
    make = Predictor(rnd, 23)
    rnd.add("early", make.model())                      # a good submission before the broken ones
    reasons = broken_round(rnd, make)
    orphan = make_round(204, 24)                        # a round whose dataset was never uploaded
    orphan.has_dataset = False
    lost = orphan.add("lost", Predictor(orphan, 24).model())
    reasons[lost.submission_id] = "no dataset"
    late = rnd.add("late", make.model())                # a good one after them all
    load_round(storage, rnd)
    load_round(storage, orphan)
    expected = expected_verdicts(rnd)
    db = storage.db
    server = start_server()

    first = rnd.submissions[0]
    broken = [sub for sub in rnd.submissions + orphan.submissions if sub.submission_id in reasons]
    for sub in [first] + broken:
        assert server.post(sub.submission_id).status_code == 202
    docs = wait_finished(db, [first] + broken, 60, server.tail)
    assert_verdicts(docs[first.submission_id], expected[first.submission_id])
    for sub in broken:
        doc, word = docs[sub.submission_id], reasons[sub.submission_id]
        assert doc["processing"]["state"] == "failed", (sub.username, doc["processing"])
        reason = doc["processing"]["error"]
        assert isinstance(reason, str) and word in reason.lower(), "%s: %r lacks %r" % (sub.username, reason, word)
        assert "np.float64" not in reason, "a numpy repr in a message for participants: %r" % reason
        for check in ("concordant", "original"):
            assert doc[check] == {"pending": False, "value": None, "error": reason}, (sub.username, check, doc[check])
        shown = server.show(sub.submission_id).json()
        assert shown["status"] == "failed", shown
        assert shown["concordant"]["error"] == reason
        print("\n%-9s -> %s" % (sub.username, reason), end="")
    print()
    # a file that cannot be read gives no consistency and no leaderboard entry
    assert all("consistency" not in docs[sub.submission_id] for sub in broken)
    wait_board_settled(db, rnd.competition_id)
    assert [entry["username"] for entry in leaderboard(db, rnd.competition_id)] == ["early"]
    assert leaderboard(db, orphan.competition_id) == []

    assert server.post(late.submission_id).status_code == 202
    docs = wait_finished(db, [late], 60, server.tail)
    assert_verdicts(docs[late.submission_id], expected[late.submission_id], server.tail())
    assert server.show(late.submission_id).json()["status"] == "done"
    wait_board_settled(db, rnd.competition_id)
    assert sorted(entry["username"] for entry in leaderboard(db, rnd.competition_id)) == ["early", "late"]
    server.stop()


def metric(text, name, **labels):
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    selector = ",".join('%s="%s"' % item for item in sorted(labels.items()))
    pattern = r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % selector) if labels else "")
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


#: Players in the thousand-POST test: each submission is POSTed 1000 / PLAYERS times.
PLAYERS = 40


def test_a_thousand_concurrent_posts_score_each_submission_once(storage, start_server):
    rnd = make_round(205, 25, train_rows=1000, validation_rows=600, test_rows=300, live_rows=300)
    make = Predictor(rnd, 25)
    for number in range(PLAYERS):
        rnd.add("player%03d" % number, make.model(width=int(make.rng.integers(3, 7)), noise=0.03),
                shuffle_seed=number)
    load_round(storage, rnd)
    expected = expected_verdicts(rnd)
    db, subs = storage.db, rnd.submissions
    server = start_server()

    requests_to_send = [sub.submission_id for sub in subs] * (1000 // PLAYERS)
    random.Random(25).shuffle(requests_to_send)
    results = []
    lock = threading.Lock()
    local = threading.local()

    def send(submission_id):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        began = time.monotonic()
        try:
            response = server.post(submission_id, session=local.session, timeout=60)
            outcome = (submission_id, response.status_code, response.json() if response.status_code == 202 else response.text)
        except requests.RequestException as exc:
            outcome = (submission_id, type(exc).__name__, str(exc))
        with lock:
            results.append(outcome + (time.monotonic() - began,))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(send, requests_to_send))
    elapsed = time.monotonic() - started
    codes = collections.Counter(result[1] for result in results)
    queued = collections.Counter(result[0] for result in results if result[1] == 202 and not result[2]["duplicate"])
    print("\n1000 POSTs from 32 threads in %.2fs (%.0f requests/s, slowest %.2fs): %s; %d queued, %d duplicates"
          % (elapsed, len(results) / elapsed, max(r[3] for r in results), dict(codes), sum(queued.values()),
             len(results) - sum(queued.values())))
    assert len(results) == 1000
    assert not [code for code in codes if not isinstance(code, int) or code >= 500], codes
    assert codes == {202: 1000}, [r for r in results if r[1] != 202][:5]

    docs = wait_finished(db, subs, 120, server.tail)
    print("all %d done %.2fs after the first POST" % (PLAYERS, time.monotonic() - started))
    for sub in subs:
        doc = docs[sub.submission_id]
        assert_verdicts(doc, expected[sub.submission_id], server.tail())
        assert doc["processing"]["attempts"] == 1, (sub.submission_id, doc["processing"])
    wait_board_settled(db, rnd.competition_id)
    counts = collections.Counter(entry["username"] for entry in leaderboard(db, rnd.competition_id))
    assert len(counts) == PLAYERS and set(counts.values()) == {1}

    # Every request that queued (duplicate: false) was scored exactly once: no acceptance lost or doubled.
    # Copies arriving while a submission is queued or being scored answer duplicate: true; a copy arriving
    # after it was done queues it again (README: "duplicate" only while queued or scoring); those are counted.
    assert set(queued) == {sub.submission_id for sub in subs}
    acceptances = sum(queued.values())

    seen = {}

    def scored():
        text = requests.get(server.url + "/metrics", timeout=10).text
        seen["dispatcher runs"] = metric(text, "criteria_stage_duration_seconds_count", stage="dispatch")
        seen["done"] = metric(text, "criteria_submissions_total", outcome="done")
        return seen["dispatcher runs"] == acceptances
    wait_for(scored, 10, "one dispatcher run per acceptance (%d)" % acceptances,
             lambda: "last seen: %s\n%s" % (seen, server.tail(20)))
    print("dispatcher runs = acceptances = %d (done counter %d); %d submissions judged again because a copy "
          "arrived after they were done" % (acceptances, seen["done"], sum(1 for n in queued.values() if n > 1)))
    server.stop()
