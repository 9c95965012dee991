"""scaleout: the same round through 1, 2 and 3 ``./server`` processes sharing one database and one S3.

Everything runs on 127.0.0.1: SecantusDB and moto's S3 server, each in
its own process started by the benchmark, and ``./server`` in production
mode, started as the end-to-end tests start it (``tests/e2e``'s
``server_env`` and ``Server`` are used as they are), each with its own
``SERVER_NAME`` and cache folder, as separate machines would have. The
round is :mod:`bench.round`'s, uploaded once; each configuration gets a
fresh database holding the round's documents and fresh servers, and the
POSTs go round-robin over the servers. The clock runs from the first
POST until every submission is done. ``speedup`` is the one-server time
over this configuration's.

After each configuration the benchmark checks that nothing was judged
twice: every submission done, claimed once (``processing.attempts`` is
1), the verdicts the same in every configuration, the originality of the
last ``--verify`` submissions equal to the plain rule's, and one
leaderboard entry per user showing its submission. ``judged`` counts the
submissions each server judged, from ``provenance`` (``judged_by``: every
check of a submission by one server).
``db_cpu_s``, ``s3_cpu_s`` and ``servers_cpu_s`` are the CPU seconds of
SecantusDB, moto and all servers' processes during the round.

On 2 cores little gain is to be expected: the point is that the work is
shared and nothing is judged twice.
"""
import collections
import concurrent.futures
import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import botocore.config
import pymongo
import requests

from bench import round as round_bench
from bench.database import cpu_seconds, group_cpu_seconds, secantus, store_name
from bench.timing import BenchmarkError, result
from queues.files import dataset_key, submission_key
from scoring.rules import Rules
from tests.e2e.conftest import HOST, S3_KEYS, Server, Storage, end_process_group, free_port, server_env, tail, wait_for

UPLOADS, DATASETS = "scaleout-uploads", "scaleout-datasets"
API_KEY = "bench-scaleout-" + uuid.uuid4().hex
ACTIVE = round_bench.ACTIVE


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="tournament rows (n)")
    parser.add_argument("--users", type=int, default=300,
                        help="submissions in the round, one per user (the round benchmark's 1,000 takes long "
                             "three times over: see docs/performance.md)")
    parser.add_argument("--servers", default="1,2,3", help="comma-separated numbers of servers to run the round through")
    parser.add_argument("--train-rows", type=int, default=50000)
    parser.add_argument("--features", type=int, default=21)
    parser.add_argument("--verify", type=int, default=3, help="late submissions checked against the plain rules")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a configuration after this many seconds")
    parser.add_argument("--seed", type=int, default=0)


@contextlib.contextmanager
def moto(folder):
    """moto's S3 server on a free loopback port, in its own process group; yields (endpoint URL, pid)."""
    port = free_port()
    url = "http://%s:%d" % (HOST, port)
    log_path = os.path.join(folder, "moto.log")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(["moto_server", "-H", HOST, "-p", str(port)], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def up():
            if process.poll() is not None:
                raise BenchmarkError("moto_server exited with %s\n%s" % (process.returncode, tail(log_path)))
            try:
                return requests.get(url + "/moto-api/", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(up, 60, "moto_server to answer on %s" % url, lambda: tail(log_path))
        yield url, process.pid
    finally:
        end_process_group(process)


def upload(root, docs, endpoint):
    """Put the round's dataset and every submission file into the buckets; returns the S3 client."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=botocore.config.Config(retries={"max_attempts": 3}, max_pool_connections=8), **S3_KEYS)
    s3.create_bucket(Bucket=UPLOADS)
    s3.create_bucket(Bucket=DATASETS)
    s3.upload_file(os.path.join(root, "datasets", str(round_bench.ROUND), "numerai_datasets.zip"), DATASETS,
                   dataset_key(round_bench.ROUND))

    def put(doc):
        path = os.path.join(root, "uploads", doc["username"], doc["filename"])
        s3.upload_file(path, UPLOADS, submission_key(doc["username"], doc["filename"]))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, docs))
    return s3


def start_servers(count, storage, database_url, folder):
    """``count`` servers named server-1.. with their own cache folders; returns the started :class:`Server`s."""
    servers = []
    for number in range(1, count + 1):
        home = Path(folder) / ("server-%d" % number)
        home.mkdir(parents=True)
        env = server_env(storage, database_url, home, API_KEY=API_KEY, SERVER_NAME="server-%d" % number,
                         RECOVERY_INTERVAL="10", STOP_TIMEOUT="15", MONGO_TIMEOUT_MS="3000")
        servers.append(Server(env, home / "server.log"))
        servers[-1].start(timeout=120)
    return servers


def post_round_robin(servers, docs):
    """POST every submission, in upload order, to the servers in turn."""
    sessions = [requests.Session() for _ in servers]
    for number, doc in enumerate(docs):
        which = number % len(servers)
        answer = servers[which].post(str(doc["_id"]), session=sessions[which])
        if answer.status_code != 202:
            raise BenchmarkError("POST to server-%d answered %s: %s" % (which + 1, answer.status_code, answer.text))
    for session in sessions:
        session.close()


def settled(server, session):
    """Submissions the server has settled (done or failed), from its /metrics: asking the database
    instead would add the polls to the database's CPU time."""
    text = session.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("criteria_submissions_total{outcome=\"done\"}",
                                   "criteria_submissions_total{outcome=\"failed\"}")))


def judge(servers, docs, db, timeout):
    """POST the round and wait for every verdict; returns seconds."""
    started = time.perf_counter()
    post_round_robin(servers, docs)
    with requests.Session() as session:
        while sum(settled(server, session) for server in servers) < len(docs) \
                or db.submissions.find_one(ACTIVE, {"_id": 1}) is not None:
            if time.perf_counter() - started > timeout:
                raise BenchmarkError("round not finished after %.0fs\n%s" % (timeout, servers[0].tail()))
            time.sleep(0.5)
    return time.perf_counter() - started


def judged_once(db, docs):
    """Check every submission was claimed once and ended done; returns (per-server counts, verdicts by id)."""
    judged, verdicts = collections.Counter(), {}
    for doc in db.submissions.find({}, {"processing": 1, "provenance.server": 1, "provenance.judged_by": 1, "consistency": 1,
                                        "concordant": 1, "original": 1}):
        processing = doc.get("processing") or {}
        if processing.get("state") != "done" or processing.get("attempts") != 1:
            raise BenchmarkError("%s ended %s after %s claims: %s" % (doc["_id"], processing.get("state"),
                                                                      processing.get("attempts"), processing.get("error")))
        provenance = doc.get("provenance") or {}
        by = {who.get("server") for who in (provenance.get("judged_by") or {}).values()} or {provenance.get("server")}
        if len(by) != 1:
            raise BenchmarkError("%s was judged by %s" % (doc["_id"], ", ".join(sorted(map(str, by)))))
        judged[by.pop()] += 1
        verdicts[doc["_id"]] = (doc["consistency"], doc["concordant"]["value"], doc["original"]["value"])
    if len(verdicts) != len(docs):
        raise BenchmarkError("%d submissions judged of %d" % (len(verdicts), len(docs)))
    return judged, verdicts


def configuration(count, docs, predictions, storage, database, s3_pid, folder, args):
    """One round through ``count`` servers; returns (fields, verdicts by id, seconds)."""
    storage.db.submissions.insert_many(docs)
    storage.db.competitions.insert_one({"_id": round_bench.ROUND, "leaderboard": []})
    servers = start_servers(count, storage, database.url, folder)
    try:
        before = (database.cpu_seconds(), cpu_seconds(s3_pid), sum(group_cpu_seconds(s.process.pid) for s in servers))
        seconds = judge(servers, docs, storage.db, args.timeout)
        after = (database.cpu_seconds(), cpu_seconds(s3_pid), sum(group_cpu_seconds(s.process.pid) for s in servers))
        wait_for(lambda: storage.db.submissions.count_documents({"processing.board": {"$exists": True}}) == 0,
                 args.timeout, "the leaderboard to catch up", servers[0].tail)
        for server in servers:
            server.stop()
    finally:
        for server in servers:
            server.cleanup()
    judged, verdicts = judged_once(storage.db, docs)
    round_bench.check_board(storage.db, len(docs))
    pairs = round_bench.verify(storage.db, docs, predictions, args.verify, Rules())
    db_cpu, s3_cpu, servers_cpu = (b - a for a, b in zip(before, after))
    fields = {"servers": count, "rows": args.rows, "users": args.users, "store": store_name(),
              "seconds": round(seconds, 1), "per_submission_ms": round(seconds * 1e3 / len(docs), 1),
              "judged": ",".join("%s:%d" % item for item in sorted(judged.items())),
              "attempts": "1/1", "db_cpu_s": round(db_cpu, 1), "s3_cpu_s": round(s3_cpu, 1),
              "servers_cpu_s": round(servers_cpu, 1), "verified_pairs": pairs}
    return fields, verdicts, seconds


def run(args):
    counts = [int(part) for part in args.servers.split(",") if part.strip()]
    results, first_ms, first_verdicts = [], None, None
    with tempfile.TemporaryDirectory() as root:
        docs, predictions = round_bench.prepare(root, args)
        with secantus(os.path.join(root, "secantus")) as database, moto(root) as (endpoint, s3_pid):
            s3 = upload(root, docs, endpoint)
            client = pymongo.MongoClient(database.url)
            try:
                for count in counts:
                    storage = Storage(client["scaleout_%d" % count], s3, endpoint, UPLOADS, DATASETS)
                    fields, verdicts, seconds = configuration(count, docs, predictions, storage, database, s3_pid,
                                                     os.path.join(root, "run-%d" % count), args)
                    if first_verdicts is None:
                        first_verdicts = verdicts
                    elif verdicts != first_verdicts:
                        wrong = [oid for oid in verdicts if verdicts[oid] != first_verdicts.get(oid)]
                        raise BenchmarkError("%d servers judged %d submissions differently, e.g. %s"
                                             % (count, len(wrong), wrong[:3]))
                    milliseconds = seconds * 1e3
                    first_ms = first_ms or milliseconds
                    results.append(result("scaleout", fields, milliseconds, first_ms))
            finally:
                client.close()
    return results
