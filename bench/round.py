"""round: a whole round through the real service against SecantusDB, from files to verdicts.

Each user's submission (n rows) is written as a CSV file in a folder laid
out like the buckets; the round's documents go into SecantusDB, which the
benchmark starts in its own process on a free loopback port (as local
mode does); every submission is POSTed, one after the other, through the
app that :func:`queues.service.build_service` builds, with its dispatcher,
concordance, originality, leaderboard, recovery and lease threads. The
clock runs from the first request until every submission is done
(``seconds``); ``board_s`` is when the leaderboard shows every verdict.
Verdicts of a sample of late submissions are checked against the plain
rules, and every leaderboard entry against its user's submission.
``--notify-down`` runs the round twice side by side, without webhooks
and with a receiver that is down (see bench/webhooks.py).

What the database costs is reported beside the time. ``db_cpu_s`` is the
SecantusDB process's CPU seconds from the first POST to the last verdict
(``service_cpu_s``: this process's, the benchmark's own requests
included). The commands the service sends are counted on its client by
pymongo's command monitoring, by the thread that sent them:
``round_trips_per_submission`` is the intake's, the pipeline workers' and
the members' change stream's commands over the submissions,
``rt_<command>`` the workers' parts and ``rt_stream`` the stream's
getMores. The leaderboard writer's are apart: ``board_writes`` updates of
the leaderboard, carrying ``board_entries`` entries, for
``board_changes`` transitions that changed what it shows;
``board_commands`` all of the writer's commands (its reads and stamp
clearing too); ``board_rtt_s`` their round-trip time as the client saw
it (an upper bound: it includes waiting behind every other command).
What the writer cost the database is estimated once the round is done,
on the idle database (:func:`board_cost`): ``board_db_cpu_est_s`` and its
share of ``db_cpu_s``, ``board_db_share``. ``background_commands`` are
the recovery sweep's and the lease keeper's, which run on a timer.
``processes`` is how many server processes judged the round (this one).
``--rescore`` then re-scores the whole judged round over HTTP and reports
``rescore_s`` and its CPU (not a target).

The baseline is only the 2017 optimized originality loop for the same
round (each submission against every earlier user's), timed on a sample
of pairs and scaled; the rest of the 2017 pipeline is not counted, so
the speedup understates the difference.
"""
import base64
import collections
import concurrent.futures
import dataclasses
import datetime
import os
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import pymongo
from bson import ObjectId

from bench import data
from bench.database import Commands, secantus, store_name
from bench.originality import baseline_pair
from bench.timing import BenchmarkError, result
from queues import demo, service
from queues.config import Config
from queues.store import Store
from scoring.ks import ks_statistic
from scoring.originality import too_correlated
from scoring.rules import Rules

ROUND = 7
API_KEY = "bench-round-key"
VALIDATION_ERAS = 12


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="tournament rows (n)")
    parser.add_argument("--users", type=int, default=1000, help="submissions in the round, one per user")
    parser.add_argument("--train-rows", type=int, default=50000)
    parser.add_argument("--features", type=int, default=21)
    parser.add_argument("--verify", type=int, default=3, help="late submissions checked against the plain rules")
    parser.add_argument("--notify-down", action="store_true", help="judge the round without webhooks and with "
                        "webhooks to a receiver that is down, side by side (bench/webhooks.py)")
    parser.add_argument("--pairs", type=int, default=1, help="with --notify-down: pairs of runs, alternating which goes first")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rescore", action="store_true",
                        help="then re-score the whole judged round over HTTP and report its time (not a target)")


def frames(generator, args):
    """Training and tournament frames in the 2017 layout."""
    rng = np.random.default_rng(args.seed + 1)
    features, data_types = data.tournament_features(args.rows, args.features, seed=args.seed)
    columns = ["feature%d" % (i + 1) for i in range(args.features)]
    tournament = pd.DataFrame(features, columns=columns)
    eras = np.where(data_types == "validation", np.char.add("era", (np.arange(args.rows) % VALIDATION_ERAS + 86).astype(str)), "eraX")
    target = (generator.target + rng.normal(size=args.rows) > 0).astype(float)
    tournament.insert(0, "data_type", data_types)
    tournament.insert(0, "era", eras)
    tournament.insert(0, "id", ["n%015x" % v for v in rng.choice(16 ** 12, size=args.rows, replace=False)])
    tournament["target"] = np.where(data_types == "live", np.nan, target)
    training = pd.DataFrame(data.training_features(args.train_rows, args.features), columns=columns)
    training.insert(0, "data_type", "train")
    training.insert(0, "era", np.char.add("era", (np.arange(args.train_rows) % 85 + 1).astype(str)))
    training.insert(0, "id", np.char.add("t", np.arange(args.train_rows).astype(str)))
    training["target"] = rng.integers(0, 2, size=args.train_rows).astype(float)
    return training, tournament


def write_csv(path, ids, values):
    with open(path, "w") as handle:
        handle.write("id,probability\n")
        handle.write("\n".join(map("%s,%r".__mod__, zip(ids, values.tolist()))))
        handle.write("\n")


def prepare(root, args):
    """Write the round into ``root``; returns (documents, predictions by user, tournament)."""
    generator = data.RoundGenerator(args.rows, seed=args.seed)
    training, tournament = frames(generator, args)
    os.makedirs(os.path.join(root, "datasets", str(ROUND)))
    with open(os.path.join(root, "datasets", str(ROUND), "numerai_datasets.zip"), "wb") as handle:
        handle.write(demo.dataset_zip(training, tournament))
    predictions = generator.round(args.users).predictions
    ids = tournament["id"].tolist()
    created = datetime.datetime(2017, 5, 1)
    docs = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for number, (user, values) in enumerate(predictions.items()):
            doc = {"_id": ObjectId(), "username": user, "competition_id": ROUND,
                   "filename": "%s.csv" % user, "created": created + datetime.timedelta(seconds=number)}
            os.makedirs(os.path.join(root, "uploads", user))
            pool.submit(write_csv, os.path.join(root, "uploads", user, doc["filename"]), ids, values)
            docs.append(doc)
    return docs, predictions


#: The leaderboard writer's thread, the members' change stream, and the threads that run on a
#: timer (names given by queues.service).
BOARD_THREADS = ("leaderboard",)
STREAM_THREADS = ("members",)
BACKGROUND_THREADS = ("recovery", "leases", "supervisor")
#: Commands the driver sends on its own (ending sessions at close).
DRIVER_COMMANDS = ("endSessions",)
DB_NAME = "bench"


#: Where a transition that settles a submission leads.
SETTLED = ("done", "failed")
#: A filter for submissions still in the pipeline; the (state, created) index serves it.
ACTIVE = {"processing.state": {"$in": ["queued", "scoring"]}}


class Watch:
    """What the service's commands carry, read from the commands themselves as they are sent.

    It counts the leaderboard's writes, the entries they carry and the
    transitions that change what a leaderboard shows, and lets the
    benchmark wait for the settling transitions without asking the
    database (whose every poll would be counted in its CPU time).
    """

    def __init__(self):
        self.changed = threading.Condition()
        self.reset()

    def reset(self):
        self.writes = 0   # updates of a leaderboard (the whole array, or entries by position)
        self.entries = 0  # entries those updates wrote
        self.changes = 0  # transitions that changed what a leaderboard shows (they stamp processing.board)
        self.settling = 0  # transitions to done or failed sent

    def inspect(self, thread, event):
        if event.command_name != "update":
            return
        collection = event.command.get("update")
        for spec in event.command.get("updates", ()):
            update = spec.get("u") or {}
            fields = update.get("$set") or {}
            if collection == "competitions" and thread in BOARD_THREADS:
                positions = {key.split(".")[1] for key in fields if key.startswith("leaderboard.")}
                if isinstance(fields.get("leaderboard"), list):  # the whole array: count the entries it changes
                    before, after = (spec.get("q") or {}).get("leaderboard") or [], fields["leaderboard"]
                    positions = {number for number, entry in enumerate(after)
                                 if number >= len(before) or entry != before[number]}
                if positions:
                    self.writes += 1
                    self.entries += len(positions)
            elif collection == "submissions" and "processing.board" in fields:
                self.changes += 1
                if fields.get("processing.state") in SETTLED:
                    with self.changed:
                        self.settling += 1
                        self.changed.notify_all()

    def wait_settling(self, count, timeout):
        """Wait until ``count`` settling transitions were sent; False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: self.settling >= count, timeout)


def service_cpu_seconds():
    """CPU seconds of this process so far: the service's threads, and the benchmark's own requests and polls."""
    times = os.times()
    return times.user + times.system


def wait_until(condition, started, timeout, what, interval=0.5):
    """Poll ``condition`` every ``interval`` seconds until it holds; returns the seconds since ``started``."""
    while not condition():
        if time.perf_counter() - started > timeout:
            raise BenchmarkError("%s after %.0fs" % (what, timeout))
        time.sleep(interval)
    return time.perf_counter() - started


def judge(app, docs, db, database, watch, timeout):
    """POST every submission and wait for the verdicts, then for the leaderboard.

    Returns seconds to the last verdict, seconds until the leaderboard is
    in line, and the database's and this process's CPU seconds up to the
    last verdict.
    """
    http = app.test_client()
    cpu_before, own_before = database.cpu_seconds(), service_cpu_seconds()
    started = time.perf_counter()
    for doc in docs:
        answer = http.post("/", json={"submission_id": str(doc["_id"]), "api_key": API_KEY})
        if answer.status_code != 202:
            raise BenchmarkError("POST answered %s: %s" % (answer.status_code, answer.get_data()))
    if not watch.wait_settling(len(docs), timeout):
        raise BenchmarkError("round not finished after %.0fs" % timeout)
    # the last transitions were sent; the database confirms once they are written (cheap: none left active)
    seconds = wait_until(lambda: db.submissions.find_one(ACTIVE, {"_id": 1}) is None, started, timeout,
                         "round not finished", interval=0.01)
    cpu, own = database.cpu_seconds() - cpu_before, service_cpu_seconds() - own_before
    board_seconds = wait_until(lambda: db.submissions.find_one({"processing.board": {"$exists": True}}, {"_id": 1}) is None,
                               started, timeout, "leaderboard not in line")
    return seconds, board_seconds, cpu, own


def board_cost(db, database, watch, repeats=10):
    """The leaderboard writer's database CPU in the round, estimated on the idle database afterwards.

    While the round runs, the writer's commands wait behind everyone
    else's, so their round-trip time says little about what they cost the
    database. Once the round is done, the commands the writer sends per
    write (read the board, read the touched submissions by id, the
    whole-array conditional write, the stamp clearing) are replayed
    ``repeats`` times against the finished board, each write changing as
    many entries as the round's writes did on average, and the database's
    CPU per write is multiplied by the writes.
    """
    entries = db.competitions.find_one({"_id": ROUND})["leaderboard"]
    per_write = max(1, round(watch.entries / watch.writes)) if watch.writes else 1
    ids = [entry["submission_id"] for entry in entries[:per_write]]
    store = Store(db)
    parts = collections.Counter()

    def timed(part, call, *args):
        before = database.cpu_seconds()
        found = call(*args)
        parts[part] += database.cpu_seconds() - before
        return found
    for number in range(repeats):
        current = timed("read", lambda: db.competitions.find_one({"_id": ROUND}, {"leaderboard": 1})["leaderboard"])
        changed = [dict(entry, criteria_rev=(entry.get("criteria_rev") or 0) + (1 if number % 2 == 0 else -1))
                   if position < per_write else entry for position, entry in enumerate(current)]
        timed("docs", store.board_docs, ids)
        timed("write", db.competitions.update_one, {"_id": ROUND, "leaderboard": current}, {"$set": {"leaderboard": changed}})
        timed("stamps", store.clear_board_stamps, [(oid, ObjectId()) for oid in ids])  # the writer's, matching nothing
    each = sum(parts.values()) / repeats
    figures = {"board_db_cpu_per_write_ms": round(each * 1e3, 1), "board_db_cpu_est_s": round(each * watch.writes, 2)}
    figures.update(("board_%s_ms" % part, round(seconds * 1e3 / repeats, 1)) for part, seconds in parts.items())
    return figures


def rescore_round(app, db, database, timeout):
    """Re-score the whole judged round over HTTP, as an operator would; its seconds and CPU.

    Every submission goes through the pipeline again (re-queued with its
    judgement kept in history, claimed, judged); the run closes when all
    are settled. Polled every half second through the API; then the
    leaderboard is waited for (``rescore_board_s``), as after the round.
    """
    http = app.test_client()
    headers = {"X-API-Key": API_KEY}
    cpu_before, own_before = database.cpu_seconds(), service_cpu_seconds()
    started = time.perf_counter()
    answer = http.post("/rounds/%d/rescore" % ROUND, headers=headers)
    if answer.status_code != 202:
        raise BenchmarkError("re-score answered %s: %s" % (answer.status_code, answer.get_data()))
    run = answer.get_json()["run"]

    def finished():
        status = http.get("/rounds/%d/rescore?run=%s" % (ROUND, run), headers=headers).get_json()
        return status.get("status") == "finished" and status
    seconds = wait_until(finished, started, timeout, "re-score not finished")
    status = finished()
    cpu, own = database.cpu_seconds() - cpu_before, service_cpu_seconds() - own_before
    board_seconds = wait_until(lambda: db.submissions.find_one({"processing.board": {"$exists": True}}, {"_id": 1}) is None,
                               started, timeout, "leaderboard not in line after the re-score")
    return {"rescore_s": round(seconds, 1), "rescore_board_s": round(board_seconds, 1), "rescore_db_cpu_s": round(cpu, 1),
            "rescore_service_cpu_s": round(own, 1),
            "rescore_submissions": status["submissions"], "rescore_changed": status["changed"]}


def run_round(root, docs, timeout, checks, rescore=False, notify_url=None):
    """Judge every document through the real service on SecantusDB in its own process.

    ``checks(db)`` runs on the finished round before the database stops.
    Returns the figures; commands are counted on the service's client
    only, from the first POST until the leaderboard is in line. With
    ``notify_url`` the service sends webhooks there.
    """
    config = Config(api_key=API_KEY, local=True, local_dir=root, cache_dir=os.path.join(root, "cache"),
                    mongo_db_name=DB_NAME)
    if notify_url:  # bench/webhooks.py: the same round with a receiver that is down
        config = dataclasses.replace(config, notify_url=notify_url,
                                     notify_secret="whsec_" + base64.b64encode(os.urandom(32)).decode())
    watch = Watch()
    commands = Commands(watch.inspect)
    with secantus(os.path.join(root, "secantus")) as database:
        # the service's client has queues.clients.client_for's settings, plus the counting listener
        client = pymongo.MongoClient(database.url, event_listeners=[commands],
                                     serverSelectionTimeoutMS=config.mongo_timeout_ms,
                                     connectTimeoutMS=config.mongo_timeout_ms, socketTimeoutMS=30000)
        own = pymongo.MongoClient(database.url)  # the benchmark's reads and writes, not counted
        try:
            db = own[DB_NAME]
            db.submissions.insert_many(docs)
            db.competitions.insert_one({"_id": ROUND, "leaderboard": []})
            app, stop = service.build_service(config, lambda: client[DB_NAME])
            try:
                commands.reset()  # the indexes build_service created are not the round's
                watch.reset()
                seconds, board_seconds, cpu, service_cpu = judge(app, docs, db, database, watch, timeout)
                counts = collections.Counter(commands.counts)
                board_db = sum(commands.seconds[thread] for thread in BOARD_THREADS)
                calibrated = board_cost(client[DB_NAME], database, watch)
                rescored = rescore_round(app, db, database, timeout) if rescore else {}
            finally:
                stop()
            extra = checks(db)
        finally:
            own.close()
            client.close()
    figures = {"seconds": seconds, "board_s": board_seconds, "db_cpu_s": cpu, "service_cpu_s": service_cpu,
               "board_rtt_s": board_db, "processes": 1}
    figures.update(command_figures(counts, watch, len(docs)))
    figures.update(extra)
    figures.update(calibrated)
    figures["board_db_share"] = round(calibrated["board_db_cpu_est_s"] / cpu, 3) if cpu else None
    figures.update(rescored)
    return figures


def command_figures(counts, board, submissions):
    """Round trips per submission by command name, and the leaderboard's and timers' commands apart."""
    judged, board_commands, stream, background = collections.Counter(), 0, 0, 0
    for (thread, name), count in counts.items():
        if name in DRIVER_COMMANDS:
            continue
        if thread in BOARD_THREADS:
            board_commands += count
        elif thread in STREAM_THREADS:
            stream += count
        elif thread in BACKGROUND_THREADS:
            background += count
        else:
            judged[name] += count
    figures = {"round_trips_per_submission": round((sum(judged.values()) + stream) / submissions, 2)}
    figures.update(("rt_%s" % name, round(count / submissions, 3)) for name, count in sorted(judged.items()))
    figures.update(rt_stream=round(stream / submissions, 3), board_writes=board.writes, board_entries=board.entries,
                   board_changes=board.changes, board_commands=board_commands, background_commands=background)
    return figures


def verify(db, docs, predictions, count, rules):
    """Originality of the last ``count`` submissions equals the plain rule's; returns pairs checked."""
    pairs = 0
    for doc in docs[-count:]:
        stored = db.submissions.find_one({"_id": doc["_id"]})
        if stored["processing"]["state"] != "done":
            raise BenchmarkError("%s ended %s: %s" % (doc["username"], stored["processing"]["state"], stored["processing"].get("error")))
        candidate = predictions[doc["username"]]
        ordered = np.sort(candidate)
        similar, original = 0, True
        for other in docs:
            if other["created"] >= doc["created"]:
                continue
            values = predictions[other["username"]]
            pairs += 1
            ks = ks_statistic(ordered, np.sort(values))
            if too_correlated(candidate, values, rules) or ks < rules.duplicate_ks:
                original = False
                break
            similar += ks <= rules.similar_ks
            if similar >= max(rules.max_similar, 1):
                original = False
                break
        if stored["original"]["value"] is not original:
            raise BenchmarkError("%s: pipeline says original=%s, plain rule %s" % (doc["username"], stored["original"]["value"], original))
    return pairs


def baseline_ms(predictions, users, rules, sample=200):
    """The 2017 optimized originality loop for the whole round, from a timed sample of pairs."""
    vectors = list(predictions.values())
    rng = np.random.default_rng(1)
    chosen = [tuple(rng.choice(len(vectors), size=2, replace=False)) for _ in range(sample)]
    presorted = {i: np.sort(vectors[i]) for pair in chosen for i in pair}
    started = time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        for a, b in chosen:
            baseline_pair(vectors[a], presorted[a], vectors[b], presorted[b], rules)
    per_pair = (time.perf_counter() - started) / sample * 1e3
    return per_pair * users * (users - 1) / 2


def check_board(db, users):
    """One leaderboard entry per user, showing that user's submission and its verdicts."""
    board = db.competitions.find_one({"_id": ROUND})["leaderboard"]
    docs = {doc["username"]: doc for doc in db.submissions.find({"competition_id": ROUND},
                                                                 {"username": 1, "concordant": 1, "original": 1})}
    if len(board) != users or {entry["username"] for entry in board} != set(docs):
        raise BenchmarkError("%d leaderboard entries for %d users" % (len(board), users))
    for entry in board:
        doc = docs[entry["username"]]
        if (entry["submission_id"], entry["concordant"], entry["original"]) != (doc["_id"], doc["concordant"], doc["original"]):
            raise BenchmarkError("%s's leaderboard entry %r does not show its submission %r" % (doc["username"], entry, doc))


def run(args):
    if args.notify_down:
        from bench import webhooks
        return webhooks.side_by_side(args)
    rules = Rules()
    with tempfile.TemporaryDirectory() as root:
        docs, predictions = prepare(root, args)

        def checks(db):
            failed = db.submissions.count_documents({"processing.state": "failed"})
            if failed:
                raise BenchmarkError("%d submissions failed" % failed)
            check_board(db, args.users)
            return {"verified_pairs": verify(db, docs, predictions, args.verify, rules)}
        figures = run_round(root, docs, args.timeout, checks, rescore=args.rescore)
    seconds = figures.pop("seconds")
    fields = {"rows": args.rows, "users": args.users, "store": store_name(), "seconds": round(seconds, 1),
              "per_submission_ms": round(seconds * 1e3 / args.users, 1)}
    fields.update((key, round(value, 1) if isinstance(value, float) and key.endswith("_s") else value)
                  for key, value in figures.items())
    return [result("round", fields, seconds * 1e3, baseline_ms(predictions, args.users, rules))]
