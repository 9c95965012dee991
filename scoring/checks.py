"""One originality check of a candidate against a snapshot of a prepared round.

The order of work, cheapest first, each step only for the pairs the
previous one left open:

1. the round-basis screen: a correlation interval for every pair from
   the stored coefficients (:func:`scoring.bounds.projected_widths`);
   pairs of different model families end here;
2. the coarse KS sketch: a lower bound of every pair's KS count from 64
   grid points (:func:`scoring.bounds.certainly_far`,
   :func:`scoring.bounds.count_spread`); pairs far from both KS
   thresholds end here;
3. the full KS sketch (:func:`scoring.bounds.ks_interval`) for the few
   pairs near them, and float32 block products
   (:func:`scoring.bounds.pair_margins`) for the few pairs the screen
   left open;
4. the plain float64 computation (``centered_pearson`` and the exact KS
   count from the values in the cells that can matter) for pairs no
   bound decided.

:class:`Check` decides the verdict and stops at the first certainty;
:class:`Explanation` classifies every pair and lists the nearest ones,
refining only the pairs whose bounds could place them in the lists.
"""
import dataclasses
import functools
import heapq
import threading

import numpy as np

from scoring.bounds import (
    CellPicker,
    certainly_far,
    count_spread,
    cutoff,
    ks_count_in_cells,
    ks_interval,
    pair_margins,
    projected_widths,
)
from scoring.evidence import originality_record, ranked_correlation
from scoring.originality import centered_pearson

#: Above this share of a segment's rows wanted, the whole segment is
#: multiplied in one batched product instead of row by row.
GATHER_SHARE = 0.25
#: Rows whose coarse KS sketches are compared in one step: keeps the
#: temporaries small enough to stay in the allocator's cache.
COARSE_CHUNK = 512
#: Refinement levels of a pair's bound in the closest lists: from the
#: screen or coarse sketch, from products or the full sketch, exact.
SCREENED, REFINED, EXACT = 1, 2, 3
#: Pairs taken together from the sorted bounds in the closest lists, so
#: that the few whose screen bounds need refining are refined in one step.
REFINE_BATCH = 8

_scratch = threading.local()


@functools.lru_cache(maxsize=64)
def cutoffs(n, duplicate_ks, similar_ks):
    """The KS clauses as integer cut-offs ``(duplicate, similar)`` on the count (see
    :func:`scoring.bounds.cutoff`); the same few rules and n come back for every check."""
    return (cutoff(n, lambda k: k / n < duplicate_ks), cutoff(n, lambda k: k / n <= similar_ks))


def scratch(name, size, dtype=np.float64):
    """A per-thread buffer of ``size`` values, reused from check to check.

    A fresh n-sized temporary per pair costs more in page faults (the
    allocator hands such sizes back to the kernel when freed) than the
    arithmetic done on it.
    """
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.size != size or buffer.dtype != dtype:
        buffer = buffers[name] = np.empty(size, dtype)
    return buffer


def recover(centered32, mean, scale, out):
    """Rebuild values written with at most log10(scale) decimals from the
    float32 copy, into ``out``: ``rint((mean + c) * scale) / scale``."""
    np.add(centered32, mean, out=out, dtype=np.float64)
    np.multiply(out, scale, out=out)
    np.rint(out, out=out)
    np.divide(out, scale, out=out)
    return out


class ExactValuesChanged(RuntimeError):
    """``fetch_exact(key)`` returned values other than those added under ``key``.

    The check cannot go on with that submission: its float32 copy and its
    exact values disagree. ``key`` says which, so a caller can leave it out.
    """

    def __init__(self, key):
        super().__init__("fetch_exact(%r) returned values other than those added" % (key,))
        self.key = key


@dataclasses.dataclass
class Snapshot:
    """What one check needs, taken under the round's lock; nothing in it is
    rewritten while the check runs (see ``PreparedRound._retire``)."""

    n: int
    blocks: int
    grid: np.ndarray
    edges: np.ndarray       # the extended grid [-inf, G..., +inf]
    segments: tuple
    meta: dict
    basis: object
    keys: list
    slots: np.ndarray
    segment_rows: int
    fetch_exact: object
    own_slot: object = None
    own_sorted: object = None   # the own slot's sorted values, when kept

    def data(self, slot):
        """The stored float32 blocks of a slot, ``(blocks, BLOCK)``."""
        return self.segments[slot // self.segment_rows].data[slot % self.segment_rows]

    def flat(self, slot):
        """The stored float32 centred values of a slot (n of them)."""
        return self.data(slot).reshape(-1)[: self.n]

    def counts(self, slot):
        """Extended grid counts ``[0, C..., n]`` (int64) of a slot."""
        inner = self.segments[slot // self.segment_rows].counts[slot % self.segment_rows]
        counts = np.empty(inner.size + 2, dtype=np.int64)
        counts[0], counts[1:-1], counts[-1] = 0, inner, self.n
        return counts

    def stored_values(self, slot, out):
        """Exact values rebuilt from the float32 copy (recoverable slots only)."""
        return recover(self.flat(slot), self.meta["mean"][slot], self.meta["recovery"][slot], out)

    def fetched_values(self, position):
        """Exact values from ``fetch_exact``, checked against the stored copy."""
        key = self.keys[position]
        slot = self.slots[position]
        values = np.ascontiguousarray(self.fetch_exact(key), dtype=np.float64)
        if values.shape != (self.n,) or not np.array_equal((values - self.meta["mean"][slot]).astype(np.float32),
                                                            self.flat(slot)):
            raise ExactValuesChanged(key)
        return values


@dataclasses.dataclass
class Candidate:
    """The candidate of a check: exact values and the same sketch as a stored vector."""

    values: np.ndarray      # exact float64
    blocks32: np.ndarray    # (blocks, BLOCK) float32, centred, zero padded
    mean: float
    norm: float
    constant: bool
    bounds: object          # scoring.bounds.VectorBounds
    counts: np.ndarray      # extended grid counts, int64
    coarse: np.ndarray      # counts at the coarse columns, the stored count type
    projection: object      # (coef, rho, delta, size) on the snapshot's basis, or None
    ordered: object = None  # the values sorted, when at hand


class _Pairs:
    """Bounds of the candidate against every other of a snapshot, step by step."""

    def __init__(self, snap, cand, rules, counters):
        self.snap = snap
        self.cand = cand
        self.rules = rules
        self.counters = counters
        self.dup_cut, self.similar_cut = cutoffs(snap.n, rules.duplicate_ks, rules.similar_ks)
        self.far = max(self.dup_cut, self.similar_cut)
        self.needed_similar = max(rules.max_similar, 1)
        self.slots = snap.slots
        self.applies = np.zeros(self.slots.size, dtype=bool) if cand.constant else ~snap.meta["constant"][self.slots]
        self.fetched = {}
        self.recovered_slot = None
        self.cand_centered = None
        self.cand_sorted = cand.ordered
        counters["pairs"] += self.slots.size

    # -- correlation ---------------------------------------------------------

    def screen(self):
        """``(|s|, w)`` for every pair: the plain ``|pearson|`` lies within
        ``|s| +- w``. ``w`` is infinite without a basis or a usable bound."""
        size = self.slots.size
        basis, projection = self.snap.basis, self.cand.projection
        if basis is None or projection is None:
            return np.zeros(size), np.full(size, np.inf)
        meta = self.snap.meta
        slots = self.slots
        coef, rho, delta, extent = projection
        s = np.einsum("kd,d->k", meta["coef"], coef)[slots].astype(np.float64)
        margin = self._margins(slots)
        width = projected_widths(basis.size, basis.eta, (rho, delta, extent), meta["rho"][slots],
                                 meta["delta"][slots], meta["size"][slots], margin)
        finite = np.isfinite(s)
        return np.where(finite, np.abs(s), 0.0), np.where(finite, width, np.inf)

    def _margins(self, slots):
        meta = self.snap.meta
        return pair_margins(self.snap.n, self.snap.blocks, self.cand.bounds,
                            meta["angle"][slots], meta["scale"][slots], meta["floor"][slots])

    def products(self, positions):
        """``(|r|, margin)`` per position from float32 block products: the plain
        ``|pearson|`` lies within ``|r| +- margin``."""
        slots = self.slots[positions]
        dots = np.empty(slots.size)
        for where, segment in self._by_segment(slots):
            rows = slots[where] % self.snap.segment_rows
            if rows.size > GATHER_SHARE * self.snap.segment_rows:
                whole = np.matmul(segment.data.transpose(1, 0, 2), self.cand.blocks32[:, :, None])
                dots[where] = whole.sum(axis=0, dtype=np.float64)[rows, 0]
            else:
                blocks32 = self.cand.blocks32
                for at, row in zip(where.tolist(), rows.tolist()):
                    dots[at] = np.add.reduce(np.vecdot(segment.data[row], blocks32), dtype=np.float64)
        margin = self._margins(slots)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(dots / (self.cand.norm * self.snap.meta["norm"][slots]))
        return np.where(np.isfinite(margin), r, 0.0), margin

    def _by_segment(self, slots):
        """``(indices into slots, segment)`` for each segment holding some of ``slots``."""
        segment_of = slots // self.snap.segment_rows
        order = segment_of.argsort(kind="stable")
        ordered = segment_of[order]
        starts = [0] + ((ordered[1:] != ordered[:-1]).nonzero()[0] + 1).tolist() + [order.size]
        for start, end in zip(starts[:-1], starts[1:]):
            if end > start:
                yield order[start:end], self.snap.segments[ordered[start]]

    # -- KS ------------------------------------------------------------------

    def _coarse_chunks(self):
        """``(start, coarse sketches)`` of the snapshot's slots, a chunk at a time."""
        coarse = self.snap.meta["coarse"]
        for start in range(0, self.slots.size, COARSE_CHUNK):
            yield start, coarse[self.slots[start:start + COARSE_CHUNK]]

    def coarse_far(self):
        """Positions whose KS count is certainly at least ``far``."""
        far = np.zeros(self.slots.size, dtype=bool)
        for start, chunk in self._coarse_chunks():
            far[start:start + chunk.shape[0]] = certainly_far(chunk, self.cand.coarse, self.far)
        return far

    def coarse_lower(self):
        """A lower bound of every pair's KS count, from the coarse sketch."""
        lower = np.zeros(self.slots.size, dtype=np.int64)
        for start, chunk in self._coarse_chunks():
            lower[start:start + chunk.shape[0]] = count_spread(chunk, self.cand.coarse)
        return lower

    def full_interval(self, positions):
        """``(L, U)`` of the KS count per position, from the full sketches."""
        snap = self.snap
        counts = np.empty((len(positions), snap.grid.size + 2), dtype=np.int64)
        counts[:, 0], counts[:, -1] = 0, snap.n
        for i, slot in enumerate(self.slots[positions]):
            counts[i, 1:-1] = snap.segments[slot // snap.segment_rows].counts[slot % snap.segment_rows]
        return ks_interval(counts, self.cand.counts)

    # -- exact ---------------------------------------------------------------

    def exact(self, position):
        """Exact float64 values of one other submission.

        Rebuilt ones live in a per-thread buffer until the next call;
        fetched ones are kept for the rest of the check.
        """
        slot = int(self.slots[position])
        if self.snap.meta["recovery"][slot]:
            buffer = scratch("exact", self.snap.n)
            if self.recovered_slot != slot:
                self.snap.stored_values(slot, buffer)
                self.recovered_slot = slot
            return buffer
        if slot not in self.fetched:
            self.counters["fetched"] += 1
            self.fetched[slot] = self.snap.fetched_values(position)
        return self.fetched[slot]

    def pearson(self, position):
        """``scoring.originality.pearson(candidate, other)``, through the same
        ``centered_pearson`` on the same centred values, without temporaries.

        The stored means are ``values.mean()`` of the very same values, as
        pearson takes them (numpy's pairwise mean depends on the values only).
        """
        if self.cand_centered is None:
            values = self.cand.values
            self.cand_centered = np.subtract(values, self.cand.mean, out=scratch("candidate_centered", values.size))
            self.cand_squared = np.dot(self.cand_centered, self.cand_centered)
        other = self.exact(position)
        mean = self.snap.meta["mean"][self.slots[position]]
        centered = np.subtract(other, mean, out=scratch("other_centered", other.size))
        return centered_pearson(self.cand_centered, centered, self.cand_squared)

    def exact_at(self, position):
        """A function giving one other submission's exact values at some indices:
        rebuilt from the float32 copy for just those indices unless all are
        at hand, or taken from the fetched values."""
        slot = int(self.slots[position])
        meta = self.snap.meta
        if not meta["recovery"][slot]:
            return self.exact(position).__getitem__
        if self.recovered_slot == slot:
            return scratch("exact", self.snap.n).__getitem__
        flat, mean, scale = self.snap.flat(slot), meta["mean"][slot], meta["recovery"][slot]
        return lambda indices: recover(flat[indices], mean, scale, np.empty(indices.size))

    def ks_count(self, position, cut):
        """The exact KS count of one pair when it is at least ``cut``, else a value below ``cut``.

        The other's values in the cells that matter are picked through its
        stored float32 copy, ``fl32(x - mean)``, a non-decreasing function
        of its exact values computed here the same way for the grid.
        """
        self.counters["ks_exact"] += 1
        snap = self.snap
        slot = int(self.slots[position])
        n = snap.n
        if self.cand_sorted is None:
            self.cand_sorted = scratch("candidate_sorted", n)
            self.cand_sorted[:] = self.cand.values
            self.cand_sorted.sort()
        mean = snap.meta["mean"][slot]
        picker = CellPicker(snap.edges, snap.flat(slot), lambda grid: (grid - mean).astype(np.float32),
                            self.exact_at(position))
        return ks_count_in_cells(self.cand_sorted, self.cand.counts, picker, snap.counts(slot), cut)


class Check(_Pairs):
    """The verdict: stops at the first pair (or similar pairs) certainly not original.

    Any single correlated or duplicate pair, or ``max_similar`` similar
    ones, decide "not original" whatever order pairs are looked at
    (tests/scoring/test_rules_plain.py), so the order is the cheapest.
    """

    def run(self):
        self.similar = 0
        screened = self._screened()
        if screened is False:
            return False
        ks_open = self._ks()
        if ks_open is False:
            return False
        multiplied = self._multiplied(screened)
        if multiplied is False:
            return False
        return self._resolve(multiplied, ks_open)

    def _screened(self):
        """False if the screen proves a pair too correlated, else positions still open."""
        if not np.any(self.applies):
            return np.zeros(0, dtype=np.intp)
        s, width = self.screen()
        limit = self.rules.correlation_limit
        if np.any(self.applies & (s - width > limit)):
            return False
        return np.flatnonzero(self.applies & ~(s + width <= limit))

    def _multiplied(self, positions):
        """False if block products prove a pair too correlated, else positions still open."""
        if not positions.size:
            return positions
        r, margin = self.products(positions)
        limit = self.rules.correlation_limit
        if np.any(r - margin > limit):
            return False
        return positions[~(r + margin <= limit)]

    def _ks(self):
        """False if a pair is certainly a duplicate or similar pairs certainly
        reach the limit; else ``(position, lower, upper)`` rows still open."""
        none = np.zeros((0, 3), dtype=np.int64)
        if self.far == 0:
            return none
        near = np.flatnonzero(~self.coarse_far())
        if not near.size:
            return none
        lower, upper = self.full_interval(near)
        if np.any(upper < self.dup_cut):
            return False
        self.similar += int(np.count_nonzero(upper < self.similar_cut))
        if self.similar >= self.needed_similar:
            return False
        open_ = (lower < self.dup_cut) | ((lower < self.similar_cut) & (upper >= self.similar_cut))
        return np.stack([near[open_], lower[open_], upper[open_]], axis=1)

    def _resolve(self, corr_positions, ks_rows):
        """Settle the pairs no bound decided, with exact float64 values."""
        limit = self.rules.correlation_limit
        for position in corr_positions:
            self.counters["correlation_exact"] += 1
            if abs(self.pearson(position)) > limit:
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
        cuts = [c for c in (self.dup_cut, self.similar_cut) if lower < c <= upper]
        k = self.ks_count(position, min(cuts))
        if k < self.dup_cut:
            return False
        if k < self.similar_cut and upper >= self.similar_cut:
            self.similar += 1
        return self.similar < self.needed_similar


class Explanation(_Pairs):
    """Originality evidence for one candidate: every pair classified, few computed exactly.

    ``run`` takes the same bounds as :class:`Check` for every pair (no
    early stop: the evidence counts all offenders), settles the pairs the
    bounds leave open with exact values, and computes exact statistics for
    the pairs it lists. For the ``closest`` nearest pairs it refines pairs
    in the order of their bounds and stops as soon as no bound can beat
    the ``closest``-th best exact value (:meth:`_best`).
    """

    def run(self, closest, cap):
        self._correlation_bounds()
        self._ks_bounds()
        self.counts_k = {}                              # position -> exact KS count
        self.r_exact = {}                               # position -> exact correlation or None
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

    def _correlation_bounds(self):
        """``r_low <= |pearson| <= r_high`` for every applicable pair: the screen,
        then block products wherever the screen leaves the clause open."""
        size = self.slots.size
        self.r_low, self.r_high = np.full(size, -np.inf), np.full(size, np.inf)
        self.r_level = np.full(size, SCREENED, dtype=np.int8)
        if not np.any(self.applies):
            return
        s, width = self.screen()
        self.r_low, self.r_high = s - width, s + width
        limit = self.rules.correlation_limit
        self._refine_correlation(np.flatnonzero(self.applies & ~(self.r_high <= limit) & ~(self.r_low > limit)))

    def _refine_correlation(self, positions):
        if len(positions):
            r, margin = self.products(positions)
            self.r_low[positions], self.r_high[positions] = r - margin, r + margin
            self.r_level[positions] = REFINED

    def _ks_bounds(self):
        """A lower bound of every pair's KS count, and both bounds from the full
        sketch wherever the coarse one leaves a KS clause possible."""
        size = self.slots.size
        self.lower = self.coarse_lower() if self.far else np.zeros(size, dtype=np.int64)
        self.upper = np.full(size, -1, dtype=np.int64)  # -1: not computed
        self.ks_level = np.full(size, SCREENED, dtype=np.int8)
        self._refine_ks(np.flatnonzero(self.lower < self.far))

    def _refine_ks(self, positions):
        if len(positions):
            lower, upper = self.full_interval(positions)
            self.lower[positions] = np.maximum(self.lower[positions], lower)
            self.upper[positions] = upper
            self.ks_level[positions] = REFINED

    def _classify(self):
        """Boolean arrays (correlated, duplicate, similar) over positions, exact.

        ``similar`` is the clause ``k <= similar`` on its own; a pair is
        listed as similar only when it is neither correlated nor a duplicate.
        A pair whose KS count is not refined has a lower bound of at least
        both cut-offs, so it meets neither KS clause.
        """
        limit = self.rules.correlation_limit
        correlated = self.applies & (self.r_low > limit)
        for p in np.flatnonzero(self.applies & ~correlated & ~(self.r_high <= limit)):
            value = self._correlation_exact(int(p))
            correlated[p] = value is not None and abs(value) > limit
        lower, upper = self.lower, self.upper
        near = upper >= 0
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
        def refine(positions):
            self._refine_ks(positions)
            return self.lower[positions]

        return self._best(closest, np.arange(self.slots.size), self.lower, self.ks_level, refine, self._count)

    def _closest_correlation(self, closest):
        """Positions of the ``closest`` largest exact |correlation| (ties by position)."""
        def refine(positions):
            self._refine_correlation(positions)
            return -self.r_high[positions]

        return self._best(closest, np.flatnonzero(self.applies), -self.r_high, self.r_level, refine,
                          lambda p: ranked_correlation(self._correlation_exact(p)))

    @staticmethod
    def _best(closest, eligible, bound, level, refine, exact):
        """The ``closest`` eligible positions with the smallest ``(exact key, position)``.

        ``bound[p]`` is a lower bound of ``p``'s exact key; it is tighter
        where ``level[p]`` is REFINED. ``refine(positions)`` refines
        SCREENED positions and returns their new bounds; ``exact(p)`` gives
        the exact key, or None to leave ``p`` out. Pairs are taken in the
        order of ``(bound, position)`` from the sorted initial bounds, a few
        at a time (refined together), or from a heap of refined ones; a pair
        taken with its exact key is the next smallest, since every other
        pair's exact key is at least its bound. So only pairs whose bound
        can compete are refined or made exact.
        """
        if closest <= 0 or not eligible.size:
            return []
        order = eligible[np.argsort(bound[eligible], kind="stable")]
        heap, best, taken = [], [], 0
        while len(best) < closest:
            if taken < order.size and (not heap or (bound[order[taken]], order[taken]) < heap[0][:2]):
                batch = order[taken:taken + REFINE_BATCH]
                taken += batch.size
                rough = batch[level[batch] == SCREENED]
                if rough.size:
                    bound[rough] = refine(rough)
                for p in batch.tolist():
                    heapq.heappush(heap, (bound[p].item(), p, REFINED))
                continue
            if not heap:
                break
            value, p, at = heapq.heappop(heap)
            if at == EXACT:
                best.append(p)
                continue
            value = exact(p)
            if value is not None:
                heapq.heappush(heap, (value, p, EXACT))
        return best

    def _count(self, position):
        """Exact KS count of one pair (cached; counted in ``stats["ks_exact"]``)."""
        if position not in self.counts_k:
            if self.ks_level[position] == SCREENED:
                self._refine_ks([position])
            cut = int(self.lower[position])  # the count is at least its lower bound
            self.counts_k[position] = self.ks_count(position, cut)
        return self.counts_k[position]

    def _correlation_exact(self, position):
        """The plain rule's correlation of one pair (cached), None when either vector is constant."""
        if position not in self.r_exact:
            if not self.applies[position]:
                self.r_exact[position] = None
            else:
                self.counters["correlation_exact"] += 1
                self.r_exact[position] = self.pearson(position)
        return self.r_exact[position]

    def _pair(self, position):
        """Exact ``(ks, correlation)`` of a listed pair, as the plain functions give them.

        The correlation first: it rebuilds the other's exact values whole,
        which the KS count then indexes instead of rebuilding the few it needs.
        """
        correlation = self._correlation_exact(position)
        return self._count(position) / self.snap.n, correlation
