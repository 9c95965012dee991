"""The wiring: every object the service runs, built from the configuration and its collaborators.

``./server`` only parses the command line and calls these; the tests'
``Node`` and the benchmarks build their servers with the same functions,
so what is tested and measured is what is deployed.

- :func:`build_pipeline`: the stage workers, the members' change stream,
  the leaderboard writer and the lease keeper under one supervisor (not
  started), and the rescorer: what serving and ``./server rescore`` run.
- :func:`build_service`: all of that plus recovery, the re-score thread
  and the Flask app, started inside the serving process (after
  gunicorn's fork); returns the app and the function that stops it all.
- :func:`stop` and :func:`hand_back`: threads joined, leases handed back,
  and a line saying what recovery gets.
"""
import dataclasses
import functools
import logging
import typing

import pymongo.errors

from queues import demo, notify, preflight, rescore
from queues.app import create_app, database_status
from queues.clients import build_files, client_for
from queues.competitions import Competitions
from queues.errors import misconfiguration
from queues.files import LocalFiles
from queues.leaderboard import Leaderboard
from queues.members import RoundMembers
from queues.metrics import Metrics
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY, Pipeline
from queues.provenance import Provenance
from queues.recovery import LeaseKeeper, Recovery, process_alive
from queues.rescore import Rescorer
from queues.rounds import Rounds
from queues.store import Store, owner_name, owner_prefix
from queues.supervisor import Supervisor
from queues.workers import ConcordanceWorker, Dispatcher, OriginalityWorker
from scoring.prepared import PreparedRound

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Parts:
    """One process's pipeline: what :func:`build_pipeline` builds."""

    pipeline: Pipeline
    metrics: Metrics
    supervisor: Supervisor
    board: Leaderboard
    members: RoundMembers
    rounds: Rounds
    rescorer: Rescorer
    #: The stage workers by stage (each also runs on its thread; a test may step them itself).
    workers: typing.Dict[str, object]
    #: The webhooks' poller and delivery threads (queues.notify), None when NOTIFY_URL is unset.
    notifier: typing.Optional[notify.Notifier] = None
    #: The competition documents: the re-score run lock and the leaderboard entries.
    competitions: typing.Optional[Competitions] = None


def build_pipeline(config, store, files=None, alive=process_alive, competitions=None):
    """The pipeline of one process around ``store`` (not started).

    ``files`` defaults to the configured storage; ``competitions`` (the
    competition documents) to the store's database and owner.
    """
    if competitions is None:
        competitions = Competitions(store.db, store.owner, store.lease_seconds)
    pipeline = Pipeline()
    metrics = Metrics()
    rounds = Rounds(files if files is not None else build_files(config), config.cache_dir, config.rules,
                    PreparedRound, late_file_seconds=config.late_file_seconds, idle_seconds=config.round_idle_seconds,
                    memory_bytes=config.round_memory_mb * 2 ** 20, metrics=metrics)
    supervisor = Supervisor(pipeline.stop, metrics)
    members = RoundMembers(store, pipeline.stop)
    board = Leaderboard(store, pipeline.stop, members=members, metrics=metrics,
                        reconcile_seconds=config.reconcile_interval, competitions=competitions)
    shared = dict(store=store, rounds=rounds, rules=config.rules, metrics=metrics, board=board, members=members,
                  provenance=Provenance.current(config.server_name))
    workers = {DISPATCH: Dispatcher(pipeline, **shared), CONCORDANCE: ConcordanceWorker(pipeline, **shared),
               ORIGINALITY: OriginalityWorker(pipeline, **shared)}
    supervisor.add("dispatcher", workers[DISPATCH].loop)
    supervisor.add("concordance", workers[CONCORDANCE].loop)
    for number in range(config.originality_threads):
        worker = workers[ORIGINALITY] if number == 0 else OriginalityWorker(pipeline, **shared)
        supervisor.add("originality-%d" % number, worker.loop)
    supervisor.add("members", members.loop)
    supervisor.add("leaderboard", board.loop)
    supervisor.add("leases", LeaseKeeper(pipeline, store, config.lease_seconds / 3).loop)
    notifier = notify.attach(config, store, competitions, metrics, supervisor, pipeline.stop)
    judges = (Dispatcher(pipeline, **shared), ConcordanceWorker(pipeline, **shared), OriginalityWorker(pipeline, **shared))
    rescorer = Rescorer(pipeline, store, competitions, config.rules, config.lease_seconds / 3, judges=judges,
                        owner_prefix=owner_prefix(store.owner), alive=alive)
    return Parts(pipeline, metrics, supervisor, board, members, rounds, rescorer, workers, notifier, competitions)


def build_recovery(config, store, parts, alive=process_alive):
    """The recovery sweep of this process, taking back the leases of its own dead predecessors."""
    return Recovery(parts.pipeline, store, config.recovery_interval, parts.metrics, parts.board,
                    owner_prefix=owner_prefix(store.owner), alive=alive, rounds=parts.rounds)


def build_app(config, store, parts):
    """The Flask app over this process's pipeline."""
    return create_app(store, parts.pipeline, config, parts.supervisor, parts.metrics, rounds=parts.rounds,
                      rescorer=parts.rescorer)


def build_service(config, database):
    """Build and start everything inside the serving process; returns (app, stop).

    ``database`` is a callable returning the pymongo Database to use; it is
    called here, after gunicorn's fork, because a client must not cross one.
    """
    store = Store(database(), owner=owner_name(config.port), lease_seconds=config.lease_seconds)
    parts = build_pipeline(config, store)
    parts.supervisor.add("recovery", build_recovery(config, store, parts).loop)
    parts.supervisor.add("rescore", parts.rescorer.loop)
    parts.metrics.watch(parts.pipeline, parts.supervisor, functools.partial(database_status, store))
    try:
        store.ensure_indexes()
        if parts.notifier is not None:
            parts.notifier.ensure_indexes()
    except pymongo.errors.PyMongoError as exc:  # serve anyway: indexes only make queries faster
        log.warning("could not create the database indexes (%s); recovery and originality queries will be slow "
                    "until they exist", misconfiguration(exc) or "%s: %s" % (type(exc).__name__, preflight.short(exc)))
    parts.supervisor.start()
    log.info("serving on %s:%d (%s mode), %d originality threads",
             config.host, config.port, "local" if config.local else "production", config.originality_threads)
    return build_app(config, store, parts), functools.partial(stop, parts.supervisor, store, parts.pipeline, config,
                                                              parts.rescorer)


def stop(supervisor, store, pipeline, config, rescorer=None):
    """Stop the threads, then hand back the leases of unfinished work so another server takes it at once.

    Returns the names of threads still busy at the deadline.
    """
    busy = supervisor.stop(config.stop_timeout)
    hand_back(store, pipeline, config, rescorer)
    return busy


def hand_back(store, pipeline, config, rescorer=None):
    """Release this process's leases and say how many: what a stop leaves to recovery, in one line."""
    tokens = pipeline.tokens()
    runs = len(rescorer.driving) if rescorer is not None else 0
    try:
        released = store.release(tokens)
        if rescorer is not None:
            rescorer.release()
    except pymongo.errors.PyMongoError as exc:
        log.warning("could not hand back the leases of %d job%s and %d re-score run%s (%s); they expire in %.0fs",
                    len(tokens), plural(tokens), runs, plural(runs), type(exc).__name__, config.lease_seconds)
        return
    log.info("handed back to recovery: %d submission lease%s and %d re-score run%s%s", released, plural(released),
             runs, plural(runs), "; another server, or the next start, takes them at once" if released or runs else "")


def plural(count):
    """'s' unless ``count`` (a number or a collection) is one."""
    return "" if (count if isinstance(count, int) else len(count)) == 1 else "s"


def run_rescore(parts, store, config, competition_id, only):
    """Drive a re-score here with this process's pipeline threads; everything handed back when it ends.

    Returns :func:`queues.rescore.follow`'s result (None when stopped first).
    """
    parts.supervisor.start()
    try:
        return rescore.follow(parts.rescorer, competition_id, only)
    finally:
        parts.supervisor.stop(config.stop_timeout)
        parts.board.flush(parts.board.take(0))
        hand_back(store, parts.pipeline, config, parts.rescorer)


def seed_demo(config, mongo_url):
    """Load demo round 41 into local mode's database and folder on first start."""
    client = client_for(config, mongo_url)
    try:
        if demo.seed(client[config.mongo_db_name], LocalFiles(config.local_dir)):
            log.info("demo round %d loaded; try: curl -X POST -H 'Content-Type: application/json' "
                     "-d '{\"submission_id\": \"%s\", \"api_key\": \"...\"}' http://%s:%d/ (the development "
                     "key is in README.md)",
                     demo.DEMO_ROUND, demo.DEMO_SUBMISSION, config.host, config.port)
    except pymongo.errors.PyMongoError as exc:
        log.warning("could not load the demo round (%s: %s); it is loaded at the next start",
                    type(exc).__name__, preflight.short(exc))
    finally:
        client.close()
