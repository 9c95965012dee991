"""Several servers share one database and one S3: POSTs spread over three, one killed mid-round.

Three ``./server`` processes on loopback share SecantusDB and ``moto_server``
(and, as servers on one machine do by default, one cache folder). Every
submission of a round is POSTed to one of them, round robin. Once the
first server (the victim) has finished some of its share and still holds
leases on some unfinished ones, its process group gets SIGKILL. The two
survivors must finish everything, the victim's leftovers included, each
submission once, with the plain rules' verdicts.

What the documents prove, and how:

- who finished a submission: ``provenance.server`` names the process of the
  final write (every check's fields carry it, and the final write carries
  every check's fields); ``processing.settled_by`` is the token of the claim
  that settled it;
- that the victim's finished work was never written again: its documents
  are read once the database has served the victim's last request (its
  connections, told apart by the ``appName`` in its MONGO_URL, are gone
  from ``currentOp``), and their revision is the same at the end;
- that the survivors finished each of theirs once: each survivor's
  ``done`` counter in /metrics equals the number of documents naming it;
- that the victim's leftovers were judged after its death, by a survivor,
  under a new claim: ``provenance.judged_at`` of both checks is later than
  the kill, the settling token is not the victim's, ``attempts`` grew.
"""
import collections
import concurrent.futures
import socket
import threading
import time

import requests

from .conftest import assert_verdicts, expected_verdicts, load_round, wait_finished, wait_for
from .test_durability import assert_leaderboard, crowd_round, metric, utcnow

UNFINISHED = ("queued", "scoring")
NAMES = ("scaleout-a", "scaleout-b", "scaleout-c")


def start_three(start_server, database):
    """Three servers on their own ports; the database tells their connections apart by appName."""
    return [start_server(SERVER_NAME=name, LEASE_SECONDS="3", RECOVERY_INTERVAL="1",
                         MONGO_URL="%s/?appName=%s" % (database.url, name))
            for name in NAMES]


def lease_prefix(server):
    """The start of every lease owner the server's process writes: ``host:port:`` (then its pid)."""
    return "%s:%d:" % (socket.gethostname(), server.port)


def post_spread(servers, subs, threads=9):
    """POST submission i to server i mod 3, from a pool of threads; the responses by server name."""
    local = threading.local()

    def post(pair):
        number, sub = pair
        if not hasattr(local, "session"):
            local.session = requests.Session()
        server = servers[number % len(servers)]
        return server.env["SERVER_NAME"], sub.submission_id, server.post(sub.submission_id, session=local.session)
    answers = collections.defaultdict(list)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for name, sid, response in pool.map(post, enumerate(subs)):
            answers[name].append((sid, response.status_code, response.json()))
    return answers


def documents(db, subs):
    return {str(doc["_id"]): doc for doc in db.submissions.find({"_id": {"$in": [sub.oid for sub in subs]}})}


def victim_mid_round(db, subs, victim, prefix):
    """Counts when the victim has finished some and holds leases on at least three unfinished; else None."""
    done = db.submissions.count_documents({"_id": {"$in": [sub.oid for sub in subs]}, "processing.state": "done",
                                           "provenance.server": victim})
    held = db.submissions.count_documents({"_id": {"$in": [sub.oid for sub in subs]},
                                           "processing.state": {"$in": list(UNFINISHED)},
                                           "processing.lease.owner": {"$regex": "^" + prefix}})
    return (done, held) if done >= 1 and held >= 3 else None


def connections_of(mongo, app_name):
    """The database's open connections from clients that named themselves ``app_name``."""
    return [op["client"] for op in mongo.admin.command("currentOp")["inprog"]
            if op.get("type") == "op" and (op.get("clientMetadata") or {}).get("application", {}).get("name") == app_name]


def test_three_servers_share_a_round_and_survive_a_sigkill(storage, start_server, database, mongo):
    rnd = crowd_round(301, 31, users=18, submissions=54, validation_rows=2400, test_rows=2400, live_rows=1200)
    load_round(storage, rnd)
    expected = expected_verdicts(rnd)
    db, subs = storage.db, rnd.submissions
    began = time.monotonic()
    servers = start_three(start_server, database)
    started = time.monotonic()
    victim, survivors = servers[0], servers[1:]
    prefix = lease_prefix(victim)

    def logs():
        return "\n".join(server.tail(30) for server in servers)

    answers = post_spread(servers, subs)
    for name in NAMES:
        assert len(answers[name]) == len(subs) // 3
        assert all(code == 202 and not body["duplicate"] for _, code, body in answers[name]), answers[name]

    seen = wait_for(lambda: victim_mid_round(db, subs, NAMES[0], prefix), 60,
                    "the victim to finish some submissions while holding others", logs, interval=0.01)
    victim.kill()
    killed = time.monotonic()
    # A request the victim sent just before dying may still be served: read only once none is left.
    wait_for(lambda: not connections_of(mongo, NAMES[0]), 30, "the database to close the victim's connections")
    read_at = utcnow()
    read_at = read_at.replace(microsecond=read_at.microsecond // 1000 * 1000)  # the documents' precision
    at_kill = documents(db, subs)
    by_victim = {sid for sid, doc in at_kill.items() if doc["processing"]["state"] == "done"
                 and doc["provenance"]["server"] == NAMES[0]}
    orphans = {sid for sid, doc in at_kill.items() if doc["processing"]["state"] in UNFINISHED
               and (doc["processing"].get("lease") or {}).get("owner", "").startswith(prefix)}
    states_at_kill = collections.Counter(doc["processing"]["state"] for doc in at_kill.values())
    print("\nthree servers healthy in %.1fs; %s killed %.1fs after the POSTs began, when it had %d done and held %d "
          "unfinished; at the kill: %s, the victim's finished %d, its leftovers %d"
          % (started - began, NAMES[0], killed - started, seen[0], seen[1], dict(states_at_kill), len(by_victim),
             len(orphans)))
    assert by_victim and orphans

    docs = wait_finished(db, subs, 60, logs)
    print("all %d done %.1fs after the kill" % (len(subs), time.monotonic() - killed))
    for sub in subs:
        assert_verdicts(docs[sub.submission_id], expected[sub.submission_id], logs())

    named = collections.Counter(doc["provenance"]["server"] for doc in docs.values())
    print("finished by: %s" % dict(named))
    assert set(named) == set(NAMES), "every server judged some, nothing else is named: %s" % dict(named)
    for sid, doc in docs.items():
        processing, provenance = doc["processing"], doc["provenance"]
        assert "lease" not in processing and processing.get("settled_by") is not None, (sid, processing)
        assert set(provenance["judged_at"]) == {"consistency", "concordance", "originality"}, (sid, provenance)
        for check in ("concordance", "originality"):
            assert processing["dispatched_at"] <= provenance["judged_at"][check] <= processing["finished_at"], (sid, doc)

    # The victim's finished work is exactly what it had finished before dying, never written again.
    assert {sid for sid, doc in docs.items() if doc["provenance"]["server"] == NAMES[0]} == by_victim
    for sid in by_victim:
        before, after = at_kill[sid]["processing"], docs[sid]["processing"]
        assert (after["rev"], after["settled_by"], after["finished_at"]) == \
               (before["rev"], before["settled_by"], before["finished_at"]), sid

    # Its leftovers were judged again after its death, by a survivor, under a claim of their own.
    for sid in orphans:
        before, doc = at_kill[sid]["processing"], docs[sid]
        assert doc["provenance"]["server"] in NAMES[1:], (sid, doc["provenance"])
        assert doc["processing"]["settled_by"] != before["lease"]["token"], sid
        assert doc["processing"]["attempts"] > before.get("attempts", 0), (sid, before, doc["processing"])
        assert doc["processing"]["finished_at"] >= read_at, sid
        for check in ("concordance", "originality"):
            assert doc["provenance"]["judged_at"][check] >= read_at, (sid, check, doc["provenance"])
    # Those the victim had dispatched carry on from its step: their consistency is its work, never redone.
    handed_over = [sid for sid in orphans if at_kill[sid]["processing"].get("dispatched")]
    for sid in handed_over:
        before, doc = at_kill[sid], docs[sid]
        assert doc["evidence"]["consistency"] == before["evidence"]["consistency"], sid
        assert doc["provenance"]["judged_at"]["consistency"] == before["provenance"]["judged_at"]["consistency"] <= read_at
        assert doc["processing"]["dispatched_at"] == before["processing"]["dispatched_at"], sid
        judged_by = {check: who["server"] for check, who in doc["provenance"]["judged_by"].items()}
        assert judged_by["consistency"] == NAMES[0], (sid, judged_by)  # each check names who judged it
        assert judged_by["concordance"] == judged_by["originality"] == doc["provenance"]["server"] != NAMES[0], judged_by
    print("%d leftovers had been dispatched by the victim and were finished by a survivor" % len(handed_over))

    # Each survivor made one final write per submission it is named on: none twice, none overwritten.
    for server in survivors:
        text = requests.get(server.url + "/metrics", timeout=10).text
        name = server.env["SERVER_NAME"]
        assert metric(text, "criteria_submissions_total", outcome="done") == named[name], (name, dict(named))
        assert metric(text, "criteria_submissions_total", outcome="failed") == 0, name

    assert_leaderboard(db, rnd, expected, docs)
    for server in survivors:
        server.stop()
