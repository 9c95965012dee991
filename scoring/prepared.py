"""Originality against a whole round, with the plain rule's exact decisions, fast.

:func:`scoring.originality.is_original` sorts and correlates every other
submission again for every candidate. A round keeps its submissions
here instead, prepared once when they arrive, so that a check reads a
few hundred bytes per other submission and decides almost every pair
from those alone; only pairs of the same model family, near the KS
thresholds or copies read more.

Nothing is decided on an approximation. Every shortcut rests on a bound
proven in :mod:`scoring.bounds`; a pair the bounds cannot decide is
recomputed with the plain functions on exact float64 values. So
``PreparedRound.is_original(x, keys, rules)`` returns exactly what
``scoring.originality.is_original(x, [values of keys], rules)`` returns,
and ``explain`` exactly what ``scoring.evidence.originality_evidence``
returns. The order of work is in :mod:`scoring.checks`.

What is kept per submission, and why:

* ``x - mean(x)`` rounded to float32, padded with zeros to whole blocks
  of :data:`~scoring.bounds.BLOCK` values: for the block products of the
  few pairs the screen leaves open, and to rebuild exact values.
* its float64 mean and norm and a few error terms
  (:class:`~scoring.bounds.VectorBounds`), which turn a float32
  correlation into an interval that contains the plain float64 value.
* 32 float32 coefficients on the round basis
  (:class:`~scoring.basis.RoundBasis`) and three error terms: the screen
  that decides most pairs' correlation clause in 32 multiplications.
* grid counts ``C[j] = #{x <= G[j]}`` on a per-round grid ``G`` (4,096
  points), and a copy of 64 of them side by side with every other
  submission's: the coarse copy dismisses nearly every pair's KS
  clauses, the full one bounds the rest (:func:`~scoring.bounds.ks_interval`).
* whether the exact float64 values can be rebuilt from the float32 copy
  (true for files written with up to 6 or 7 decimals, the usual case);
  when not, ``fetch_exact(key)`` supplies them on the rare occasions they
  are needed.

The round basis is computed from a sample of the round once it holds
:data:`BASIS_FROM` submissions, and again each time it has grown
:data:`BASIS_GROWTH`-fold, by the ``add`` that crosses the mark and
outside the lock; checks use whichever basis was current when they
started.
"""
import collections
import dataclasses
import logging
import math
import threading

import numpy as np

from scoring.basis import BASIS_SAMPLE, BASIS_SIZE, RoundBasis
from scoring.bounds import (
    BLOCK,
    GRID_POINTS,
    VectorBounds,
    coarse_columns,
    extended_grid,
    grid_counts,
    make_grid,
    vector_bounds,
)
from scoring.checks import Candidate, Check, ExactValuesChanged, Explanation, Snapshot, recover, scratch
from scoring.errors import DataError
from scoring.evidence import CLOSEST, OFFENDER_CAP, originality_evidence
from scoring.originality import is_constant
from scoring.rules import Rules

log = logging.getLogger(__name__)

__all__ = ["PreparedRound", "ExactValuesChanged"]

#: Submissions per storage segment: growth allocates one segment and
#: copies nothing; at most one segment is partly empty. A segment is
#: (rows, blocks, BLOCK), so one submission's copy is contiguous for the
#: block products of a single pair.
SEGMENT_ROWS = 32
#: Decimal scales tried for rebuilding exact values from the float32 copy.
RECOVERY_SCALES = (1e6, 1e7)
#: The first round basis is built once this many submissions are in; a
#: smaller round multiplies every pair, which costs less than the basis.
BASIS_FROM = 64
#: A new basis is built each time the round has grown this many times
#: since the last: re-projecting every submission then costs about one
#: projection per added submission, amortised.
BASIS_GROWTH = 4

#: The sorted values of this many most recently added submissions are
#: kept: a submission is usually checked soon after it is added, and its
#: check then need not sort it again.
RECENT_SORTED = 8

#: Per-slot arrays: name, dtype. ``written`` counts writes to the slot,
#: for a basis rebuild to see which projections it computed are stale.
_META_FIELDS = (
    ("mean", np.float64), ("norm", np.float64), ("angle", np.float64), ("scale", np.float64),
    ("floor", np.float64), ("constant", np.bool_), ("recovery", np.float64), ("written", np.int64),
    ("rho", np.float64), ("delta", np.float64), ("size", np.float64),
)


@dataclasses.dataclass
class _Vector:
    """One vector prepared against a round's grid."""

    blocks32: np.ndarray   # (blocks, BLOCK) float32, centred, zero padded
    mean: float
    norm: float
    constant: bool
    bounds: object         # scoring.bounds.VectorBounds
    counts: np.ndarray     # extended grid counts, int64, length g + 2


def prepare(values, grid, blocks, padded):
    """Centre, round and sketch one float64 vector; its float32 copy goes into ``padded``.

    Temporaries of n values live in per-thread buffers (see
    :func:`scoring.checks.scratch`).
    """
    mean = values.mean()
    centered = np.subtract(values, mean, out=scratch("centered", values.size))
    norm = float(np.sqrt(np.einsum("i,i->", centered, centered)))  # numpy's loop: no BLAS thread wake-up
    padded[values.size:] = 0.0
    with np.errstate(over="ignore"):  # beyond float32: vector_bounds gives such vectors no bound
        padded[: values.size] = centered
    ordered = scratch("ordered", values.size)
    ordered[:] = values
    ordered.sort()
    return _Vector(
        blocks32=padded.reshape(blocks, BLOCK),
        mean=float(mean),
        norm=norm,
        constant=is_constant(values),
        bounds=vector_bounds(values, norm),
        counts=grid_counts(ordered, grid),
    )


class _Segment:
    """Storage for SEGMENT_ROWS submissions: float32 copies and full grid counts,
    the counts in the narrowest unsigned type that fits n."""

    __slots__ = ("data", "counts")

    def __init__(self, blocks, grid_size, count_dtype):
        self.data = np.zeros((SEGMENT_ROWS, blocks, BLOCK), dtype=np.float32)
        self.counts = np.zeros((SEGMENT_ROWS, grid_size), dtype=count_dtype)

    @property
    def nbytes(self):
        return self.data.nbytes + self.counts.nbytes


class PreparedRound:
    """A round's submissions, prepared for exact and fast originality checks.

    ``fetch_exact(key)`` must return the float64 values added under
    ``key``; it is called only for submissions whose values cannot be
    rebuilt from their float32 copy, and only when a bound is undecided.
    ``basis_from`` and ``basis_size`` tune the round basis (tests use
    small rounds).

    Thread safety: structure changes happen under one lock. A check takes
    a snapshot under the lock and computes outside it. Slots freed by a
    replacing :meth:`add` or :meth:`discard` are reused only once no check
    (or basis rebuild) is running, so nothing running sees a slot rewritten;
    per-slot arrays are replaced, never resized in place.
    """

    def __init__(self, fetch_exact=None, grid_points=GRID_POINTS, basis_from=BASIS_FROM, basis_size=BASIS_SIZE):
        self._fetch_exact = fetch_exact
        self._grid_points = grid_points
        self._basis_size = basis_size
        self._lock = threading.Lock()
        self._n = None
        self._blocks = None
        self._grid = None
        self._edges = None
        self._columns = None
        self._count_dtype = None
        self._segments = ()
        self._meta = {}
        self._basis = None
        self._basis_next = max(basis_from, 2)
        self._rebuilding = False
        self._slot_of = {}
        self._recent = collections.OrderedDict()  # slot -> (written, sorted values)
        self._free = []
        self._retired = []
        self._readers = 0
        self._stats = dict.fromkeys(("checks", "pairs", "correlation_exact", "ks_exact", "fetched", "bases"), 0)

    # -- structure -------------------------------------------------------

    def __len__(self):
        return len(self._slot_of)

    def __contains__(self, key):
        return key in self._slot_of

    @property
    def nbytes(self):
        """Bytes held by prepared data (float32 copies, grid counts, coefficients, metadata)."""
        with self._lock:
            held = sum(segment.nbytes for segment in self._segments)
            held += sum(array.nbytes for array in self._meta.values())
            held += self._basis.nbytes if self._basis is not None else 0
            held += sum(ordered.nbytes for _, ordered in self._recent.values())
            return held + (self._grid.nbytes if self._grid is not None else 0)

    @property
    def stats(self):
        """Counters: checks, pairs compared, pairs that needed exact values, bases built."""
        with self._lock:
            return dict(self._stats)

    def add(self, key, values):
        """Prepare ``values`` (float64 in round row order) under ``key``.

        An existing key is replaced, or left alone when its values are
        provably identical. Raises :class:`~scoring.errors.DataError` for
        values of the wrong length or non-finite values, and ValueError (a
        caller's bug) for values that could not be recovered exactly later
        because no ``fetch_exact`` was given. May build a new round basis
        (see the module docstring) before returning.
        """
        values = self._validated(values, setting_up=True)
        vector = prepare(values, self._grid, self._blocks, scratch("padded", self._blocks * BLOCK, np.float32))
        recovery = self._recovery_scale(vector, values)
        if recovery == 0.0 and self._fetch_exact is None:
            raise ValueError("submission %r has more than %d decimals and no fetch_exact was given"
                             % (key, math.log10(RECOVERY_SCALES[-1])))
        basis = self._basis
        projection = self._project(basis, vector)
        with self._lock:
            old = self._slot_of.get(key)
            if old is not None and self._same_values(old, values):
                return
            if self._basis is not basis:  # a rebuild finished meanwhile
                projection = self._project(self._basis, vector)
            slot = self._take_slot()
            self._write(slot, vector, recovery, projection)
            self._remember_sorted(slot, scratch("ordered", values.size))
            self._slot_of[key] = slot
            if old is not None:
                self._retire(old)
            rebuild = self._rebuild_due()
        if rebuild:
            self._rebuild()

    def discard(self, key):
        """Forget ``key`` (no error when absent): a submission whose exact values can no longer be read.

        Its slot is reused only once no check is running, like a replaced one's.
        """
        with self._lock:
            slot = self._slot_of.pop(key, None)
            if slot is not None:
                self._retire(slot)

    def _validated(self, values, setting_up=False):
        values = np.ascontiguousarray(values, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise DataError("predictions must be a non-empty 1-d array")
        if not np.all(np.isfinite(values)):
            raise DataError("predictions must be finite numbers")
        with self._lock:
            if self._n is None and setting_up:
                self._set_round(values)
            if values.size != self._n:
                raise DataError("this round has %s rows, the predictions have %d" % (self._n, values.size))
        return values

    def _set_round(self, values):
        self._n = values.size
        self._blocks = -(-values.size // BLOCK)
        self._grid = make_grid(values, self._grid_points)
        self._edges = extended_grid(self._grid)
        self._columns = coarse_columns(self._grid.size)
        self._count_dtype = np.uint16 if values.size <= np.iinfo(np.uint16).max else np.uint32
        self._meta = self._new_meta(0)

    def _recovery_scale(self, vector, values):
        flat = vector.blocks32.reshape(-1)[: values.size]
        out = scratch("recovered", values.size)
        for scale in RECOVERY_SCALES:
            if np.array_equal(recover(flat, vector.mean, scale, out), values):
                return scale
        return 0.0

    def _same_values(self, slot, values):
        scale = self._meta["recovery"][slot]
        if not scale:
            return False
        flat = self._segments[slot // SEGMENT_ROWS].data[slot % SEGMENT_ROWS].reshape(-1)[: self._n]
        return np.array_equal(recover(flat, self._meta["mean"][slot], scale, scratch("recovered", self._n)), values)

    def _project(self, basis, vector):
        """The vector's projection on ``basis`` (None without one)."""
        if basis is None:
            return None
        return basis.project(vector.blocks32[None], [vector.norm], [vector.bounds.scale])

    # -- slots -------------------------------------------------------------

    def _new_meta(self, capacity, width=0):
        meta = {name: np.zeros(capacity, dtype) for name, dtype in _META_FIELDS}
        meta["rho"][:] = np.inf
        meta["coarse"] = np.zeros((capacity, self._columns.size), dtype=self._count_dtype)
        meta["coef"] = np.zeros((capacity, width), dtype=np.float32)
        return meta

    def _take_slot(self):
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self):
        """One more segment; per-slot arrays double when full (a new dict of
        new arrays, so running checks keep theirs)."""
        first = len(self._segments) * SEGMENT_ROWS
        self._segments = self._segments + (_Segment(self._blocks, self._grid.size, self._count_dtype),)
        capacity = self._meta["mean"].size
        if first + SEGMENT_ROWS > capacity:
            grown = self._new_meta(max(2 * capacity, first + SEGMENT_ROWS), self._meta["coef"].shape[1])
            for name, array in self._meta.items():
                grown[name][:capacity] = array
            self._meta = grown
        self._free.extend(range(first + SEGMENT_ROWS - 1, first - 1, -1))

    def _write(self, slot, vector, recovery, projection):
        segment = self._segments[slot // SEGMENT_ROWS]
        row = slot % SEGMENT_ROWS
        segment.data[row] = vector.blocks32
        segment.counts[row] = vector.counts[1:-1]
        meta = self._meta
        bounds = vector.bounds
        for name, value in (("mean", vector.mean), ("norm", vector.norm), ("angle", bounds.angle),
                            ("scale", bounds.scale), ("floor", bounds.floor),
                            ("constant", vector.constant), ("recovery", recovery)):
            meta[name][slot] = value
        meta["coarse"][slot] = vector.counts[1:-1][self._columns]
        meta["written"][slot] += 1
        self._store_projection(meta, [slot], projection)

    @staticmethod
    def _store_projection(meta, slots, projection):
        if projection is None:
            meta["rho"][slots] = np.inf
            return
        meta["coef"][slots] = projection.coef
        for name in ("rho", "delta", "size"):
            meta[name][slots] = getattr(projection, name)

    def _remember_sorted(self, slot, ordered):
        """Under the lock: keep a copy of a slot's sorted values, in place of the oldest kept."""
        if slot in self._recent:
            _, kept = self._recent.pop(slot)
        elif len(self._recent) >= RECENT_SORTED:
            _, kept = self._recent.popitem(last=False)[1]
        else:
            kept = np.empty(ordered.size)
        np.copyto(kept, ordered)
        self._recent[slot] = (self._meta["written"][slot], kept)

    def _recall_sorted(self, slot):
        """Under the lock: a slot's sorted values, copied to a per-thread buffer, if still kept."""
        written, kept = self._recent.get(slot, (None, None))
        if kept is None or written != self._meta["written"][slot]:
            return None
        buffer = scratch("candidate_sorted", kept.size)
        np.copyto(buffer, kept)
        return buffer

    def _retire(self, slot):
        """Free a slot now if nothing reads slots, else once the readers finish."""
        (self._retired if self._readers else self._free).append(slot)

    def _read(self):
        """Count one more reader (under the lock): retired slots stay unused until it is done."""
        self._readers += 1

    def _done_reading(self):
        """Under the lock: one reader fewer; the last one frees the retired slots."""
        self._readers -= 1
        if not self._readers:
            self._free.extend(self._retired)
            self._retired.clear()

    # -- the round basis -----------------------------------------------------

    def _rebuild_due(self):
        """Under the lock: whether this add should build a new basis (and claim it)."""
        if self._rebuilding or len(self._slot_of) < self._basis_next:
            return False
        self._rebuilding = True
        self._basis_next = BASIS_GROWTH * len(self._slot_of)
        return True

    def _rebuild(self):
        """Build a basis from a sample of the round and project every submission on it.

        Runs outside the lock as a reader (slots it reads are not rewritten);
        submissions written meanwhile are projected again until none is stale,
        then the basis and its projections are installed at once.
        """
        try:
            with self._lock:
                self._read()
                sample = self._sample_slots()
                segments = self._segments
                meta = self._meta
            if sample:
                rows = np.stack([segments[s // SEGMENT_ROWS].data[s % SEGMENT_ROWS] for s in sample])
                basis = RoundBasis.from_sample(rows, meta["norm"][sample], self._n, self._basis_size)
                if basis is not None:
                    self._install(basis)
        except np.linalg.LinAlgError as exc:  # the round keeps its basis: checks stay exact, only slower
            log.warning("round basis not rebuilt: %s", exc)
        finally:
            with self._lock:
                self._done_reading()
                self._rebuilding = False

    def _sample_slots(self):
        """Up to BASIS_SAMPLE live slots, evenly spread, with usable bounds."""
        meta = self._meta
        live = np.array(sorted(self._slot_of.values()), dtype=np.intp)
        usable = live[~meta["constant"][live] & np.isfinite(meta["scale"][live]) & (meta["norm"][live] > 0)]
        if usable.size < 2:
            return []
        picks = np.unique(np.linspace(0, usable.size - 1, min(BASIS_SAMPLE, usable.size)).astype(np.intp))
        return usable[picks].tolist()

    def _install(self, basis):
        """Project every live slot on ``basis`` (outside the lock) and install it."""
        done = {}
        while True:
            with self._lock:
                meta = self._meta
                live = np.array(sorted(self._slot_of.values()), dtype=np.intp)
                stale = [int(s) for s in live if done.get(int(s), (None,))[0] != meta["written"][s]]
                if not stale:
                    self._switch(basis, live, done)
                    return
                written = meta["written"][stale].copy()
                segments = self._segments
            for start in range(0, len(stale), SEGMENT_ROWS):
                chunk = stale[start:start + SEGMENT_ROWS]
                data = np.stack([segments[s // SEGMENT_ROWS].data[s % SEGMENT_ROWS] for s in chunk])
                projection = basis.project(data, meta["norm"][chunk], meta["scale"][chunk])
                for i, slot in enumerate(chunk):
                    done[slot] = (written[start + i], projection, i)

    def _switch(self, basis, live, done):
        """Under the lock: new per-slot projection arrays for ``basis``, then the basis."""
        meta = dict(self._meta)
        capacity = meta["mean"].size
        meta["coef"] = np.zeros((capacity, basis.size), dtype=np.float32)
        for name in ("rho", "delta", "size"):
            meta[name] = np.full(capacity, np.inf)
        for slot in live:
            _, projection, i = done[int(slot)]
            meta["coef"][slot] = projection.coef[i]
            for name in ("rho", "delta", "size"):
                meta[name][slot] = getattr(projection, name)[i]
        self._meta = meta
        self._basis = basis
        self._stats["bases"] += 1
        log.info("round basis of %d directions (eta %.2g) built from %d submissions; %d projected",
                 basis.size, basis.eta, min(BASIS_SAMPLE, live.size), live.size)

    # -- checking --------------------------------------------------------

    def is_original(self, candidate, other_keys, rules=Rules(), key=None):
        """Exactly ``scoring.originality.is_original(candidate, others, rules)``.

        ``others`` are the values added under ``other_keys`` (repeats count
        as often as they appear). Raises KeyError for a key not added.
        ``key``: the candidate's own key, when it has been added to this
        round: its stored sketch is then used (once proven to be of these
        very values) instead of preparing the candidate again.
        """
        other_keys = list(other_keys)
        if not other_keys:
            return True
        return self._checked(candidate, other_keys, key, lambda snap, cand, counters: Check(
            snap, cand, rules, counters).run())

    def explain(self, candidate, other_keys, rules=Rules(), closest=CLOSEST, cap=OFFENDER_CAP, key=None):
        """Exactly ``scoring.evidence.originality_evidence(candidate, others, rules, closest, cap)``.

        Its ``original`` is :meth:`is_original`'s verdict. Every pair is
        classified (correlated, duplicate, similar) from the bounds, exact
        values settling only the pairs a bound leaves open; exact statistics
        are computed only for the pairs listed (at most ``cap`` offenders and
        the pairs that can be among the ``closest`` nearest, chosen by bounds).
        ``key`` as in :meth:`is_original`.
        """
        other_keys = list(other_keys)
        if not other_keys:
            return originality_evidence(candidate, [], rules, closest, cap)
        return self._checked(candidate, other_keys, key, lambda snap, cand, counters: Explanation(
            snap, cand, rules, counters).run(closest, cap))

    def _checked(self, candidate, other_keys, key, work):
        """Run ``work(snapshot, candidate, counters)`` as a reader of the round."""
        snapshot = self._snapshot(other_keys, key)
        counters = dict.fromkeys(("pairs", "correlation_exact", "ks_exact", "fetched"), 0)
        try:
            values = self._validated(candidate)
            return work(snapshot, self._candidate(snapshot, values), counters)
        finally:
            self._release(counters)

    def _snapshot(self, other_keys, key=None):
        with self._lock:
            slots = np.array(list(map(self._slot_of.__getitem__, other_keys)), dtype=np.intp)
            self._read()
            own = self._slot_of.get(key)
            return Snapshot(self._n, self._blocks, self._grid, self._edges, self._segments, self._meta, self._basis,
                            other_keys, slots, SEGMENT_ROWS, self._fetch_exact, own,
                            None if own is None else self._recall_sorted(own))

    def _release(self, counters):
        with self._lock:
            self._done_reading()
            self._stats["checks"] += 1
            for name, value in counters.items():
                self._stats[name] += value
        if counters["correlation_exact"] or counters["ks_exact"]:
            log.debug("exact values needed for %(correlation_exact)d correlations and %(ks_exact)d KS "
                      "comparisons of %(pairs)d pairs (%(fetched)d fetched)", counters)

    def _candidate(self, snap, values):
        """The candidate's sketch: its stored one when ``snap.own_slot`` holds
        exactly these values, else prepared now against the snapshot."""
        stored = self._stored_candidate(snap, values)
        if stored is not None:
            return stored
        padded = scratch("candidate", snap.blocks * BLOCK, np.float32)
        vector = prepare(values, snap.grid, snap.blocks, padded)
        projection = self._project(snap.basis, vector)
        return Candidate(
            values=values, blocks32=vector.blocks32, mean=vector.mean, norm=vector.norm,
            constant=vector.constant, bounds=vector.bounds, counts=vector.counts,
            coarse=vector.counts[1:-1][self._columns].astype(self._count_dtype),
            projection=None if projection is None else (projection.coef[0], projection.rho[0],
                                                        projection.delta[0], projection.size[0]),
        )

    def _stored_candidate(self, snap, values):
        """The stored sketch of ``snap.own_slot`` if it is provably of ``values``:
        they are rebuilt exactly from its float32 copy (a copy that could not be
        rebuilt proves nothing, and the candidate is prepared again)."""
        slot = snap.own_slot
        if slot is None or not snap.meta["recovery"][slot]:
            return None
        if not np.array_equal(snap.stored_values(slot, scratch("own", snap.n)), values):
            log.debug("the candidate's stored sketch is of other values; preparing it again")
            return None
        meta = snap.meta
        bounds = VectorBounds(meta["angle"][slot], meta["scale"][slot], meta["floor"][slot])
        projection = None
        if snap.basis is not None:
            projection = (meta["coef"][slot], meta["rho"][slot], meta["delta"][slot], meta["size"][slot])
        return Candidate(
            values=values, blocks32=snap.data(slot), mean=meta["mean"][slot], norm=meta["norm"][slot],
            constant=bool(meta["constant"][slot]), bounds=bounds, counts=snap.counts(slot),
            coarse=meta["coarse"][slot], projection=projection, ordered=snap.own_sorted,
        )
