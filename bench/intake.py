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
    results = []
    with tempfile.TemporaryDirectory() as folder:
        with serving(os.path.join(folder, "bare"), "--bare") as port:
            bare = measure(port, args)
        for store in [name.strip() for name in args.stores.split(",") if name.strip()]:
            extra, database, name = ["--submissions", str(args.submissions)], None, MONGOMOCK
            with contextlib.ExitStack() as stack:
                if store == "secantus":
                    database = stack.enter_context(secantus(os.path.join(folder, "secantus")))
                    extra += ["--mongo-url", database.url]
                    name = store_name()
                elif store != "mongomock":
                    raise BenchmarkError("unknown store %r" % store)
                port = stack.enter_context(serving(os.path.join(folder, store), *extra))
                cpu_before = database.cpu_seconds() if database else 0.0
                figures = measure(port, args, judged=True)
                cpu = database.cpu_seconds() - cpu_before if database else None
                check_all_judged(port, args.submissions)
            if figures["server_errors"]:
                raise BenchmarkError("%d server errors under load against %s" % (figures["server_errors"], store))
            fields = {"store": name, "clients": args.clients, "submissions": args.submissions,
                      "seconds": args.seconds, "rps": figures["rps"], "p50_ms": figures["p50_ms"],
                      "p99_ms": figures["p99_ms"], "non_202": figures["non_202"], "judged": figures["judged"]}
            if cpu is not None:
                fields["db_cpu_s"] = round(cpu, 1)
            fields.update(bare_rps=bare["rps"], bare_p99_ms=bare["p99_ms"])
            results.append(result("intake", fields, figures["median"], bare["median"]))
    return results
