"""Originality against a whole round, with the plain rule's exact decisions, fast.

:func:`scoring.originality.is_original` sorts and correlates every other
submission again for every candidate. A round keeps its submissions
here instead, prepared once when they arrive, so that a check reads one
float32 copy of each other submission plus a small sketch of its sorted
values, and decides almost every pair from those alone.

Nothing is decided on an approximation. Every shortcut rests on a bound
that is proven below; a pair the bound cannot decide is recomputed with
the plain functions on exact float64 values. So
``PreparedRound.is_original(x, keys, rules)`` returns exactly what
``scoring.originality.is_original(x, [values of keys], rules)`` returns.

What is kept per submission, and why:

* ``x - mean(x)`` rounded to float32, padded with zeros to whole blocks
  of :data:`BLOCK` values. A check takes the candidate's dot product
  with every other in float32 block by block, summed in float64; that is
  one memory-bound pass and the reason the check is fast.
* its float64 mean and norm and a few error terms (``_Bounds``), which
  turn the float32 correlation into an interval that contains the value
  the plain float64 computation returns.
* grid counts ``C[j] = #{x <= G[j]}`` on a per-round grid ``G``. Two
  vectors' grid counts bound their exact KS count from below and above
  (see :func:`ks_interval`), which decides nearly every KS comparison.
* whether the exact float64 values can be rebuilt from the float32 copy
  (true for files written with up to 6 or 7 decimals, the usual case);
  when not, ``fetch_exact(key)`` supplies them on the rare occasions they
  are needed.
"""
import dataclasses
import logging
import math
import threading

import numpy as np

from scoring.errors import DataError
from scoring.evidence import CLOSEST, OFFENDER_CAP, originality_evidence, originality_record, ranked_correlation
from scoring.originality import is_constant, pearson, too_correlated
from scoring.rules import Rules

log = logging.getLogger(__name__)

#: Values per float32 block; block dot products are summed in float64.
#: The rounding bound of a block grows with its length, 256 keeps the
#: undecided correlation band about +-1.6e-5 at no cost in speed.
BLOCK = 256
#: Submissions per storage segment: growth allocates one segment and
#: copies nothing; at most one segment is partly empty. A segment's
#: product with the candidate is one matrix-vector product per block of
#: SEGMENT_ROWS x BLOCK = 8192 values, small enough that OpenBLAS runs it
#: on the calling thread; larger ones wake its thread pool thousands of
#: times per check, which costs more than it saves.
SEGMENT_ROWS = 32
#: Grid points for the KS sketch (about 11 values per cell at n=45,000).
GRID_POINTS = 4096
#: Decimal scales tried for rebuilding exact values from the float32 copy.
RECOVERY_SCALES = (1e6, 1e7)
#: Below this share of wanted rows a segment's rows are gathered instead
#: of multiplying the whole segment.
GATHER_SHARE = 0.25

#: Unit roundoff of float64 and float32.
U64 = 2.0 ** -53
U32 = 2.0 ** -24
#: Smallest normal float32: bounds the absolute error of a float32 value
#: or product that underflows, whether flushed to zero or subnormal.
TINY32 = 2.0 ** -126
#: A vector whose relative rounding error is this large gets no bound.
MAX_RELATIVE_ERROR = 0.5
#: Final safety on every margin: relative, and absolute for the float64
#: rounding of the comparisons ``|r| -+ margin`` themselves.
MARGIN_RELATIVE_SAFETY = 1e-6
MARGIN_ABSOLUTE_SAFETY = 1e-15


def gamma(k, unit):
    """Higham's gamma_k: bounds the relative error of k rounded operations."""
    return k * unit / (1 - k * unit)


def cutoff(n, predicate):
    """First k in 0..n for which ``predicate(k)`` is false (n + 1 if none).

    ``predicate`` must hold for a prefix of 0..n. The KS clauses of the
    plain rule are ``k / n < duplicate_ks`` and ``k / n <= similar_ks``,
    prefixes because float division is monotone; evaluating the very same
    Python expression here makes integer comparisons ``k < cutoff`` agree
    with the plain rule even when ``k / n`` rounds onto a threshold.
    """
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if predicate(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def ks_interval(counts_a, counts_b):
    """Integers ``(L, U)`` with ``L <= ks_counts(a, b) <= U``, along the last axis.

    ``counts_*`` are extended grid counts ``[0, C[0], ..., C[g-1], n]``;
    either may be a stack of them (one row per other submission), which
    is how a check bounds a whole segment at once. The difference of the
    two empirical CDFs at a grid point equals their difference at the
    largest data value not above it (or 0), one of the values ks_counts
    maximises, so the largest is a lower bound. For t in the cell
    ``(G[j-1], G[j]]`` the CDFs lie between their values at the cell's
    ends, so ``F_a(t) - F_b(t) <= C_a[j] - C_b[j-1]`` and symmetrically,
    which bounds every t from above.
    """
    a = np.asarray(counts_a, dtype=np.int64)
    b = np.asarray(counts_b, dtype=np.int64)
    return np.max(np.abs(a - b), axis=-1), np.max(cell_bounds(a, b), axis=-1)


def cell_bounds(a, b):
    """Upper bound of ``|F_a - F_b|`` within each cell, from extended counts."""
    return np.maximum(a[..., 1:] - b[..., :-1], b[..., 1:] - a[..., :-1])


def ks_count_from(a_sorted, counts_a, b_sorted, counts_b, cut):
    """``ks_counts(a, b)`` whenever it is at least ``cut``; otherwise a value below ``cut``.

    Only cells whose bound (:func:`cell_bounds`) reaches ``cut`` can hold
    a point where the CDFs differ by ``cut`` or more, so the CDF
    differences are evaluated at the data values in those cells only,
    exactly as ks_counts evaluates them, plus at the grid points. The
    result ``r`` satisfies ``r <= k`` and ``r == k`` when ``k >= cut``,
    hence ``r < c`` exactly when ``k < c`` for every ``c >= cut``.
    """
    a = counts_a.astype(np.int64)
    b = counts_b.astype(np.int64)
    found = int(np.max(np.abs(a - b)))
    cells = np.flatnonzero(cell_bounds(a, b) >= cut)
    if cells.size:
        points = np.concatenate([cell_values(a_sorted, a, cells), cell_values(b_sorted, b, cells)])
        if points.size:
            diff = np.searchsorted(a_sorted, points, side="right") - np.searchsorted(b_sorted, points, side="right")
            found = max(found, int(np.max(np.abs(diff))))
    return found


def cell_values(values_sorted, counts, cells):
    """The sorted values lying in the given cells (``counts`` extended)."""
    starts = counts[cells]
    lengths = counts[cells + 1] - starts
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    positions = np.arange(total) + np.repeat(starts - offsets, lengths)
    return values_sorted[positions]


def make_grid(values, points=GRID_POINTS):
    """A round's grid: quantiles of one vector (any grid is exact; this one is tight)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    at = np.rint(np.linspace(0, ordered.size - 1, points)).astype(np.intp)
    return np.unique(ordered[at])


def grid_counts(ordered, grid):
    """Extended grid counts ``[0, #{x <= G[0]}, ..., #{x <= G[g-1]}, n]`` of sorted values."""
    counts = np.empty(grid.size + 2, dtype=np.int64)
    counts[0], counts[-1] = 0, ordered.size
    counts[1:-1] = np.searchsorted(ordered, grid, side="right")
    return counts


def recover(centered32, mean, scale):
    """Rebuild values written with at most log10(scale) decimals from the float32 copy."""
    return np.rint((mean + centered32.astype(np.float64)) * scale) / scale


class ExactValuesChanged(RuntimeError):
    """``fetch_exact(key)`` returned values other than those added under ``key``.

    The check cannot go on with that submission: its float32 copy and its
    exact values disagree. ``key`` says which, so a caller can leave it out.
    """

    def __init__(self, key):
        super().__init__("fetch_exact(%r) returned values other than those added" % (key,))
        self.key = key


@dataclasses.dataclass(frozen=True)
class _Bounds:
    """Per-vector error terms of the correlation bound (see :func:`pair_margins`).

    ``angle``: bound on the angle between the exactly centered vector and
    each of the two rounded versions that get multiplied (the plain
    float64 one and the stored float32 one), summed.
    ``scale``: bound on ``| ||v32|| / norm - 1 |``.
    ``floor``: lower bound of ``||v32||``, for the underflow term.
    """

    angle: float
    scale: float
    floor: float


def vector_bounds(values, norm):
    """Rounding error terms of centering ``values`` in float64 then float32.

    With ``m' = fl(mean)``, ``|m' - m| <= D = gamma_(n+2) max|x|`` for any
    summation order. The float64 centered vector ``v_i = (x_i - m')(1 +
    e_i)`` is within ``rho64 = (sqrt(n) D (1 + u) + u ||c||) / ||c||`` of
    the exactly centered ``c`` in relative norm; float32 rounding adds
    ``u32 (1 + rho64)`` plus ``sqrt(n) TINY32 / ||c||`` for underflow. A
    relative error ``rho < 1`` turns the vector by at most ``asin(rho) <=
    pi/2 rho`` radians. ``||c||`` is bounded below from the computed norm.
    """
    n = values.size
    root_n = math.sqrt(n)
    nu = gamma(n, U64) + 2 * U64
    shift = gamma(n + 2, U64) * float(np.max(np.abs(values))) * (1 + 1e-9)
    exact_floor = norm / ((1 + nu) * (1 + U64)) - root_n * shift * (1 + U64)
    if not exact_floor > 0:
        return _Bounds(math.inf, math.inf, 0.0)
    rho64 = root_n * shift * (1 + U64) / exact_floor + U64
    rho32 = rho64 + U32 * (1 + rho64) + root_n * TINY32 / exact_floor
    if rho32 >= MAX_RELATIVE_ERROR:
        return _Bounds(math.inf, math.inf, 0.0)
    angle = math.pi / 2 * (rho64 + rho32)
    scale = (U32 + root_n * TINY32 / exact_floor * (1 + nu) + nu) * 1.01
    return _Bounds(angle, scale, exact_floor * (1 - rho32))


def pair_margins(n, blocks, cand, angle, scale, floor):
    """Bound on ``|r_fast - r_plain|`` for the candidate against each other.

    ``r_true`` is the correlation of the exact values. Angles bound the
    centering and rounding of both vectors (``cand.angle + angle``). The
    float32 block sums are off by at most ``gamma_B(u32)`` of
    ``sum |v_i w_i| <= ||v|| ||w||``, their float64 sum by ``gamma_nb`` more,
    underflowing products and sums by ``TINY32`` each; dividing by the stored
    float64 norms instead of the float32 ones scales by ``P``. The plain
    float64 Pearson adds ``2.2 gamma_n + 5u`` (its dot products and the
    final sqrt and division). All quantities are rounded up.
    """
    g_blocks = gamma(BLOCK, U32)
    g_dot = g_blocks + gamma(blocks, U64) * (1 + g_blocks)
    # Each float32 product and, when flushing to zero, each float32 sum
    # may lose up to TINY32 absolutely; float64 underflow in the plain
    # computation is covered with room to spare by the same term.
    underflow = 2 * n * TINY32 * (1 + g_blocks) * (1 + gamma(blocks, U64))
    plain = 2.2 * gamma(n, U64) + 5 * U64
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = (1 + cand.scale) * (1 + scale) * (1 + U64) ** 2
        margin = cand.angle + angle + (g_dot + underflow / (cand.floor * floor)) * p + (p - 1) + plain
        margin = margin * (1 + MARGIN_RELATIVE_SAFETY) + MARGIN_ABSOLUTE_SAFETY
    return np.where(np.isfinite(margin) & (floor > 0), margin, np.inf)


@dataclasses.dataclass
class _Vector:
    """One vector prepared against a round's grid."""

    blocks32: np.ndarray   # (nb, BLOCK) float32, centered, zero padded
    mean: float
    norm: float
    constant: bool
    bounds: _Bounds
    counts: np.ndarray     # extended grid counts, int64, length g + 2
    ordered: np.ndarray    # sorted float64 values


def prepare(values, grid, blocks):
    """Center, round, sketch and sort one float64 vector."""
    mean = values.mean()
    centered = values - mean
    norm = float(np.sqrt(np.einsum("i,i->", centered, centered)))  # numpy's loop: no BLAS thread wake-up
    padded = np.zeros(blocks * BLOCK, dtype=np.float32)
    padded[: values.size] = centered
    ordered = np.sort(values)
    return _Vector(
        blocks32=padded.reshape(blocks, BLOCK),
        mean=float(mean),
        norm=norm,
        constant=is_constant(values),
        bounds=vector_bounds(values, norm),
        counts=grid_counts(ordered, grid),
        ordered=ordered,
    )


class _Segment:
    """Storage for SEGMENT_ROWS submissions.

    ``data`` is laid out (block, row, value) so that one batched matmul
    against the candidate's (block, value, 1) gives every row's block dot
    products; ``counts`` holds the inner grid counts in the narrowest
    unsigned type that fits n, for the modular first pass.
    """

    __slots__ = ("data", "counts")

    def __init__(self, blocks, grid_size, count_dtype):
        self.data = np.zeros((blocks, SEGMENT_ROWS, BLOCK), dtype=np.float32)
        self.counts = np.zeros((SEGMENT_ROWS, grid_size), dtype=count_dtype)

    @property
    def nbytes(self):
        return self.data.nbytes + self.counts.nbytes


_META_FIELDS = (
    ("mean", np.float64), ("norm", np.float64), ("angle", np.float64), ("scale", np.float64),
    ("floor", np.float64), ("constant", np.bool_), ("recovery", np.float64),
)


@dataclasses.dataclass
class _Snapshot:
    """What one check needs, taken under the lock; nothing in it is rewritten
    while the check runs (see ``PreparedRound._retire``)."""

    n: int
    blocks: int
    grid: np.ndarray
    segments: tuple
    meta: dict
    keys: list
    slots: np.ndarray


class PreparedRound:
    """A round's submissions, prepared for exact and fast originality checks.

    ``fetch_exact(key)`` must return the float64 values added under
    ``key``; it is called only for submissions whose values cannot be
    rebuilt from their float32 copy, and only when a bound is undecided.

    Thread safety: structure changes happen under one lock. A check takes
    a snapshot under the lock and computes outside it. Slots freed by a
    replacing :meth:`add` are reused only once no check is running, so a
    running check never sees a slot rewritten.
    """

    def __init__(self, fetch_exact=None, grid_points=GRID_POINTS):
        self._fetch_exact = fetch_exact
        self._grid_points = grid_points
        self._lock = threading.Lock()
        self._n = None
        self._blocks = None
        self._grid = None
        self._count_dtype = None
        self._segments = ()
        self._meta = {name: np.zeros(0, dtype) for name, dtype in _META_FIELDS}
        self._slot_of = {}
        self._free = []
        self._retired = []
        self._readers = 0
        self._stats = dict.fromkeys(("checks", "pairs", "correlation_exact", "ks_exact", "fetched"), 0)

    # -- structure -------------------------------------------------------

    def __len__(self):
        return len(self._slot_of)

    def __contains__(self, key):
        return key in self._slot_of

    @property
    def nbytes(self):
        """Bytes held by prepared data (float32 copies, grid counts, metadata)."""
        with self._lock:
            held = sum(segment.nbytes for segment in self._segments)
            held += sum(array.nbytes for array in self._meta.values())
            return held + (self._grid.nbytes if self._grid is not None else 0)

    @property
    def stats(self):
        """Counters: checks, pairs compared, pairs that needed exact values."""
        with self._lock:
            return dict(self._stats)

    def add(self, key, values):
        """Prepare ``values`` (float64 in round row order) under ``key``.

        An existing key is replaced, or left alone when its values are
        provably identical. Raises :class:`~scoring.errors.DataError` for
        values of the wrong length or non-finite values, and ValueError (a
        caller's bug) for values that could not be recovered exactly later
        because no ``fetch_exact`` was given.
        """
        values = self._validated(values, setting_up=True)
        vector = prepare(values, self._grid, self._blocks)
        recovery = self._recovery_scale(vector, values)
        if recovery == 0.0 and self._fetch_exact is None:
            raise ValueError("submission %r has more than %d decimals and no fetch_exact was given"
                             % (key, math.log10(RECOVERY_SCALES[-1])))
        with self._lock:
            old = self._slot_of.get(key)
            if old is not None and self._same_values(old, values):
                return
            slot = self._take_slot()
            self._write(slot, vector, recovery)
            self._slot_of[key] = slot
            if old is not None:
                self._retire(old)

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
        self._count_dtype = np.uint16 if values.size <= np.iinfo(np.uint16).max else np.uint32

    @staticmethod
    def _recovery_scale(vector, values):
        flat = vector.blocks32.reshape(-1)[: values.size]
        for scale in RECOVERY_SCALES:
            if np.array_equal(recover(flat, vector.mean, scale), values):
                return scale
        return 0.0

    def _same_values(self, slot, values):
        scale = self._meta["recovery"][slot]
        return bool(scale) and np.array_equal(self._stored_values(self._segments, self._meta, slot, self._n), values)

    def _take_slot(self):
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self):
        first = len(self._segments) * SEGMENT_ROWS
        self._segments = self._segments + (_Segment(self._blocks, self._grid.size, self._count_dtype),)
        capacity = first + SEGMENT_ROWS
        grown = {}
        for name, dtype in _META_FIELDS:
            grown[name] = np.zeros(capacity, dtype)
            grown[name][:first] = self._meta[name]
        self._meta = grown
        self._free.extend(range(capacity - 1, first - 1, -1))

    def _write(self, slot, vector, recovery):
        segment = self._segments[slot // SEGMENT_ROWS]
        row = slot % SEGMENT_ROWS
        segment.data[:, row, :] = vector.blocks32
        segment.counts[row] = vector.counts[1:-1]
        bounds = vector.bounds
        for name, value in (("mean", vector.mean), ("norm", vector.norm), ("angle", bounds.angle),
                            ("scale", bounds.scale), ("floor", bounds.floor),
                            ("constant", vector.constant), ("recovery", recovery)):
            self._meta[name][slot] = value

    def _retire(self, slot):
        """Free a slot now if no check runs, else once the running ones finish."""
        (self._retired if self._readers else self._free).append(slot)

    # -- checking --------------------------------------------------------

    def is_original(self, candidate, other_keys, rules=Rules()):
        """Exactly ``scoring.originality.is_original(candidate, others, rules)``.

        ``others`` are the values added under ``other_keys`` (repeats count
        as often as they appear). Raises KeyError for a key not added.
        """
        other_keys = list(other_keys)
        if not other_keys:
            return True
        snapshot = self._snapshot(other_keys)
        counters = dict.fromkeys(("pairs", "correlation_exact", "ks_exact", "fetched"), 0)
        try:
            candidate = self._validated(candidate)
            return _Check(self, snapshot, candidate, rules, counters).run()
        finally:
            self._release(counters)

    def explain(self, candidate, other_keys, rules=Rules(), closest=CLOSEST, cap=OFFENDER_CAP):
        """Exactly ``scoring.evidence.originality_evidence(candidate, others, rules, closest, cap)``.

        Its ``original`` is :meth:`is_original`'s verdict. Every pair is
        classified (correlated, duplicate, similar) from the bounds, exact
        values settling only the pairs a bound leaves open; exact statistics
        are computed only for the pairs listed (at most ``cap`` offenders and
        the pairs that can be among the ``closest`` nearest, chosen by bounds).
        """
        other_keys = list(other_keys)
        if not other_keys:
            return originality_evidence(candidate, [], rules, closest, cap)
        snapshot = self._snapshot(other_keys)
        counters = dict.fromkeys(("pairs", "correlation_exact", "ks_exact", "fetched"), 0)
        try:
            candidate = self._validated(candidate)
            return _Explanation(self, snapshot, candidate, rules, counters).run(closest, cap)
        finally:
            self._release(counters)

    def _snapshot(self, other_keys):
        with self._lock:
            slots = np.fromiter((self._slot_of[key] for key in other_keys), dtype=np.intp, count=len(other_keys))
            self._readers += 1
            return _Snapshot(self._n, self._blocks, self._grid, self._segments, self._meta, other_keys, slots)

    def _release(self, counters):
        with self._lock:
            self._readers -= 1
            if not self._readers:
                self._free.extend(self._retired)
                self._retired.clear()
            self._stats["checks"] += 1
            for name, value in counters.items():
                self._stats[name] += value
        if counters["correlation_exact"] or counters["ks_exact"]:
            log.debug("exact values needed for %(correlation_exact)d correlations and %(ks_exact)d KS "
                      "comparisons of %(pairs)d pairs (%(fetched)d fetched)", counters)

    @staticmethod
    def _stored_values(segments, meta, slot, n):
        """Exact values rebuilt from the float32 copy (recoverable slots only)."""
        row = segments[slot // SEGMENT_ROWS].data[:, slot % SEGMENT_ROWS, :].reshape(-1)[:n]
        return recover(row, meta["mean"][slot], meta["recovery"][slot])

    def _exact_values(self, snapshot, position):
        """The exact float64 values of one other submission in a snapshot."""
        slot = snapshot.slots[position]
        if snapshot.meta["recovery"][slot]:
            return self._stored_values(snapshot.segments, snapshot.meta, slot, snapshot.n)
        values = np.ascontiguousarray(self._fetch_exact(snapshot.keys[position]), dtype=np.float64)
        row = snapshot.segments[slot // SEGMENT_ROWS].data[:, slot % SEGMENT_ROWS, :].reshape(-1)[: snapshot.n]
        if values.shape != (snapshot.n,) or not np.array_equal((values - snapshot.meta["mean"][slot]).astype(np.float32), row):
            raise ExactValuesChanged(snapshot.keys[position])
        return values


class _Check:
    """One candidate against one snapshot; see :meth:`run` for the order of work."""

    def __init__(self, prepared_round, snapshot, candidate, rules, counters):
        self.round = prepared_round
        self.snap = snapshot
        self.values = candidate
        self.rules = rules
        self.counters = counters
        n = snapshot.n
        self.dup_cut = cutoff(n, lambda k: k / n < rules.duplicate_ks)
        self.similar_cut = cutoff(n, lambda k: k / n <= rules.similar_ks)
        self.needed_similar = max(rules.max_similar, 1)
        self.cand = prepare(candidate, snapshot.grid, snapshot.blocks)
        self.exact_cache = {}

    def run(self):
        """Decide from bounds segment by segment, then resolve undecided pairs exactly.

        Any single correlated or duplicate pair, or ``max_similar`` similar
        ones, decide "not original" whatever order pairs are looked at, so
        the check stops at the first certainty.
        """
        undecided_corr, undecided_ks = [], []
        self.similar = 0
        for positions, rows, segment in self._by_segment():
            self.counters["pairs"] += positions.size
            corr = self._correlation(positions, rows, segment)
            if corr is False:
                return False
            undecided_corr.append(corr)
            ks = self._ks(positions, rows, segment)
            if ks is False:
                return False
            undecided_ks.append(ks)
        return self._resolve(np.concatenate(undecided_corr), np.concatenate(undecided_ks, axis=0))

    def _by_segment(self):
        slots = self.snap.slots
        order = np.argsort(slots // SEGMENT_ROWS, kind="stable")
        segment_of = slots[order] // SEGMENT_ROWS
        bounds = np.flatnonzero(np.diff(segment_of)) + 1
        for group in np.split(order, bounds):
            yield group, slots[group] % SEGMENT_ROWS, self.snap.segments[slots[group[0]] // SEGMENT_ROWS]

    @staticmethod
    def _rows_view(rows):
        """Rows to gather (None: the whole segment) and where each position's result lands."""
        if rows.size > GATHER_SHARE * SEGMENT_ROWS:
            return None, rows
        return np.unique(rows, return_inverse=True)

    def _correlation_bounds(self, positions, rows, segment):
        """``(|r|, margin, applies)`` per position: the plain ``|pearson|`` lies within
        ``|r| +- margin`` wherever ``applies`` (neither vector constant)."""
        cand = self.cand
        meta = self.snap.meta
        slots = self.snap.slots[positions]
        gather, index = self._rows_view(rows)
        data = segment.data if gather is None else segment.data[:, gather, :]
        dots = np.matmul(data, cand.blocks32[:, :, None]).sum(axis=0, dtype=np.float64)[:, 0][index]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(dots / (cand.norm * meta["norm"][slots]))
        margin = pair_margins(self.snap.n, self.snap.blocks, cand.bounds,
                              meta["angle"][slots], meta["scale"][slots], meta["floor"][slots])
        applies = ~meta["constant"][slots]
        return np.where(np.isfinite(margin), r, 0.0), margin, applies

    def _correlation(self, positions, rows, segment):
        """False if a pair is certainly too correlated, else positions still undecided."""
        if self.cand.constant:
            return positions[:0]
        r, margin, applies = self._correlation_bounds(positions, rows, segment)
        limit = self.rules.correlation_limit
        if np.any(applies & (r - margin > limit)):
            return False
        return positions[applies & ~(r + margin <= limit)]

    def _ks(self, positions, rows, segment):
        """False if a pair is certainly a duplicate or similar pairs certainly
        reach the limit; else ``(position, lower, upper)`` rows still open."""
        far = max(self.dup_cut, self.similar_cut)
        if far == 0:
            return np.zeros((0, 3), dtype=np.int64)
        gather, index = self._rows_view(rows)
        counts = segment.counts if gather is None else segment.counts[gather]
        near = ~self._certainly_far(counts, far)[index]
        positions, rows = positions[near], rows[near]
        if not positions.size:
            return np.zeros((0, 3), dtype=np.int64)
        inner = segment.counts[rows].astype(np.int64)
        n = self.snap.n
        other = np.concatenate([np.zeros((rows.size, 1), np.int64), inner, np.full((rows.size, 1), n, np.int64)], axis=1)
        lower, upper = ks_interval(other, self.cand.counts)
        if np.any(upper < self.dup_cut):
            return False
        self.similar += int(np.count_nonzero(upper < self.similar_cut))
        if self.similar >= self.needed_similar:
            return False
        open_ = (lower < self.dup_cut) | ((lower < self.similar_cut) & (upper >= self.similar_cut))
        return np.stack([positions[open_], lower[open_], upper[open_]], axis=1)

    def _certainly_far(self, counts, far):
        """Rows whose KS count is certainly >= ``far``, from modular arithmetic.

        With ``cut = far - 1``, ``w = C_o - C_c + cut`` taken modulo the
        count type's range lies in ``[0, 2 cut]`` whenever the true
        difference lies in ``[-cut, cut]``. So ``w > 2 cut`` at any grid
        point proves a difference beyond ``cut`` there, i.e. ``k >= far``.
        Wrap-around can only hide differences, never invent them.
        """
        cut = far - 1
        dtype = counts.dtype
        if 2 * cut >= np.iinfo(dtype).max:
            return np.zeros(counts.shape[0], dtype=bool)
        shifted = np.subtract(counts, self.cand.counts[1:-1].astype(dtype))
        shifted += dtype.type(cut)
        return shifted.max(axis=1) > 2 * cut

    def _resolve(self, corr_positions, ks_rows):
        """Settle the pairs no bound decided, with exact float64 values."""
        for position in corr_positions:
            self.counters["correlation_exact"] += 1
            if too_correlated(self.values, self._exact(position), self.rules):
                return False
        dup_open = ks_rows[:, 1] < self.dup_cut
        for position, lower, upper in ks_rows[dup_open]:
            if self._exact_ks(position, lower, upper) is False:
                return False
        similar_open = ks_rows[~dup_open]
        for index, (position, lower, upper) in enumerate(similar_open):
            if self.similar + len(similar_open) - index < self.needed_similar:
                break
            if self._exact_ks(position, lower, upper) is False:
                return False
        return True

    def _exact_ks(self, position, lower, upper):
        """Exact KS clauses of one pair: False when they decide 'not original'."""
        self.counters["ks_exact"] += 1
        cuts = [c for c in (self.dup_cut, self.similar_cut) if lower < c <= upper]
        other = self._exact(position)
        slot = self.snap.slots[position]
        counts = np.concatenate([[0], self.snap.segments[slot // SEGMENT_ROWS].counts[slot % SEGMENT_ROWS], [self.snap.n]])
        k = ks_count_from(self.cand.ordered, self.cand.counts, np.sort(other), counts.astype(np.int64), min(cuts))
        if k < self.dup_cut:
            return False
        if k < self.similar_cut and upper >= self.similar_cut:
            self.similar += 1
        return self.similar < self.needed_similar

    def _exact(self, position):
        slot = int(self.snap.slots[position])
        if slot not in self.exact_cache:
            if not self.snap.meta["recovery"][slot]:
                self.counters["fetched"] += 1
            self.exact_cache[slot] = self.round._exact_values(self.snap, position)
        return self.exact_cache[slot]




class _Explanation(_Check):
    """Originality evidence for one candidate: every pair classified, few computed exactly.

    ``run`` takes the same bounds as :class:`_Check` for every pair (no
    early stop: the evidence counts all offenders), settles the pairs the
    bounds leave open with exact values, and computes exact statistics for
    the pairs it lists. For the ``closest`` nearest pairs it makes pairs
    exact in the order of their bounds and stops as soon as no bound can
    beat the ``closest``-th best exact value, so few pairs are ever exact.
    """

    def run(self, closest, cap):
        size = len(self.snap.keys)
        self.r = np.zeros(size)
        self.margin = np.full(size, np.inf)
        self.applies = np.zeros(size, dtype=bool)
        self.lower = np.zeros(size, dtype=np.int64)
        self.upper = np.full(size, -1, dtype=np.int64)  # -1: not computed
        self.counts_k = {}                              # position -> exact KS count
        self.r_exact = {}                               # position -> exact correlation or None
        for positions, rows, segment in self._by_segment():
            self.counters["pairs"] += positions.size
            self._bounds(positions, rows, segment)
        correlated, duplicate, similar = self._classify()
        decisive = np.flatnonzero(correlated | duplicate)
        similar_only = np.flatnonzero(similar & ~correlated & ~duplicate)
        listed = list(decisive[:cap]) + list(similar_only[:max(cap - decisive.size, 0)])
        exact = {int(p): self._pair(int(p)) for p in listed}
        closest_ks = self._closest_ks(closest)
        closest_r = self._closest_correlation(closest)
        for p in closest_ks + closest_r:
            exact[p] = self._pair(p)
        return originality_record(self.snap.keys, decisive.tolist(), similar_only.tolist(), exact,
                                  closest_ks, closest_r, self.rules, cap)

    def _bounds(self, positions, rows, segment):
        """Correlation interval and KS count bounds of one segment's pairs.

        Upper KS bounds are taken only where the lower one leaves a clause
        possible, which is also where :meth:`_classify` needs them.
        """
        if not self.cand.constant:
            r, margin, applies = self._correlation_bounds(positions, rows, segment)
            self.r[positions], self.margin[positions], self.applies[positions] = r, margin, applies
        gather, index = self._rows_view(rows)
        counts = segment.counts if gather is None else segment.counts[gather]
        mine = self.cand.counts[1:-1].astype(counts.dtype)  # |a - b| = max - min: exact in the narrow type
        spread = np.maximum(counts, mine)
        spread -= np.minimum(counts, mine)
        lower = spread.max(axis=1)[index]
        self.lower[positions] = lower
        near = lower < max(self.dup_cut, self.similar_cut)
        if np.any(near):
            other = self._extended(segment.counts[rows[near]])
            self.upper[positions[near]] = np.max(cell_bounds(other, self.cand.counts), axis=1)

    def _extended(self, inner):
        """Extended grid counts ``[0, C..., n]`` (int64) of rows of inner counts."""
        inner = np.atleast_2d(inner).astype(np.int64)
        edge = np.ones((inner.shape[0], 1), dtype=np.int64)
        return np.concatenate([0 * edge, inner, self.snap.n * edge], axis=1)

    def _counts(self, position):
        """Extended grid counts of one other submission of the snapshot."""
        slot = self.snap.slots[position]
        return self._extended(self.snap.segments[slot // SEGMENT_ROWS].counts[slot % SEGMENT_ROWS])[0]

    def _classify(self):
        """Boolean arrays (correlated, duplicate, similar) over positions, exact.

        ``similar`` is the clause ``k <= similar`` on its own; a pair is
        listed as similar only when it is neither correlated nor a duplicate.
        """
        limit = self.rules.correlation_limit
        r, margin, applies = self.r, self.margin, self.applies
        correlated = applies & (r - margin > limit)
        for p in np.flatnonzero(applies & ~correlated & ~(r + margin <= limit)):
            value = self._correlation_exact(int(p))
            correlated[p] = value is not None and abs(value) > limit
        lower, upper = self.lower, self.upper
        near = upper >= 0  # upper is known wherever a KS clause is possible
        duplicate = near & (upper < self.dup_cut)
        similar = near & (upper < self.similar_cut)
        open_dup = near & (lower < self.dup_cut) & (upper >= self.dup_cut)
        open_similar = near & (lower < self.similar_cut) & (upper >= self.similar_cut)
        for p in np.flatnonzero(open_dup | open_similar):
            k = self._count(int(p))
            duplicate[p], similar[p] = k < self.dup_cut, k < self.similar_cut
        return correlated, duplicate, similar & ~duplicate

    def _closest_ks(self, closest):
        """Positions of the ``closest`` smallest exact KS (ties by position)."""
        positions = np.arange(self.lower.size)
        return self._best(closest, np.lexsort((positions, self.lower)), self.lower,
                          lambda p: self._count(p))

    def _closest_correlation(self, closest):
        """Positions of the ``closest`` largest exact |correlation| (ties by position)."""
        applicable = np.flatnonzero(self.applies)
        best_possible = -(self.r + self.margin)  # a lower bound of -|r| for every pair
        order = applicable[np.lexsort((applicable, best_possible[applicable]))]

        return self._best(closest, order, best_possible, lambda p: ranked_correlation(self._correlation_exact(p)))

    @staticmethod
    def _best(closest, order, bound, exact_key):
        """The ``closest`` positions with the smallest ``(exact_key(p), p)``.

        ``order`` lists candidate positions by ``(bound[p], p)``, where
        ``bound[p] <= exact_key(p)``; positions are made exact in that
        order until the next one's ``(bound, position)`` cannot beat the
        current ``closest``-th best, so only a handful are ever exact.
        ``exact_key`` returning None leaves the position out.
        """
        if closest <= 0:
            return []
        best = []
        for p in order:
            p = int(p)
            if len(best) >= closest and (bound[p], p) > best[closest - 1]:
                break
            value = exact_key(p)
            if value is not None:
                best = sorted(best + [(value, p)])[:closest]
        return [p for _, p in best]

    def _count(self, position):
        """Exact KS count of one pair (cached; counted in ``stats["ks_exact"]``)."""
        if position not in self.counts_k:
            self.counters["ks_exact"] += 1
            other = np.sort(self._exact(position))
            cut = int(self.lower[position])  # the count is at least its lower bound
            self.counts_k[position] = ks_count_from(self.cand.ordered, self.cand.counts, other,
                                                    self._counts(position), cut)
        return self.counts_k[position]

    def _correlation_exact(self, position):
        """The plain rule's correlation of one pair (cached), None when either vector is constant."""
        if position not in self.r_exact:
            slot = self.snap.slots[position]
            if self.cand.constant or self.snap.meta["constant"][slot]:
                self.r_exact[position] = None
            else:
                self.counters["correlation_exact"] += 1
                self.r_exact[position] = pearson(self.values, self._exact(position))
        return self.r_exact[position]

    def _pair(self, position):
        """Exact ``(ks, correlation)`` of a listed pair, as the plain functions give them."""
        return self._count(position) / self.snap.n, self._correlation_exact(position)
