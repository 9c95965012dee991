"""Each round's data, loaded once and kept: tournament rows, clusters, prepared submissions.

Kept, but not for ever and not whatever the cost: a round idle for
``idle_seconds`` is dropped by :meth:`Rounds.evict_idle` (the recovery
sweep calls it), and beyond ``memory_bytes`` the least recently used
rounds nobody holds are dropped; either is loaded again on its next use.
A worker holds the round it judges with (:meth:`Rounds.hold`), so the
budget never takes it away mid-check; a :class:`Round` that is dropped
anyway (its dataset was replaced) stays whole for whoever still has it.

A replaced dataset is noticed by its version: a loaded round compares
its version with storage's at most every ``version_check_seconds``
(default 5 s: one S3 HEAD per round per 5 s however many submissions
arrive, where a HEAD per job would cost three per submission and add
their latency to every stage), and on a change the round is rebuilt
from the new rows: tournament rows, clusters and prepared index.

The clustering depends only on the round's dataset, so its labels are
computed once and saved on disk next to the dataset cache, named by the
dataset's version and the clustering settings: a restart reads them
back instead of fitting K-Means again. A failure to load is never
cached; the next submission of the round tries again.
"""
import contextlib
import datetime
import hashlib
import logging
import os
import threading
import time
import zipfile

import numpy as np
import pandas as pd

from queues.errors import PERMANENT, DatasetChanged, LateFile, MissingFile, reason
from queues.files import partial_name
from queues.store import utcnow
from scoring import concordance, dataset
from scoring.dataset import DatasetError
from scoring.prepared import ExactValuesChanged

log = logging.getLogger(__name__)

#: Seconds after its ``created`` that another user's missing file may still arrive (LATE_FILE_SECONDS).
LATE_FILE_SECONDS = 300.0
#: A round unused this long is dropped from memory (ROUND_IDLE_SECONDS).
ROUND_IDLE_SECONDS = 3600.0
#: Memory for loaded rounds (ROUND_MEMORY_MB); a 1,000-user round of 45,000 rows takes about 200 MB.
ROUND_MEMORY_MB = 1024
#: A loaded round's dataset version is compared with storage's at most this often.
VERSION_CHECK_SECONDS = 5.0


class OtherFileFailed(Exception):
    """Re-reading another submission's exact values failed for good; ``key`` says whose.

    Not a permanent error of the candidate: :meth:`Rounds.compare` leaves
    that submission out and checks again without it.
    """

    def __init__(self, key, why):
        super().__init__(why)
        self.key = key
        self.reason = why


class Round:
    """One round: its tournament rows, cluster groups and prepared submissions, of one dataset version."""

    def __init__(self, competition_id, version, tournament, index):
        self.competition_id = competition_id
        self.version = version
        self.tournament = tournament
        self.index = index
        self.groups = None
        self.sources = {}  # submission id -> (username, filename), for exact re-reads
        self.lock = threading.Lock()
        self.holders = 0       # workers judging with it right now (under Rounds._lock)
        self.last_used = 0.0   # Rounds.clock() of its last use
        self.checked = 0.0     # Rounds.clock() when its version was last compared with storage
        self.table_bytes = tournament_bytes(tournament)

    @property
    def nbytes(self):
        """Bytes held: tournament rows, cluster groups and the prepared index."""
        groups = self.groups or {}
        held = sum(rows.nbytes for by_type in groups.values() for rows in by_type.values())
        return self.table_bytes + held + getattr(self.index, "nbytes", 0)


def tournament_bytes(tournament):
    """Memory of the tournament rows, strings included (measured once, at load)."""
    strings = sum(int(pd.Series(column).memory_usage(deep=True, index=False))
                  for column in (tournament.data_types, tournament.eras))
    return (int(tournament.ids.memory_usage(deep=True)) + strings + tournament.targets.nbytes
            + tournament.features.nbytes)


def read_zip_member(path, member, reader):
    """Apply ``reader`` to one CSV inside the dataset zip."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
            return reader(handle)
    except KeyError:
        raise DatasetError("the round's dataset zip has no %s" % member) from None
    except zipfile.BadZipFile:
        raise DatasetError("the round's dataset is not a valid zip file") from None


class Rounds:
    """Loads rounds on first use through ``files`` and keeps them by competition id, within bounds.

    ``clock`` (monotonic seconds) times idleness and version checks;
    ``now`` (naive UTC) the wait for late files; ``metrics`` gets each
    eviction and reads the rounds' memory at every scrape.
    """

    def __init__(self, files, cache_dir, rules, index_factory, late_file_seconds=LATE_FILE_SECONDS, now=utcnow,
                 idle_seconds=ROUND_IDLE_SECONDS, memory_bytes=ROUND_MEMORY_MB * 2 ** 20, clock=time.monotonic,
                 version_check_seconds=VERSION_CHECK_SECONDS, metrics=None):
        self.files = files
        self.cache_dir = cache_dir
        self.rules = rules
        self.index_factory = index_factory
        self.late_file_seconds = late_file_seconds
        self.now = now  # naive UTC, like the documents' ``created``
        self.idle_seconds = idle_seconds
        self.memory_bytes = memory_bytes
        self.clock = clock
        self.version_check_seconds = version_check_seconds
        self.metrics = metrics
        self._rounds = {}
        self._lock = threading.Lock()
        self._loading = {}
        if metrics is not None:
            metrics.watch_rounds(self.memory)

    def get(self, competition_id):
        """The current :class:`Round`: loaded once (even across threads), rebuilt when its dataset was replaced."""
        return self._get(int(competition_id), 0)

    @contextlib.contextmanager
    def hold(self, competition_id):
        """The current round, kept from the memory budget's evictions while the ``with`` block judges with it."""
        rnd = self._get(int(competition_id), 1)
        try:
            yield rnd
        finally:
            with self._lock:
                rnd.holders -= 1
                rnd.last_used = self.clock()

    def _get(self, competition_id, hold):
        with self._lock:
            found = self._rounds.get(competition_id)
            if found is not None and self.clock() - found.checked < self.version_check_seconds:
                found.holders += hold
                found.last_used = self.clock()
                return found
            gate = self._loading.setdefault(competition_id, threading.Lock())
        with gate:  # one thread checks or loads a round; the others wait for its answer
            found = self._rounds.get(competition_id)
            if found is not None and self.clock() - found.checked >= self.version_check_seconds:
                found = self._still_current(found)
            if found is None:
                found = self._load(competition_id)
            with self._lock:
                self._rounds[competition_id] = found
                found.holders += hold
                found.last_used = self.clock()
        self.fit_budget(keep=found)
        return found

    def _still_current(self, rnd):
        """``rnd`` when storage still has its dataset version, else None (and it is dropped)."""
        version = self.files.dataset_version(rnd.competition_id)
        if version == rnd.version:
            rnd.checked = self.clock()
            return rnd
        log.info("round %s: the dataset was replaced (version %s, was %s); rebuilding the round's data",
                 rnd.competition_id, version, rnd.version)
        self._drop(rnd, "replaced")
        return None

    def _load(self, competition_id):
        started = time.monotonic()
        path, version = self.files.dataset(competition_id)
        tournament = read_zip_member(path, dataset.TOURNAMENT_FILE, dataset.read_tournament)
        rnd = Round(competition_id, version, tournament, None)
        rnd.index = self.index_factory(fetch_exact=lambda key: self._exact(rnd, key))
        rnd.checked = self.clock()
        log.info("round %s: loaded %d tournament rows in %.2fs", competition_id, len(tournament.ids), time.monotonic() - started)
        return rnd

    # -- memory -----------------------------------------------------------------
    def memory(self):
        """``{competition_id: bytes}`` of the rounds in memory (what /metrics shows)."""
        with self._lock:
            loaded = list(self._rounds.items())
        return {competition_id: rnd.nbytes for competition_id, rnd in loaded}

    def _drop(self, rnd, why, unless_held=False):
        """Forget ``rnd`` if it is still the loaded one (and, with ``unless_held``, nobody holds it)."""
        with self._lock:
            if self._rounds.get(rnd.competition_id) is not rnd or (unless_held and rnd.holders):
                return False
            del self._rounds[rnd.competition_id]
        if self.metrics is not None:
            self.metrics.round_evicted(why)
        return True

    def evict_idle(self):
        """Drop every round nobody holds that was last used ``idle_seconds`` ago or more; returns their ids."""
        now = self.clock()
        with self._lock:
            idle = [rnd for rnd in self._rounds.values() if not rnd.holders and now - rnd.last_used >= self.idle_seconds]
        dropped = [rnd.competition_id for rnd in idle if self._drop(rnd, "idle", unless_held=True)]
        for competition_id in dropped:
            log.info("round %s: dropped from memory after %.0fs unused", competition_id, self.idle_seconds)
        return dropped

    def fit_budget(self, keep=None):
        """Drop least recently used rounds nobody holds (never ``keep``) until memory is within budget."""
        sizes = self.memory()
        total = sum(sizes.values())
        if total <= self.memory_bytes:
            return
        with self._lock:
            by_age = sorted(self._rounds.values(), key=lambda rnd: rnd.last_used)
        for rnd in by_age:
            if total <= self.memory_bytes:
                return
            if rnd is not keep and self._drop(rnd, "memory", unless_held=True):
                total -= sizes.get(rnd.competition_id, 0)
                log.info("round %s: dropped from memory (least recently used; rounds hold %d MB, the budget is %d MB)",
                         rnd.competition_id, (total + sizes.get(rnd.competition_id, 0)) // 2 ** 20,
                         self.memory_bytes // 2 ** 20)
        if total > self.memory_bytes:
            log.warning("rounds in use hold %d MB, over the %d MB budget (ROUND_MEMORY_MB)",
                        total // 2 ** 20, self.memory_bytes // 2 ** 20)

    # -- clusters -------------------------------------------------------------
    def _cluster_path(self, rnd):
        settings = "%d-%d" % (self.rules.concordance_clusters, self.rules.concordance_seed)
        digest = hashlib.sha1(("%s|%s" % (rnd.version, settings)).encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, "clusters", "%d-%s.npy" % (rnd.competition_id, digest))

    def groups(self, rnd):
        """Cluster groups of the round: from memory, else disk, else computed and saved."""
        if rnd.groups is not None:
            return rnd.groups
        with rnd.lock:
            if rnd.groups is None:
                labels = self._labels(rnd)
                rnd.groups = concordance.cluster_groups(labels, rnd.tournament.data_types)
        self.fit_budget(keep=rnd)
        return rnd.groups

    def _labels(self, rnd):
        path = self._cluster_path(rnd)
        try:
            labels = np.load(path)
            if len(labels) == len(rnd.tournament.ids):
                log.info("round %s: cluster labels read from %s", rnd.competition_id, path)
                return labels
        except (OSError, ValueError, EOFError):  # missing, truncated or foreign: recompute
            pass
        started = time.monotonic()
        zip_path, version = self.files.dataset(rnd.competition_id)
        if version != rnd.version:
            self._drop(rnd, "replaced")  # the retry loads the new data
            raise DatasetChanged("round %s's dataset changed while it was being judged" % rnd.competition_id)
        training = read_zip_member(zip_path, dataset.TRAINING_FILE, dataset.read_training_features)
        if training.shape[1] != rnd.tournament.features.shape[1]:
            raise DatasetError("training and tournament data have different feature columns")
        labels = concordance.fit_clusters(training, rnd.tournament.features, self.rules)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = partial_name(path, ".part.npy")
        try:
            np.save(partial, labels)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        log.info("round %s: clustered %d training + %d tournament rows in %.2fs",
                 rnd.competition_id, len(training), len(labels), time.monotonic() - started)
        return labels

    # -- predictions ----------------------------------------------------------
    def predictions(self, rnd, username, filename):
        """A submission's predictions in the round's row order (float64)."""
        raw = self.files.submission(username, filename)
        return rnd.tournament.reader.parse(raw)

    def prepare(self, rnd, submission_id, username, filename, values=None):
        """Make sure a submission is in the round's originality index."""
        rnd.sources[submission_id] = (username, filename)
        if submission_id not in rnd.index:
            if values is None:
                values = self.predictions(rnd, username, filename)
            rnd.index.add(submission_id, values)
            self.fit_budget(keep=rnd)

    def _exact(self, rnd, submission_id):
        """``fetch_exact`` of the round's index: another submission's values, read again.

        A file deleted or broken since it was prepared is that submission's
        problem, never the candidate's: the failure names it, for
        :meth:`compare` to leave it out.
        """
        username, filename = rnd.sources[submission_id]
        try:
            return self.predictions(rnd, username, filename)
        except PERMANENT as exc:
            raise OtherFileFailed(submission_id, reason(exc)) from exc

    # -- originality ----------------------------------------------------------
    def compare(self, rnd, candidate, values, others, rules):
        """``(evidence, left_out)``: originality of ``values`` against ``others``, and who was left out.

        Never on partial data: another user's file that is missing but may
        still arrive (see :meth:`_late`) raises :class:`LateFile`, so the
        check is judged later rather than without it. A broken file, or one
        still missing after ``late_file_seconds``, is left out and recorded
        with its reason. A file that fails when its exact values are read
        again (deleted or changed since it was prepared) is dropped from the
        index and left out, and the check runs again without it, so the
        verdict is exactly the plain rule's over the submissions that counted.
        """
        keys, left_out, late = [], [], []
        now = self.now()
        for other in others:
            try:
                if not other.get("filename"):
                    raise MissingFile("the submission document has no filename")
                self.prepare(rnd, other["submission_id"], other["username"], other["filename"])
                keys.append(other["submission_id"])
            except MissingFile as exc:
                if other.get("filename") and self._late(other, now):
                    late.append(other)
                else:
                    left_out.append(self._left_out(candidate, other, reason(exc)))
            except PERMANENT as exc:
                left_out.append(self._left_out(candidate, other, reason(exc)))
        if late:
            raise LateFile("%d earlier submission(s) not in storage yet, waiting up to %.0fs after each was "
                           "submitted: %s" % (len(late), self.late_file_seconds,
                                              ", ".join("%s's %s" % (o["username"], o["submission_id"]) for o in late)))
        by_id = {other["submission_id"]: other for other in others}
        while True:
            try:
                # the candidate was added at dispatch: its sketch is reused when it is of these values
                return rnd.index.explain(values, keys, rules, key=candidate), left_out
            except (OtherFileFailed, ExactValuesChanged) as exc:
                why = exc.reason if isinstance(exc, OtherFileFailed) else "the file changed after it was first read"
                rnd.index.discard(exc.key)
                rnd.sources.pop(exc.key, None)
                keys.remove(exc.key)
                left_out.append(self._left_out(candidate, by_id[exc.key], why))

    def _late(self, other, now):
        """Whether another user's missing file may still arrive.

        Counted from the other submission's ``created`` (the backend's time
        of the upload), not from when this server first missed the file: every
        server, and a restarted one, then agrees on when the wait is over, and
        nothing needs remembering. A clock difference between the backend and
        this server shifts the wait by that much.
        """
        created = other.get("created")
        if not isinstance(created, datetime.datetime):  # no time to count from: the wait cannot end
            return False
        return (now - created.replace(tzinfo=None)).total_seconds() < self.late_file_seconds

    @staticmethod
    def _left_out(candidate, other, why):
        log.warning("%s: skipping %s's submission %s in originality: %s",
                    candidate, other["username"], other["submission_id"], why)
        return {"submission_id": other["submission_id"], "username": other["username"], "reason": why}
