"""Each round's data, loaded once and kept: tournament rows, clusters, prepared submissions.

The clustering depends only on the round's dataset, so its labels are
computed once and saved on disk next to the dataset cache, named by the
dataset's version and the clustering settings: a restart reads them
back instead of fitting K-Means again. A failure to load is never
cached; the next submission of the round tries again.
"""
import hashlib
import logging
import os
import threading
import time
import zipfile

import numpy as np

from queues.errors import PERMANENT, DatasetChanged, LateFile, MissingFile, reason
from queues.files import partial_name
from queues.store import utcnow
from scoring import concordance, dataset
from scoring.dataset import DatasetError
from scoring.prepared import ExactValuesChanged
from scoring.submission import parse_submission

log = logging.getLogger(__name__)

#: Seconds after its ``created`` that another user's missing file may still arrive (LATE_FILE_SECONDS).
LATE_FILE_SECONDS = 300.0


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
    """One round: its tournament rows, cluster groups and prepared submissions."""

    def __init__(self, competition_id, version, tournament, index):
        self.competition_id = competition_id
        self.version = version
        self.tournament = tournament
        self.index = index
        self.groups = None
        self.sources = {}  # submission id -> (username, filename), for exact re-reads
        self.lock = threading.Lock()


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
    """Loads rounds on first use through ``files`` and keeps them by competition id."""

    def __init__(self, files, cache_dir, rules, index_factory, late_file_seconds=LATE_FILE_SECONDS, now=utcnow):
        self.files = files
        self.cache_dir = cache_dir
        self.rules = rules
        self.index_factory = index_factory
        self.late_file_seconds = late_file_seconds
        self.now = now  # naive UTC, like the documents' ``created``
        self._rounds = {}
        self._lock = threading.Lock()
        self._loading = {}

    def get(self, competition_id):
        """The loaded :class:`Round`, loading it (once, even across threads) if needed."""
        competition_id = int(competition_id)
        found = self._rounds.get(competition_id)
        if found is not None:
            return found
        with self._lock:
            gate = self._loading.setdefault(competition_id, threading.Lock())
        with gate:
            found = self._rounds.get(competition_id)
            if found is None:
                found = self._load(competition_id)
                self._rounds[competition_id] = found
            return found

    def _load(self, competition_id):
        started = time.monotonic()
        path, version = self.files.dataset(competition_id)
        tournament = read_zip_member(path, dataset.TOURNAMENT_FILE, dataset.read_tournament)
        rnd = Round(competition_id, version, tournament, None)
        rnd.index = self.index_factory(fetch_exact=lambda key: self._exact(rnd, key))
        log.info("round %s: loaded %d tournament rows in %.2fs", competition_id, len(tournament.ids), time.monotonic() - started)
        return rnd

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
            self._rounds.pop(rnd.competition_id, None)  # the retry loads the new data
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
        return parse_submission(raw, rnd.tournament.ids)

    def prepare(self, rnd, submission_id, username, filename, values=None):
        """Make sure a submission is in the round's originality index."""
        rnd.sources[submission_id] = (username, filename)
        if submission_id not in rnd.index:
            if values is None:
                values = self.predictions(rnd, username, filename)
            rnd.index.add(submission_id, values)

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
                return rnd.index.explain(values, keys, rules), left_out
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
        if created is None:
            return False
        return (now - created).total_seconds() < self.late_file_seconds

    @staticmethod
    def _left_out(candidate, other, why):
        log.warning("%s: skipping %s's submission %s in originality: %s",
                    candidate, other["username"], other["submission_id"], why)
        return {"submission_id": other["submission_id"], "username": other["username"], "reason": why}
