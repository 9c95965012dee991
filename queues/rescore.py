"""Re-scoring a round: every verdict judged again by the same pipeline, the old one kept, the changes listed.

A run is one more set of transitions of the state machine in
:mod:`queues.store`, each one conditional write:

- *open*: the competition document's ``rescore`` field is set, only
  where it is absent, so a round never has two runs at once;
- *re-queue*, per submission of the run's scope, oldest first:
  DONE/FAILED -> QUEUED (:meth:`Store.rescore`), the judgement it
  replaces kept in the submission's ``history``; then the usual
  dispatched -> judged (or failed) transitions of the pipeline;
- *close*, once every submission of the scope is re-queued and settled:
  the ``rescore`` field is removed and a summary pushed to ``rescores``.

Every step is conditioned so that repeating it does nothing, and the run
carries a lease (``rescore.lease``) saying which process drives it. So
a run stopped at any instant is finished by whoever drives it next: the
process that opened it, a restart of it, ``./server rescore`` run again,
or any server's rescorer once the lease has expired. Re-queued
submissions whose process died are claimed back like any other.

The differences are never stored separately: they are re-derived from
the documents, comparing each submission's judgement before the run (its
history entry for the run) with the one after it (the next history
entry, or the document as it is). A dry run judges in memory with the
same workers' code and writes nothing.
"""
import dataclasses
import datetime
import json
import logging
import threading
import time

from bson import ObjectId

from queues.errors import PERMANENT, LateFile, reason
from queues.pipeline import DISPATCH, Job
from queues.recovery import process_alive
from queues.store import DONE, FAILED, Claim, utcnow
from queues.workers import require_judgeable
from scoring.rules import Rules

log = logging.getLogger(__name__)

#: At most this many of a run's submissions waiting in this process's dispatch queue.
RUN_BATCH = 200
#: How often a process driving a run looks whether the run can close.
DRIVE_SECONDS = 1.0
#: How often the loop looks at the stop flag and for a request while it waits.
POLL_SECONDS = 0.2


class NoSuchRound(LookupError):
    """The round has no submissions, or a listed id is not one of its submissions."""


def scope(request):
    """The filter naming a run's submissions (from its ``request``): those listed, else the round's up to the request."""
    found = {"competition_id": int(request["competition_id"])}
    if request.get("only"):
        found["_id"] = {"$in": [ObjectId(sid) for sid in request["only"]]}
    else:  # later submissions are judged under the rules in force anyway
        found["created"] = {"$lt": request["requested_at"]}
    return found


def judgement(fields, processing=None):
    """What a verdict is, for comparing two of them: state, consistency, both checks, the error."""
    processing = processing if processing is not None else fields
    return {"state": processing.get("state"), "consistency": fields.get("consistency"),
            "concordant": (fields.get("concordant") or {}).get("value"),
            "original": (fields.get("original") or {}).get("value"),
            "error": processing.get("error")}


def before_after(doc, run_id):
    """The submission's judgement replaced by run ``run_id`` and the one that followed it."""
    history = doc.get("history") or []
    for position, entry in enumerate(history):
        if entry.get("run") == run_id:
            later = history[position + 1] if position + 1 < len(history) else None
            if later is None:
                return entry, judgement(doc, doc.get("processing") or {}), doc
            return entry, judgement(later), later
    raise LookupError("submission %s was not re-queued by run %s" % (doc["_id"], run_id))


def change(doc, before, after, before_fields, after_fields):
    """One line of a diff: who, the two judgements and the evidence and rules behind each."""
    return {"submission_id": str(doc["_id"]), "username": doc.get("username"), "created": doc.get("created"),
            "before": before, "after": after,
            "evidence": {"before": before_fields.get("evidence"), "after": after_fields.get("evidence")},
            "rules": {"before": (before_fields.get("provenance") or {}).get("rules"),
                      "after": (after_fields.get("provenance") or {}).get("rules")}}


def differences(docs, run_id):
    """Every submission whose judgement run ``run_id`` changed, oldest first."""
    found = []
    for doc in sorted(docs, key=lambda d: (d.get("created") is None, d.get("created"), d["_id"])):
        kept, after, after_fields = before_after(doc, run_id)
        before = judgement(kept)
        if before != after:
            found.append(change(doc, before, after, kept, after_fields))
    return found


def rules_used(docs, run_id):
    """Every set of rules the run's judgements were made under, once each, in the order first met.

    The process that opened a run records its rules; others that judged in
    it (a command that joined it, a server that took it over) may have had
    other ``RULE_*`` values, and each verdict records its own.
    """
    found = []
    for doc in sorted(docs, key=lambda d: d["_id"]):
        _, _, after_fields = before_after(doc, run_id)
        rules = (after_fields.get("provenance") or {}).get("rules")
        if rules is not None and rules not in found:
            found.append(rules)
    return found


def word(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "%.4g" % value
    return "none" if value is None else str(value)


def describe(entry):
    """One line a person reads: ``<id> <user>: original true -> false; concordant true``."""
    before, after = entry["before"], entry["after"]
    parts = []
    for field in ("state", "concordant", "original", "consistency", "error"):
        if before.get(field) != after.get(field):
            parts.append("%s %s -> %s" % (field, word(before.get(field)), word(after.get(field))))
    return "%s %s: %s" % (entry["submission_id"], entry.get("username"), "; ".join(parts))


class Rescorer:
    """Opens runs, drives the open ones through the pipeline, closes them; and dry runs.

    ``judges`` is ``(dispatcher, concordance, originality)`` workers whose
    measuring code a dry run calls directly; ``owner_prefix`` names this
    server's earlier processes, whose runs and leases a restart takes back
    at once.
    """

    def __init__(self, pipeline, store, competitions, rules, period, judges=None, owner_prefix=None,
                 alive=process_alive):
        self.pipeline = pipeline
        self.store = store
        self.competitions = competitions
        self.rules = rules
        self.period = period
        self.judges = judges
        self.owner_prefix = owner_prefix
        self.alive = alive
        self.wake = threading.Event()
        self.orphans = None
        self.driving = set()  # rounds whose open run this process drove at its last pass

    # -- opening ----------------------------------------------------------------
    def verify_scope(self, competition_id, only):
        """NoSuchRound unless the round has submissions and every listed id is one of them."""
        if not self.store.round_exists(competition_id):
            raise NoSuchRound("round %d has no submissions" % competition_id)
        if only:
            found = self.store.members_among(competition_id, only)
            strangers = [sid for sid in only if sid not in found]
            if strangers:
                raise NoSuchRound("not submissions of round %d: %s" % (competition_id, ", ".join(strangers)))

    def request(self, competition_id, only=None):
        """Open a run of the round; ``(its request, True)``, or ``(the open run's, False)`` when one is open."""
        self.verify_scope(competition_id, only)
        request = {"run": ObjectId(), "competition_id": int(competition_id), "only": sorted(set(only)) if only else None,
               "requested_at": utcnow(), "requested_by": self.store.owner,
               "rules": dataclasses.asdict(self.rules)}
        if self.competitions.start_run(competition_id, request):
            log.info("round %s: re-score %s opened (%s)", competition_id, request["run"],
                     "%d listed submissions" % len(request["only"]) if request["only"] else "every submission")
            self.wake.set()
            return request, True
        current, _ = self.competitions.runs_of(competition_id)
        return current, False

    # -- driving ----------------------------------------------------------------
    def dead_owners(self):
        """Earlier processes of this server that held submissions or a run; found once, like the sweep's."""
        if self.orphans is None:
            dead = set()
            if self.owner_prefix:
                dead.update(self.store.orphaned_owners(self.owner_prefix, self.alive))
                for request in self.competitions.open_runs().values():
                    owner = (request.get("lease") or {}).get("owner")
                    if self.store.is_dead_self(owner, self.owner_prefix, self.alive):
                        dead.add(owner)
            self.orphans = sorted(dead)
        return self.orphans

    def step(self):
        """Drive every open run this process may drive; returns the ids of the runs closed."""
        closed = []
        owners = self.dead_owners()
        for competition_id, request in self.competitions.open_runs().items():
            if self.drive(competition_id, request, owners):
                closed.append(request["run"])
        return closed

    def room(self):
        return RUN_BATCH - self.pipeline.depth(DISPATCH)

    def drive(self, competition_id, request, owners=()):
        """One pass over a run: keep its lease, queue what is left, close it when all is settled."""
        run_id = request["run"]
        if not self.competitions.drive_run(competition_id, run_id, owners):
            self.driving.discard(competition_id)
            return False  # another live process drives it
        self.driving.add(competition_id)
        within = scope(request)
        if self.room() > 0:  # re-queued earlier by a process that is gone: claim them back
            for sid, owner in self.store.claimable(self.room(), owners, within={**within, "processing.rescore": run_id}):
                if not self.pipeline.anywhere(sid):
                    claim = self.store.claim(sid, owner=owner if owner in owners else None)
                    if claim is not None:
                        self.pipeline.put(DISPATCH, Job(sid, claim=claim))
        if self.room() > 0:
            for doc in self.store.rescore_candidates(within, run_id, self.room()):
                sid = str(doc["_id"])
                if self.pipeline.anywhere(sid):
                    continue
                token = ObjectId()
                if self.store.rescore(doc, run_id, token):
                    self.pipeline.put(DISPATCH, Job(sid, token=token))
                    log.info("%s: re-queued for re-score %s of round %s", sid, run_id, competition_id)
        if self.store.rescore_left(within, run_id):
            return False
        return self.close(competition_id, request)

    def close(self, competition_id, request):
        """Close the run with its summary; True when this call closed it."""
        run_id = request["run"]
        docs = self.store.rescored(competition_id, run_id)
        changed = differences(docs, run_id)
        summary = {key: request.get(key) for key in ("run", "only", "requested_at", "requested_by", "rules")}
        summary.update(closed_at=utcnow(), closed_by=self.store.owner, submissions=len(docs), changed=len(changed),
                       rules_used=rules_used(docs, run_id))
        self.driving.discard(competition_id)
        if not self.competitions.close_run(competition_id, run_id, summary):
            return False
        log.info("round %s: re-score %s finished: %d submissions judged again, %d changed",
                 competition_id, run_id, len(docs), len(changed))
        for entry in changed:
            log.info("re-score %s changed %s", run_id, describe(entry))
        return True

    def release(self):
        """Stopping: let another process drive this one's runs at once instead of when the lease expires."""
        if self.driving:
            self.competitions.release_runs()
            self.driving.clear()

    def loop(self):
        """Drive open runs every ``period`` seconds (at once when woken by a request) until stopped."""
        stop = self.pipeline.stop
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the database may be away: the next pass retries
                log.warning("re-score pass failed (%s: %s); next try in %.0fs", type(exc).__name__, exc, self.period)
            # While this process drives a run, look again soon: its last submissions settle any moment.
            deadline = time.monotonic() + (min(self.period, DRIVE_SECONDS) if self.driving else self.period)
            while not (stop.is_set() or self.wake.wait(POLL_SECONDS)) and time.monotonic() < deadline:
                pass  # a request wakes the loop at once; a stop ends it within POLL_SECONDS
            self.wake.clear()

    # -- reading ------------------------------------------------------------------
    def status(self, competition_id, run_id=None):
        """The open run with what is left of it, or a finished one (the last, or ``run_id``) with its changes."""
        current, finished = self.competitions.runs_of(competition_id)
        if current is not None and run_id in (None, current["run"]):
            left = self.store.rescore_left(scope(current), current["run"])
            return dict(current, status="running", left=left)
        chosen = [summary for summary in finished if run_id in (None, summary.get("run"))]
        if not chosen:
            return None
        summary = chosen[-1]
        changes = differences(self.store.rescored(competition_id, summary["run"]), summary["run"])
        return dict(summary, competition_id=competition_id, status="finished", changes=changes)

    # -- dry run ------------------------------------------------------------------
    def dry_run(self, competition_id, only=None):
        """What a run would change, judged in memory now; writes nothing. ``{submissions, changes}``."""
        self.verify_scope(competition_id, only)
        request = {"competition_id": competition_id, "only": only, "requested_at": utcnow()}
        docs = self.store.settled(scope(request))
        changes = []
        for doc in docs:
            before = judgement(doc, doc.get("processing") or {})
            after, evidence = self.rejudge(doc)
            if before != after:
                changes.append(change(doc, before, after, doc, {"evidence": evidence,
                                                                "provenance": {"rules": dataclasses.asdict(self.rules)}}))
        return {"competition_id": competition_id, "dry_run": True, "submissions": len(docs), "changed": len(changes),
                "rules": dataclasses.asdict(self.rules), "changes": changes}

    def rejudge(self, doc):
        """Judge one submission again in memory with the workers' own code: ``(judgement, evidence)``.

        A file of another user that may still arrive cannot be judged now
        either way; the dry run says so for that submission instead.
        """
        dispatcher, concordance, originality = self.judges
        sid = str(doc["_id"])
        job = Job(sid, claim=Claim(doc, None))
        try:
            require_judgeable(doc, sid)
            with dispatcher.rounds.hold(doc["competition_id"]) as rnd:
                score, _, fields = dispatcher.measure(job, rnd)
                concordant, concordance_found = concordance.judge(job, doc, rnd)
                original, originality_found = originality.judge(job, doc, rnd)
        except PERMANENT as exc:
            return {"state": FAILED, "consistency": doc.get("consistency"), "concordant": None, "original": None,
                    "error": reason(exc)}, None
        except LateFile as exc:
            return {"state": "not judged", "consistency": None, "concordant": None, "original": None,
                    "error": "%s; a real run waits for it" % reason(exc)}, None
        evidence = {"consistency": fields["evidence.consistency"], "concordance": concordance_found,
                    "originality": originality_found}
        return {"state": DONE, "consistency": score, "concordant": bool(concordant),
                "original": bool(original), "error": None}, evidence


class Busy(RuntimeError):
    """Another run of the round is open, for other submissions than those asked for."""


def follow(rescorer, competition_id, only=None, period=1.0):
    """Open a run (or join the open one of the same scope) and drive it here until it closes.

    Returns the finished run with its changes, or None when the pipeline's
    stop flag was set first: the run stays open and whoever drives it next
    finishes it.
    """
    request, opened = rescorer.request(competition_id, only)
    wanted = sorted(set(only)) if only else None
    if not opened and request.get("only") != wanted:  # joining a run of another scope would report its changes as ours
        raise Busy("round %d is being re-scored already for %s (run %s, requested at %s by %s); wait for it to "
                   "finish, then ask again" % (competition_id, "%d listed submissions" % len(request["only"])
                                              if request.get("only") else "every submission", request["run"],
                                              request.get("requested_at"), request.get("requested_by")))
    run_id = request["run"]
    log.info("round %s: %s re-score %s", competition_id, "started" if opened else "joined the open", run_id)
    stop, said = rescorer.pipeline.stop, None
    while not stop.is_set():
        rescorer.step()
        current, _ = rescorer.competitions.runs_of(competition_id)
        if current is None or current["run"] != run_id:
            return rescorer.status(competition_id, run_id)
        left = rescorer.store.rescore_left(scope(current), run_id)
        if left != said:
            log.info("round %s: re-score %s has %d submissions left", competition_id, run_id, left)
            said = left
        stop.wait(period)
    return None


def rules_line(rules):
    """The rules a run used, naming only those that differ from the tournament's defaults."""
    defaults = dataclasses.asdict(Rules())
    changed = ["%s=%s (default %s)" % (name, value, defaults.get(name)) for name, value in sorted((rules or {}).items())
               if defaults.get(name) != value]
    return ", ".join(changed) if changed else "the defaults"


def json_value(value):
    """Dates as the HTTP API writes them (ISO 8601, UTC); ids as strings."""
    if isinstance(value, datetime.datetime):
        return value.isoformat() + "Z"
    return str(value)


def report(result, out, as_json=False):
    """Print a finished or dry run: a headline, the rules, one line per change (or JSON)."""
    if as_json:
        out.write(json.dumps(result, default=json_value, indent=1, sort_keys=True) + "\n")
        return
    what = ("dry run of a re-score of round %s (nothing written)" % result["competition_id"] if result.get("dry_run")
            else "re-score %s of round %s" % (result["run"], result.get("competition_id")))
    out.write("%s: %d submissions judged again, %d changed\n" % (what, result["submissions"], result["changed"]))
    used = result.get("rules_used") or [result.get("rules")]
    for number, rules in enumerate(used):
        out.write("%s: %s\n" % ("rules" if len(used) == 1 else "rules (%d of %d)" % (number + 1, len(used)),
                                  rules_line(rules)))
    for entry in result["changes"]:
        out.write("  %s\n" % describe(entry))
