"""intake: accepted requests per second and latency under gunicorn, pipeline running.

The load comes from a separate process (``bench.load``) over keep-alive
connections. Each run POSTs the ids of the round's submissions in turn:
a submission still in the pipeline answers 202 as a duplicate, one that
is finished is queued (and scored) again, so the pipeline works while
the intake is measured. The baseline is the 2017-style handler
(parse, put on a queue, record nothing) under the same gunicorn setup.

The store measured is SecantusDB, started by the benchmark in its own
process on a free loopback port; ``db_cpu_s`` is its CPU seconds during
the load. ``--stores mongomock,secantus`` adds a run against mongomock
inside the server process, reported as ``store=mongomock-in-process``: a
unit-test stand-in whose cost says nothing about a database server.

The server gives the intake priority (judging waits while requests keep
arriving), so after the load every submission must still end judged:
``judged`` counts the judgements made during the load, and the run fails
unless each submission is then done within JUDGED_WITHIN seconds.
"""
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from bench import intake_server, load
from bench.database import secantus, store_name
from bench.timing import BenchmarkError, result
from queues.local import free_port

#: How each store is named in the results.
MONGOMOCK = "mongomock-in-process"
#: Seconds after the load within which every accepted submission must be judged.
JUDGED_WITHIN = 180


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--submissions", type=int, default=100, help="submission documents the load cycles through")
    parser.add_argument("--rounds", type=int, default=3,
                        help="windows of each side, alternating bare then the service; medians are compared")
    parser.add_argument("--stores", default="secantus",
                        help="comma-separated: secantus (in its own process), mongomock (in the server's, a stand-in)")


@contextlib.contextmanager
def serving(folder, *extra):
    """Run the intake server; yields its port once /health (or / for bare) answers."""
    port = free_port()
    os.makedirs(folder, exist_ok=True)
    command = [sys.executable, "-m", "bench.intake_server", "--port", str(port), "--dir", folder] + list(extra)
    process = subprocess.Popen(command, cwd=intake_server.HERE, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(folder, "server.log"), "ab"))
    try:
        wait_until_serving(port, process, bare="--bare" in extra)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_serving(port, process, bare, timeout=120):
    deadline = time.monotonic() + timeout
    url = "http://127.0.0.1:%d/%s" % (port, "" if bare else "health")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError("intake server exited with %s" % process.returncode)
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError as answer:
            if bare:  # GET / is 405 on the bare app: it is up
                return
            if answer.code == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchmarkError("intake server did not come up")


def measure(port, args, judged=False):
    """Drive the load from another process; returns summary figures.

    ``judged``: also count the judgements made by the end of the load,
    read before the load's process is even shut down (judging resumes
    at full speed as soon as the requests stop).
    """
    bodies = [json.dumps({"submission_id": sid, "api_key": intake_server.API_KEY}).encode()
              for sid in intake_server.submission_ids(args.submissions)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        samples, elapsed = pool.submit(load.run_load, "127.0.0.1", port, bodies, args.clients, args.seconds).result()
        judgements = judged_so_far(port) if judged else None
    statuses = np.array([status for status, _ in samples])
    latencies = np.array([latency for _, latency in samples]) * 1e3
    accepted = int((statuses == 202).sum())
    return {"rps": round(accepted / elapsed, 1), "requests": len(samples), "non_202": int((statuses != 202).sum()),
            "server_errors": int((statuses >= 500).sum()), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2), "median": float(np.median(latencies)),
            "judged": judgements}


def judged_so_far(port):
    """Judgements the server has finished (its ``criteria_submissions{outcome="done"}`` counter)."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('criteria_submissions_total{outcome="done"}'):
            return int(float(line.split()[-1]))
    raise BenchmarkError("the server's /metrics has no count of judged submissions")


def status_of(port, submission_id, wait):
    """The submission's status, asked with ?wait= (which answers once it is settled)."""
    request = urllib.request.Request("http://127.0.0.1:%d/submissions/%s?wait=%d" % (port, submission_id, wait),
                                     headers={"X-API-Key": intake_server.API_KEY})
    return json.loads(urllib.request.urlopen(request, timeout=wait + 30).read())["status"]


def check_all_judged(port, count):
    """Every submission of the load was accepted at least once: each must end done after it.

    Reads do not hold judging up (only POSTs make it give way), so this
    also shows that judging put off during the load was not lost.
    """
    deadline = time.monotonic() + JUDGED_WITHIN
    for sid in intake_server.submission_ids(count):
        status = status_of(port, sid, 30)
        while status in ("queued", "scoring") and time.monotonic() < deadline:
            status = status_of(port, sid, 30)
        if status != "done":
            raise BenchmarkError("submission %s was accepted but is %s %ds after the load, not done"
                                 % (sid, status, JUDGED_WITHIN))


def run(args):
    """Bare and service windows alternate, ``args.rounds`` times, on servers started once.

    Alternating keeps a machine that warms up or gets busier from favouring
    one side; after each service window every submission must end judged
    before the next bare window starts, so judging never runs beside the
    bare handler's load. The first service window also pays for loading
    the round (a one-off per round and process): each window's figures are
    reported, and the medians are compared.
    """
    results = []
    with tempfile.TemporaryDirectory() as folder:
        with serving(os.path.join(folder, "bare"), "--bare") as bare_port:
            for store in [name.strip() for name in args.stores.split(",") if name.strip()]:
                results.append(measure_store(args, folder, store, bare_port))
    return results


def measure_store(args, folder, store, bare_port):
    """One store's result: ``args.rounds`` pairs of windows, bare then service."""
    extra, database, name = ["--submissions", str(args.submissions)], None, MONGOMOCK
    with contextlib.ExitStack() as stack:
        if store == "secantus":
            database = stack.enter_context(secantus(os.path.join(folder, "secantus")))
            extra += ["--mongo-url", database.url]
            name = store_name()
        elif store != "mongomock":
            raise BenchmarkError("unknown store %r" % store)
        port = stack.enter_context(serving(os.path.join(folder, store), *extra))
        windows = []
        for _ in range(args.rounds):
            bare = measure(bare_port, args)
            cpu_before = database.cpu_seconds() if database else 0.0
            judged_before = judged_so_far(port)
            figures = measure(port, args, judged=True)
            figures["judged"] -= judged_before  # this window's judgements
            figures["db_cpu"] = database.cpu_seconds() - cpu_before if database else None
            check_all_judged(port, args.submissions)
            if figures["server_errors"]:
                raise BenchmarkError("%d server errors under load against %s" % (figures["server_errors"], store))
            windows.append((bare, figures))
    return result("intake", summary(args, name, windows), statistics.median(f["median"] for _, f in windows),
                  statistics.median(b["median"] for b, _ in windows))


def summary(args, name, windows):
    """The medians over the windows, the ratios to the bare handler, and each window's rates."""
    def median(side, key):
        return round(statistics.median(pair[side][key] for pair in windows), 2)
    fields = {"store": name, "clients": args.clients, "submissions": args.submissions, "seconds": args.seconds,
              "rounds": len(windows), "rps": median(1, "rps"), "p50_ms": median(1, "p50_ms"), "p99_ms": median(1, "p99_ms"),
              "non_202": sum(f["non_202"] for _, f in windows), "judged": "/".join(str(f["judged"]) for _, f in windows),
              "bare_rps": median(0, "rps"), "bare_p99_ms": median(0, "p99_ms"),
              "rate_ratio": round(statistics.median(f["rps"] / b["rps"] for b, f in windows), 3),
              "p99_ratio": round(statistics.median(f["p99_ms"] / b["p99_ms"] for b, f in windows), 3),
              "windows_rps": ",".join("%.0f/%.0f" % (f["rps"], b["rps"]) for b, f in windows)}
    if windows[0][1]["db_cpu"] is not None:
        fields["db_cpu_s"] = round(statistics.median(f["db_cpu"] for _, f in windows), 1)
    return fields
