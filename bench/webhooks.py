"""webhooks: what a receiver that is down costs judging (``python -m bench round --notify-down``).

The same round (bench/round.py) is judged twice, side by side, each time
on a fresh SecantusDB of its own: without webhooks (``notify=off``) and
with webhooks to a loopback port that refuses every connection
(``notify=down``). With ``--pairs N`` the pair runs N times, alternating
which goes first, so that a machine that warms up or gets busier does not
favour one side. Each run is one ``bench round`` line with ``notify=``;
the last line, ``bench round-notify-down``, has both medians and
``overhead_pct``, how much longer judging took with the receiver down
(the target is within 5 %, reported, not asserted). The run with the
receiver down also checks that every submission's event is waiting in
the database, none lost, for when the receiver comes back.
"""
import os
import socket
import statistics
import sys
import tempfile

from bench import round as bench_round
from bench.database import store_name
from bench.timing import BenchmarkError, result
from scoring.rules import Rules


class RefusingPort:
    """A loopback port bound but never listening: every connection is refused while it is held."""

    def __enter__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d/hooks" % self.socket.getsockname()[1]

    def __exit__(self, *exc_info):
        self.socket.close()


def run_root(root, name):
    """A folder for one run: the round's files shared (linked), its database and cache its own."""
    folder = os.path.join(root, name)
    os.makedirs(folder)
    for shared in ("uploads", "datasets"):
        os.symlink(os.path.join(root, shared), os.path.join(folder, shared))
    return folder


def line(args, mode, figures, predictions, rules):
    """One run as a ``bench round`` result, its mode named."""
    seconds = figures.pop("seconds")
    fields = {"rows": args.rows, "users": args.users, "store": store_name(), "notify": mode,
              "seconds": round(seconds, 1), "per_submission_ms": round(seconds * 1e3 / args.users, 1)}
    fields.update((key, round(value, 1) if isinstance(value, float) and key.endswith("_s") else value)
                  for key, value in figures.items())
    return result("round", fields, seconds * 1e3, bench_round.baseline_ms(predictions, args.users, rules))


def side_by_side(args):
    """Both runs, ``args.pairs`` times; one result per run, then the medians and the overhead."""
    rules = Rules()
    with tempfile.TemporaryDirectory() as root:
        docs, predictions = bench_round.prepare(root, args)

        def checks(db):
            failed = db.submissions.count_documents({"processing.state": "failed"})
            if failed:
                raise BenchmarkError("%d submissions failed" % failed)
            bench_round.check_board(db, args.users)
            return {"verified_pairs": bench_round.verify(db, docs, predictions, args.verify, rules)}

        def waiting(db):
            found = checks(db)
            events = db.submissions.count_documents({"notifications.due": {"$exists": True}})
            if events != args.users:
                raise BenchmarkError("%d submissions have a webhook event waiting, not %d" % (events, args.users))
            return dict(found, events_waiting=events)

        results, seconds = [], {"off": [], "down": []}
        for number in range(args.pairs):
            for mode in ("off", "down") if number % 2 == 0 else ("down", "off"):
                folder = run_root(root, "%s-%d" % (mode, number))
                with RefusingPort() as url:
                    figures = bench_round.run_round(folder, docs, args.timeout, waiting if mode == "down" else checks,
                                                    notify_url=url if mode == "down" else None)
                seconds[mode].append(figures["seconds"])
                print("bench round --notify-down: pair %d, notify=%s: %.1f s" % (number + 1, mode, figures["seconds"]),
                      file=sys.stderr, flush=True)
                results.append(line(args, mode, figures, predictions, rules))
    off, down = statistics.median(seconds["off"]), statistics.median(seconds["down"])
    summary = {"rows": args.rows, "users": args.users, "pairs": args.pairs, "store": store_name(),
               "off_s": round(off, 1), "down_s": round(down, 1), "overhead_pct": round((down / off - 1) * 100, 1),
               "runs_off_s": "/".join("%.1f" % value for value in seconds["off"]),
               "runs_down_s": "/".join("%.1f" % value for value in seconds["down"])}
    return results + [result("round-notify-down", summary, down * 1e3, off * 1e3)]
