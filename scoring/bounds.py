"""The proven bounds behind the fast originality checks, and nothing else.

:mod:`scoring.prepared` decides almost every pair of a check from the
bounds below and settles the rest with the plain float64 functions, so
its decisions are exactly the plain rule's. Every function here states
what it guarantees and why; none of them decides anything itself.

Three families:

* Rounding of the correlation (:func:`gamma`, :func:`vector_bounds`,
  :func:`pair_margins`): how far a correlation taken from float32 copies
  can be from the one :func:`scoring.originality.pearson` returns.
* Projection onto a round basis (:func:`basis_error`,
  :func:`coefficient_error`, :func:`residual_bound`,
  :func:`projected_widths`): an interval for that same correlation from
  a few dozen coefficients per submission, without reading its vector.
* Kolmogorov-Smirnov counts on a grid (:func:`cutoff`,
  :func:`ks_interval`, :func:`cell_bounds`, :func:`count_spread`,
  :func:`certainly_far`, :func:`ks_count_in_cells`, :class:`CellPicker`,
  :func:`make_grid`, :func:`grid_counts`, :func:`coarse_columns`): lower and upper bounds
  of the exact KS count from a sketch of sorted values, and the exact
  count from the few values that can matter.
"""
import dataclasses
import math

import numpy as np

#: Values per float32 block; block dot products are summed in float64.
#: The rounding bound of a block grows with its length: 1024 keeps the
#: undecided correlation band about +-6e-5 (a pair that close to the limit
#: is rare, and settled exactly), while a pair's product makes a quarter
#: of the calls 256 would, a quarter faster per row.
BLOCK = 1024
#: Grid points for the KS sketch (about 11 values per cell at n=45,000).
GRID_POINTS = 4096
#: Grid points of the coarse KS sketch, a subset of the grid's. Nearly all
#: pairs of a real round are many hundreds of counts apart, which 64 evenly
#: spaced points already prove; only the rest read the whole sketch.
COARSE_POINTS = 64
#: Value ranges a vector's values in some cells are picked with (see
#: :class:`CellPicker`): each costs a few passes over the vector; fewer
#: ranges pick more values outside the cells, which are then dropped.
PICK_RANGES = 4

#: Unit roundoff of float64 and float32.
U64 = 2.0 ** -53
U32 = 2.0 ** -24
#: Smallest normal float32: bounds the absolute error of a float32 value
#: or product that underflows, whether flushed to zero or subnormal.
TINY32 = 2.0 ** -126
#: A vector whose relative rounding error is this large gets no bound.
MAX_RELATIVE_ERROR = 0.5
#: A vector with values this large gets no bound: its centred values (at
#: most twice as large) and their float32 products summed by BLOCK then
#: stay far below float32's overflow at 2**128.
MAX_MAGNITUDE = 2.0 ** 55
#: Final safety on every margin: relative, and absolute for the float64
#: rounding of the comparisons ``|r| -+ margin`` themselves.
MARGIN_RELATIVE_SAFETY = 1e-6
MARGIN_ABSOLUTE_SAFETY = 1e-15


def gamma(k, unit):
    """Higham's gamma_k: bounds the relative error of k rounded operations."""
    return k * unit / (1 - k * unit)


def widen(width):
    """``width`` grown by the final safety, so float64 rounding of the
    bound's own evaluation (a few operations, relative error below 1e-14)
    and of the comparisons made with it cannot turn it into a non-bound."""
    return width * (1 + MARGIN_RELATIVE_SAFETY) + MARGIN_ABSOLUTE_SAFETY


# -- rounding of the correlation ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VectorBounds:
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
    Values beyond :data:`MAX_MAGNITUDE` get no bound: float32 would
    overflow, which none of these terms covers.
    """
    n = values.size
    root_n = math.sqrt(n)
    nu = gamma(n, U64) + 2 * U64
    largest = float(np.max(np.abs(values)))
    if not largest <= MAX_MAGNITUDE:
        return VectorBounds(math.inf, math.inf, 0.0)
    shift = gamma(n + 2, U64) * largest * (1 + 1e-9)
    exact_floor = norm / ((1 + nu) * (1 + U64)) - root_n * shift * (1 + U64)
    if not exact_floor > 0:
        return VectorBounds(math.inf, math.inf, 0.0)
    rho64 = root_n * shift * (1 + U64) / exact_floor + U64
    rho32 = rho64 + U32 * (1 + rho64) + root_n * TINY32 / exact_floor
    if rho32 >= MAX_RELATIVE_ERROR:
        return VectorBounds(math.inf, math.inf, 0.0)
    angle = math.pi / 2 * (rho64 + rho32)
    scale = (U32 + root_n * TINY32 / exact_floor * (1 + nu) + nu) * 1.01
    return VectorBounds(angle, scale, exact_floor * (1 - rho32))


def block_dot_error(blocks):
    """Relative error of a dot product taken in float32 blocks of BLOCK values
    whose results are summed in float64: ``gamma_B(u32)`` for each block
    (any order of summation, fused or not), ``gamma_nb(u64)`` for their sum,
    both relative to ``sum |v_i w_i|``."""
    g_blocks = gamma(BLOCK, U32)
    return g_blocks + gamma(blocks, U64) * (1 + g_blocks)


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

    The same margin also bounds ``|t - r_plain|`` for the exact quotient
    ``t = <v32, w32> / (norm_v norm_w)`` of the stored copies: ``t`` is
    the cosine of their angle, within the summed angles of ``r_true``,
    times a ratio within ``P - 1`` of 1; the block rounding terms only add
    to it. :func:`projected_widths` relies on this.
    """
    g_blocks = gamma(BLOCK, U32)
    g_dot = block_dot_error(blocks)
    # Each float32 product and, when flushing to zero, each float32 sum
    # may lose up to TINY32 absolutely; float64 underflow in the plain
    # computation is covered with room to spare by the same term.
    underflow = 2 * n * TINY32 * (1 + g_blocks) * (1 + gamma(blocks, U64))
    plain = 2.2 * gamma(n, U64) + 5 * U64
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = (1 + cand.scale) * (1 + scale) * (1 + U64) ** 2
        margin = cand.angle + angle + (g_dot + underflow / (cand.floor * floor)) * p + (p - 1) + plain
        margin = widen(margin)
    return np.where(np.isfinite(margin) & (floor > 0), margin, np.inf)


# -- projection onto a round basis ------------------------------------------------
#
# A round basis is a float32 matrix Q (d x m, m = blocks * BLOCK) whose
# rows are close to orthonormal; W = Q Q^T, and eta >= ||W - I||_2. For a
# stored vector v32 with float64 norm N, let x = v32 / N, c = Q x (exact)
# and P the orthogonal projector onto the row space of Q. Then
#
#     <x, y> = <P x, P y> + <(I - P) x, (I - P) y>,   <P x, P y> = c_x^T W^-1 c_y,
#
# so with stored float32 coefficients k ~ c (||k - c|| <= delta), residual
# bounds rho >= ||(I - P) x|| and sizes M >= max(||c||, ||k||), the exact
# quotient t = <x, y> lies within
#
#     rho_x rho_y + (eta / (1 - eta) + gamma_d(u32)) M_x M_y
#       + M_x delta_y + delta_x M_y + 2 d TINY32
#
# of the float32 dot product of k_x and k_y (Cauchy-Schwarz for the
# residuals, ||W^-1 - I|| <= eta / (1 - eta), the coefficient errors, and
# the rounding of a d-term float32 dot product). pair_margins bounds
# |t - r_plain|, and together they bound the plain correlation.

def basis_error(rows):
    """``eta >= ||Q Q^T - I||_2`` for the float32 basis ``rows`` (d x m), rounded up.

    ``W`` is computed in float64; each entry is off by at most
    ``gamma_m(u64) ||q_i|| ||q_j||`` whatever the summation order, so the
    Frobenius norm of ``W - I`` (computed with relative error far below the
    safety) plus ``d gamma_m max ||q_i||^2`` bounds the spectral norm.
    """
    q = np.asarray(rows, dtype=np.float64).reshape(rows.shape[0], -1)
    d, m = q.shape
    w = q @ q.T
    spread = float(np.linalg.norm(w - np.eye(d)))
    largest = float(np.max(np.diag(w))) * (1 + gamma(m, U64)) if d else 0.0
    eta = spread * (1 + gamma(d * d + 2, U64)) + d * gamma(m, U64) * largest
    return widen(eta)


def coefficient_error(n, blocks, d, eta, coef_norm, scale, norm):
    """``delta >= ||k32 - c||``: the stored float32 coefficients of a vector
    against the exact ``c = Q v32 / N``.

    Each coefficient is a block dot product (error :func:`block_dot_error`
    of ``sum |q_i v_i| <= ||q|| ||v32|| <= sqrt(1 + eta) (1 + scale) N``,
    plus underflow), divided by ``N`` in float64 (``u64`` relative), then
    rounded to float32 (``u32`` relative, ``TINY32`` when underflowing);
    ``d`` coefficients multiply the worst one by ``sqrt(d)``. ``coef_norm``
    is the float64 norm of the coefficients before float32 rounding.
    Vectorised over ``coef_norm``, ``scale`` and ``norm``.
    """
    root_d = math.sqrt(d)
    underflow = 2 * n * TINY32 * (1 + gamma(blocks, U64))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        per_coordinate = block_dot_error(blocks) * math.sqrt(1 + eta) * (1 + scale) + underflow / norm
        delta = root_d * per_coordinate * (1 + 2 * U64) + (U32 + 2 * U64) * coef_norm + root_d * TINY32
        delta = widen(delta)
    return np.where(np.isfinite(delta) & (norm > 0), delta, np.inf)


def projection_size(eta, scale, delta):
    """``M >= max(||c||, ||k32||)``: ``||Q x|| <= sqrt(1 + eta) ||x||`` and
    ``||x|| = ||v32|| / N <= 1 + scale``; the stored coefficients are within
    ``delta`` of ``c``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return widen(math.sqrt(1 + eta) * (1 + scale) + delta)


def residual_bound(eta, coef_norm32, scale, delta):
    """``rho >= ||(I - P) x||`` with ``x = v32 / N``.

    ``||(I - P) x||^2 = ||x||^2 - c^T W^-1 c <= (1 + scale)^2 - ||c||^2 / (1 + eta)``
    and ``||c|| >= ||k32|| - delta``. ``coef_norm32`` is the float64 norm of
    the stored float32 coefficients (relative error below ``gamma_(d+2)``,
    taken as 1e-12, far above it for any basis size in use). The
    subtraction is bounded term by term: each side is rounded in the
    direction that can only grow the result.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        inside = np.maximum(coef_norm32 * (1 - 1e-12) - delta, 0.0)
        square = (1 + scale) ** 2 * (1 + 8 * U64) - inside ** 2 / (1 + eta) * (1 - 8 * U64)
        rho = widen(np.sqrt(np.maximum(square, 0.0)) * (1 + 2 * U64))
    return np.where(np.isfinite(rho), rho, np.inf)


def projected_widths(d, eta, cand, rho, delta, size, margin):
    """Half-widths ``w``: the plain correlation lies within ``s +- w``, ``s``
    the float32 dot product of the two vectors' stored coefficients.

    ``cand`` is ``(rho, delta, size)`` of the candidate; the others are
    arrays. See the derivation above :func:`basis_error`; ``margin`` is
    :func:`pair_margins`. Infinite where any term is.
    """
    cand_rho, cand_delta, cand_size = cand
    if not eta < 1:
        return np.full(np.shape(rho), np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        spread = (eta / (1 - eta) + gamma(d, U32)) * cand_size * size
        width = cand_rho * rho + spread + cand_size * delta + cand_delta * size + 2 * d * TINY32 + margin
        width = widen(width)
    return np.where(np.isfinite(width), width, np.inf)


# -- Kolmogorov-Smirnov counts on a grid -------------------------------------------

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
    is how a check bounds many pairs at once. The difference of the
    two empirical CDFs at a grid point equals their difference at the
    largest data value not above it (or 0), one of the values ks_counts
    maximises, so the largest is a lower bound. For t in the cell
    ``(G[j-1], G[j]]`` the CDFs lie between their values at the cell's
    ends, so ``F_a(t) - F_b(t) <= C_a[j] - C_b[j-1]`` and symmetrically,
    which bounds every t from above.
    """
    a = np.asarray(counts_a, dtype=np.int64)
    b = np.asarray(counts_b, dtype=np.int64)
    return np.abs(a - b).max(axis=-1), cell_bounds(a, b).max(axis=-1)


def cell_bounds(a, b):
    """Upper bound of ``|F_a - F_b|`` within each cell, from extended counts."""
    return np.maximum(a[..., 1:] - b[..., :-1], b[..., 1:] - a[..., :-1])


def count_spread(counts, mine):
    """Per row, ``max |counts - mine|``: a lower bound of the KS count (see
    :func:`ks_interval`) for any subset of grid points.

    Works in the counts' own unsigned type without overflow:
    ``|a - b| = max(a, b) - min(a, b)``.
    """
    mine = mine.astype(counts.dtype)
    spread = np.maximum(counts, mine)
    spread -= np.minimum(counts, mine)
    return spread.max(axis=-1)


def certainly_far(counts, mine, far):
    """Rows whose KS count is certainly ``>= far``, from modular arithmetic.

    With ``cut = far - 1``, ``w = C_o - C_c + cut`` taken modulo the
    count type's range lies in ``[0, 2 cut]`` whenever the true
    difference lies in ``[-cut, cut]``. So ``w > 2 cut`` at any grid
    point proves a difference beyond ``cut`` there, i.e. ``k >= far``.
    Wrap-around can only hide differences, never invent them. Any subset
    of grid points gives a valid proof.
    """
    cut = far - 1
    dtype = counts.dtype
    if cut < 0 or 2 * cut >= np.iinfo(dtype).max:
        return np.zeros(counts.shape[0], dtype=bool)
    shifted = np.subtract(counts, mine.astype(dtype))
    shifted += dtype.type(cut)
    return shifted.max(axis=1) > 2 * cut


def ks_count_in_cells(a_sorted, counts_a, b_picker, counts_b, cut):
    """``ks_counts(a_sorted, sort(b))`` whenever it is at least ``cut``; otherwise a value below ``cut``.

    Only cells whose bound (:func:`cell_bounds`) reaches ``cut`` can hold
    a point where the CDFs differ by ``cut`` or more, so the CDF
    differences are evaluated at the data values in those cells only, plus
    at the grid points (whose differences are attained at data values,
    see :func:`ks_interval`). For a point ``t`` in cell ``j``, ``#{a <= t}``
    is ``C_a[j]`` (the values below the cell) plus the values of cell
    ``j`` up to ``t``; among the sorted picked values of all wanted cells
    those are the ones up to ``t`` minus the ones of earlier wanted cells
    (:func:`merged_difference`). So each difference is exactly one
    ks_counts evaluates, and the result
    ``r`` satisfies ``r <= k`` and ``r == k`` when ``k >= cut``; hence
    ``r < c`` exactly when ``k < c`` for every ``c >= cut``.

    ``a`` is given sorted (a candidate is sorted once for all its pairs),
    so its cells are slices; ``b``'s values in the cells come from
    ``b_picker`` (a :class:`CellPicker`), without sorting ``b``.
    """
    # ndarray methods rather than numpy's functions in this hot path: the
    # arrays are small and the functions' Python wrappers cost more than they do
    a_counts = np.asarray(counts_a, dtype=np.int64)
    b_counts = np.asarray(counts_b, dtype=np.int64)
    found = int(np.abs(a_counts - b_counts).max())
    wanted = (cell_bounds(a_counts, b_counts) >= cut).nonzero()[0]
    if not wanted.size:
        return found
    a_lengths = a_counts[wanted + 1] - a_counts[wanted]
    a_in = a_sorted[spans(a_counts[wanted], a_lengths)]
    b_in, b_lengths = b_picker(wanted)
    if not a_in.size + b_in.size:
        return found
    return max(found, merged_difference(a_in, a_counts[wanted], a_lengths, b_in, b_counts[wanted], b_lengths))


def merged_difference(a_in, a_below, a_lengths, b_in, b_below, b_lengths):
    """``max |F_a(t) - F_b(t)|`` over the picked values ``t`` of both vectors.

    ``*_in`` are each vector's values in the wanted cells, sorted, with
    ``*_lengths`` of them per cell and ``*_below`` values below each cell.
    The two are merged (cells are disjoint intervals, so the merge keeps
    them in order and cell ``i`` takes ``a_lengths[i] + b_lengths[i]``
    places); at a place ``p`` the picked values of ``a`` up to it number
    ``cumsum(is_a)[p]``. At the last of a run of equal values that is
    ``#{a_in <= t}``, and ``F_a(t)`` is that plus the values below the
    cell less the picked values of earlier cells.
    """
    size = a_in.size + b_in.size
    at_b = a_in.searchsorted(b_in, side="left") + np.arange(b_in.size)
    from_b = np.zeros(size, dtype=bool)
    from_b[at_b] = True
    merged = np.empty(size)
    merged[at_b] = b_in
    merged[~from_b] = a_in
    ends = np.empty(size, dtype=bool)
    np.not_equal(merged[1:], merged[:-1], out=ends[:-1])
    ends[-1] = True
    last = ends.nonzero()[0]
    cell = np.arange(a_lengths.size).repeat(a_lengths + b_lengths)[last]
    b_upto = from_b.cumsum()[last]
    a_upto = last + 1 - b_upto
    a_base = a_below - (a_lengths.cumsum() - a_lengths)
    b_base = b_below - (b_lengths.cumsum() - b_lengths)
    return int(np.abs((a_upto + a_base[cell]) - (b_upto + b_base[cell])).max())


class CellPicker:
    """One vector's values lying in given cells of a grid, without sorting or searching all of them.

    Cell ``j`` is ``(E[j], E[j+1]]`` for the extended grid ``E = [-inf,
    G..., +inf]``: the assignment :func:`grid_counts` makes.

    ``proxy`` holds ``f(x_i)`` for a non-decreasing ``f`` that
    ``proxy_of`` computes elementwise the same way (the stored float32
    copy ``fl32(x - mean)`` is one; the values themselves another). A value
    of a run of cells ``j1..j2`` has ``f(E[j1]) <= f(x) <= f(E[j2 + 1])``,
    so comparing the proxies with those two numbers picks a superset of
    the run's values; runs separated by the smallest gaps are merged, which
    only adds values, until at most :data:`PICK_RANGES` remain.
    ``exact(indices)`` gives the picked values exactly, which are sorted and
    cut at the cell ends exactly.
    """

    def __init__(self, edges, proxy, proxy_of, exact):
        self.edges = edges
        self.proxy = proxy
        self.proxy_of = proxy_of
        self.exact = exact

    def __call__(self, cells):
        """``(sorted values lying in cells, how many in each cell)``; ``cells`` sorted."""
        firsts, lasts = merged_runs(cells, PICK_RANGES)
        low, high = self.proxy_of(self.edges[firsts]), self.proxy_of(self.edges[lasts + 1])
        proxy = self.proxy
        mask = (proxy >= low[0]) & (proxy <= high[0])
        for lo, hi in zip(low[1:], high[1:]):
            mask |= (proxy >= lo) & (proxy <= hi)
        near = self.exact(mask.nonzero()[0])
        near.sort()
        ends = self.edges[np.concatenate((cells, cells + 1))]
        cut = near.searchsorted(ends, side="right")
        size = cells.size
        lengths = cut[size:] - cut[:size]
        return near[spans(cut[:size], lengths)], lengths


def merged_runs(cells, most):
    """``(firsts, lasts)`` of runs of neighbouring cells (sorted indices), the runs
    separated by the smallest gaps merged until at most ``most`` remain."""
    breaks = ((cells[1:] - cells[:-1]) > 1).nonzero()[0]
    if breaks.size >= most:
        gaps = cells[breaks + 1] - cells[breaks]
        breaks = np.sort(breaks[gaps.argsort(kind="stable")[breaks.size - most + 1:]])
    firsts = np.concatenate((cells[:1], cells[breaks + 1]))
    lasts = np.concatenate((cells[breaks], cells[-1:]))
    return firsts, lasts


def extended_grid(grid):
    """``[-inf, G..., +inf]``: cell ``j`` of the grid is ``(E[j], E[j+1]]``."""
    return np.concatenate(([-np.inf], grid, [np.inf]))


def spans(starts, lengths):
    """Concatenated ``arange(start, start + length)`` for each pair, as one index array."""
    offsets = lengths.cumsum() - lengths
    return np.arange(int(lengths.sum())) + (starts - offsets).repeat(lengths)


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


def coarse_columns(grid_size, points=COARSE_POINTS):
    """Indices of the grid points kept in the coarse sketch, evenly spread.

    Any subset of grid points gives a lower bound of the KS count
    (:func:`ks_interval`), so the choice only affects how many pairs the
    coarse pass decides.
    """
    return np.unique(np.rint(np.linspace(0, grid_size - 1, min(points, grid_size))).astype(np.intp))
