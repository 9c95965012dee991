"""The bounds of scoring.bounds, each tested on its own against the plain functions.

Every assertion is of the form "the plain value lies within the bound" (or
"the exact count is returned above the cut"), which holds on any machine
if the bound is right: nothing here depends on how this CPU or its BLAS
rounds. Hypothesis draws the inputs; hand-made cases pin the edges (ties,
copies, constants, tiny spreads, underflow, huge offsets, grids outside
the data, one-point grids, counts that wrap around their unsigned type).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.basis import RoundBasis
from scoring.bounds import (
    BLOCK,
    CellPicker,
    basis_error,
    certainly_far,
    coarse_columns,
    coefficient_error,
    count_spread,
    cutoff,
    extended_grid,
    grid_counts,
    ks_count_in_cells,
    ks_interval,
    make_grid,
    merged_runs,
    pair_margins,
    projected_widths,
    residual_bound,
    spans,
    vector_bounds,
)
from scoring.ks import ks_counts
from scoring.originality import is_constant, pearson
from scoring.prepared import prepare

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- KS counts on a grid -----------------------------------------------------------

def tie_heavy_pairs(rng):
    """Pairs of samples with many ties, copies, permutations and shifts."""
    for decimals in (1, 2, 5):
        for n in (1, 7, 1000):
            a = np.round(rng.beta(2, 2, n), decimals)
            yield a, np.round(rng.beta(2, 3, n), decimals)
            yield a, rng.permutation(a)
            yield a, np.round(np.clip(a + 10.0 ** -decimals, 0, 1), decimals)
            yield a, np.round(rng.beta(2, 2, n + 3), decimals)


def identity_picker(grid, values):
    """A CellPicker whose proxy is the values themselves."""
    return CellPicker(extended_grid(grid), values, lambda g: g, values.__getitem__)


def stored_picker(grid, values):
    """A CellPicker through the float32 copy the index stores, fl32(x - mean)."""
    mean = values.mean()
    proxy = (values - mean).astype(np.float32)
    return CellPicker(extended_grid(grid), proxy, lambda g: (g - mean).astype(np.float32), values.__getitem__)


def step_picker(grid, values):
    """A CellPicker through a coarse step function: many values share a proxy value."""
    return CellPicker(extended_grid(grid), np.floor(values * 4), lambda g: np.floor(g * 4), values.__getitem__)


PICKERS = (identity_picker, stored_picker, step_picker)


def test_ks_interval_brackets_the_exact_count():
    """The bounds a check decides KS pairs from, one pair at a time and stacked,
    and the exact count from the cells, through every kind of proxy."""
    rng = np.random.default_rng(2)
    for a, b in tie_heavy_pairs(rng):
        if a.size != b.size:
            continue
        a_sorted, b_sorted = np.sort(a), np.sort(b)
        exact = ks_counts(a_sorted, b_sorted)
        for grid in (make_grid(a, 3), make_grid(b, 64), make_grid(rng.random(50), 16), np.array([0.5])):
            counts_a, counts_b = grid_counts(a_sorted, grid), grid_counts(b_sorted, grid)
            lower, upper = ks_interval(counts_a, counts_b)
            assert lower <= exact <= upper
            same = ks_interval(counts_b, counts_b)
            stacked = ks_interval(np.stack([counts_a, counts_b, counts_a]), counts_b)
            assert stacked[0].tolist() == [lower, same[0], lower] and stacked[1].tolist() == [upper, same[1], upper]
            for cut in range(0, a.size + 2, max(1, a.size // 50)):
                for picker in PICKERS:
                    found = ks_count_in_cells(a_sorted, counts_a, picker(grid, b), counts_b, cut)
                    assert found <= exact
                    assert found == exact if exact >= cut else found < cut


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 333, 1000, 45000])
@pytest.mark.parametrize("threshold", [0.005, 0.03, 0.1 + 0.2, 0.3, 1 / 3, 0.0, 1.0, 1.5, -0.1])
def test_cutoff_is_the_plain_float_comparison(n, threshold):
    for predicate in (lambda k: k / n < threshold, lambda k: k / n <= threshold):
        brute = next((k for k in range(n + 1) if not predicate(k)), n + 1)
        assert cutoff(n, predicate) == brute


def tied_values(draw, n):
    """n values from a few distinct ones (ties), some far outside the rest."""
    pool = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=8))
    pool += draw(st.lists(st.sampled_from([-1e300, -1e-300, 0.0, 1e-300, 1e300]), max_size=2))
    return np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=np.float64)


@st.composite
def ks_cases(draw):
    """Two samples of one size with ties, a grid (from either sample, from other
    values, or of one point) and a cut anywhere in 0..n+1."""
    n = draw(st.integers(1, 40))
    a, b = tied_values(draw, n), tied_values(draw, n)
    kind = draw(st.sampled_from(["a", "b", "other", "one"]))
    if kind == "one":
        grid = np.array([draw(st.floats(-4, 4))])
    elif kind == "other":
        grid = np.unique(np.array(draw(st.lists(st.floats(-4, 4), min_size=1, max_size=12))))
    else:
        grid = make_grid(a if kind == "a" else b, draw(st.integers(1, 2 * n)))
    return a, b, grid, draw(st.integers(0, n + 1)), draw(st.sampled_from(PICKERS))


@PROPERTY
@given(ks_cases())
def test_ks_count_in_cells_is_exact_at_and_above_the_cut(case):
    a, b, grid, cut, picker = case
    a_sorted = np.sort(a)
    counts_a, counts_b = grid_counts(a_sorted, grid), grid_counts(np.sort(b), grid)
    exact = ks_counts(a_sorted, np.sort(b))
    found = ks_count_in_cells(a_sorted, counts_a, picker(grid, b), counts_b, cut)
    assert found == exact if exact >= cut else found < cut
    lower, upper = ks_interval(counts_a, counts_b)
    assert lower <= exact <= upper


@PROPERTY
@given(ks_cases(), st.data())
def test_cell_picker_picks_exactly_the_values_of_the_cells(case, data):
    _, values, grid, _, picker = case
    cells = np.array(sorted(data.draw(st.sets(st.integers(0, grid.size), min_size=1))), dtype=np.intp)
    picked, lengths = picker(grid, values)(cells)
    edges = extended_grid(grid)
    expected = [np.sort(values[(values > edges[j]) & (values <= edges[j + 1])]) for j in cells]
    assert lengths.tolist() == [part.size for part in expected]
    assert np.array_equal(picked, np.concatenate(expected))


def test_ks_counts_exactly_on_the_cuts():
    """A permutation with its k smallest values moved up has KS count exactly k;
    the count is found whenever the cut is at or below it, whatever the grid."""
    rng = np.random.default_rng(3)
    n = 1000
    base = rng.choice(np.arange(10000, 80000), size=n, replace=False) / 1e5
    for k in (4, 5, 6, 29, 30, 31):
        other = rng.permutation(base)
        other[np.argsort(other)[:k]] = 0.9 + np.arange(k) * 1e-5
        exact = ks_counts(np.sort(base), np.sort(other))
        assert exact == k
        for grid in (make_grid(base, 4096), make_grid(base, 64), make_grid(other, 7)):
            counts_a, counts_b = grid_counts(np.sort(base), grid), grid_counts(np.sort(other), grid)
            for cut in (k - 1, k, k + 1):
                for picker in PICKERS:
                    found = ks_count_in_cells(np.sort(base), counts_a, picker(grid, other), counts_b, cut)
                    assert found == k if cut <= k else found < cut


@st.composite
def narrow_counts(draw):
    """Rows of unsigned counts and a candidate row, near 0 and near the top of the type."""
    dtype = draw(st.sampled_from([np.uint16, np.uint32]))
    top = int(np.iinfo(dtype).max)
    width = draw(st.integers(1, 6))
    value = st.one_of(st.integers(0, 40), st.integers(top - 40, top), st.integers(0, top))
    rows = draw(st.lists(st.lists(value, min_size=width, max_size=width), min_size=1, max_size=5))
    mine = draw(st.lists(value, min_size=width, max_size=width))
    return np.array(rows, dtype=dtype), np.array(mine, dtype=np.int64), draw(st.integers(0, top + 2))


@PROPERTY
@given(narrow_counts())
def test_count_spread_and_certainly_far_on_unsigned_counts(case):
    counts, mine, far = case
    truth = np.max(np.abs(counts.astype(np.int64) - mine), axis=1)
    assert count_spread(counts, mine).tolist() == truth.tolist()
    claimed = certainly_far(counts, mine, far)
    assert not np.any(claimed & (truth < far)), "a near pair was called far"


def test_coarse_columns_are_a_spread_subset_of_the_grid():
    for size in (1, 2, 63, 64, 65, 4096):
        columns = coarse_columns(size)
        assert columns.size == min(size, 64) and np.all(np.diff(columns) > 0)
        assert columns[0] == 0 and columns[-1] == size - 1


@PROPERTY
@given(st.sets(st.integers(0, 60), min_size=1), st.integers(1, 6))
def test_merged_runs_cover_every_cell_in_at_most_so_many_runs(cells, most):
    cells = np.array(sorted(cells))
    firsts, lasts = merged_runs(cells, most)
    assert firsts.size <= most and np.all(firsts <= lasts) and np.all(lasts[:-1] < firsts[1:])
    covered = np.concatenate([np.arange(f, l + 1) for f, l in zip(firsts, lasts)])
    assert set(cells.tolist()) <= set(covered.tolist())
    assert firsts[0] == cells[0] and lasts[-1] == cells[-1]
    if len(cells) - 1 - np.count_nonzero(np.diff(cells) == 1) < most:  # few enough runs: kept as they are
        assert set(covered.tolist()) == set(cells.tolist())


def test_spans_concatenates_ranges():
    starts, lengths = np.array([5, 0, 9, 3]), np.array([2, 0, 3, 1])
    assert spans(starts, lengths).tolist() == [5, 6, 9, 10, 11, 3]


# -- correlation: rounding and the round basis -----------------------------------------

def stored(values):
    """A vector as the index stores it: float32 blocks, norm and error terms."""
    blocks = -(-values.size // BLOCK)
    return prepare(values, make_grid(values), blocks, np.zeros(blocks * BLOCK, dtype=np.float32))


def round_vector(rng, family, kind):
    """One vector of a round: a member of the family, or an adversarial kind of vector."""
    n = family.size
    base = rng.normal(size=n)
    if kind == "member":
        return 1 / (1 + np.exp(-(family + rng.normal(size=n) * rng.choice([0.01, 0.3, 1.0]))))
    if kind == "constant":
        return np.full(n, rng.choice([0.0, 0.5, 1e6]))
    if kind == "offset":  # a tiny spread on a large mean: centering loses most digits
        return 1e6 + 1e-6 * base
    if kind == "tiny":  # values whose squares underflow
        return base * 1e-200
    if kind == "huge":
        return base * 1e150
    return np.round(rng.random(n), 2)


KINDS = ("member", "member", "member", "constant", "offset", "tiny", "huge", "coarse")


@st.composite
def correlation_rounds(draw):
    """A small round: family members and adversarial vectors, plus exact copies,
    negated and affine copies, shuffles and copies rounded to 5 decimals."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    n = draw(st.sampled_from([2, 3, 17, 255, 256, 257, 700]))
    family = rng.normal(size=n)
    vectors = []
    for kind in draw(st.lists(st.sampled_from(KINDS), min_size=2, max_size=8)):
        vectors.append(round_vector(rng, family, kind))
    for _ in range(draw(st.integers(0, 4))):
        source = vectors[draw(st.integers(0, len(vectors) - 1))]
        how = draw(st.sampled_from(["copy", "negated", "affine", "shuffled", "rounded"]))
        vectors.append({"copy": lambda v: v.copy(), "negated": lambda v: -v,
                        "affine": lambda v: 3e-3 * v + 7.0, "shuffled": rng.permutation,
                        "rounded": lambda v: np.round(v, 5)}[how](source))
    return vectors, draw(st.sampled_from(["sample", "perturbed", "random"]))


def basis_for(vectors, how, rng):
    """A round basis: principal directions of the round, the same perturbed, or random rows."""
    prepared = [stored(v) for v in vectors]
    n = vectors[0].size
    usable = [p for p in prepared if math.isfinite(p.bounds.scale) and p.norm > 0]
    if how == "sample" and len(usable) >= 2:
        basis = RoundBasis.from_sample(np.stack([p.blocks32 for p in usable]), [p.norm for p in usable], n, 4)
        if basis is not None:
            return basis, prepared
    d = min(3, n)
    rows = np.zeros((d, prepared[0].blocks32.size), dtype=np.float32)
    rows[:, :n] = rng.normal(size=(d, n)) / math.sqrt(n)
    if how == "perturbed":
        rows[:, :n] = np.linalg.qr(rows[:, :n].T.astype(np.float64))[0].T * (1 + rng.normal(0, 0.05, (d, 1)))
    return RoundBasis(rows, n), prepared


def screened(basis, prepared):
    """Per pair ``(i, j)``: ``(|s|, w)`` as a check computes them (scoring.checks._Pairs.screen)."""
    norms = [p.norm for p in prepared]
    scales = [p.bounds.scale for p in prepared]
    projection = basis.project(np.stack([p.blocks32 for p in prepared]), norms, scales)
    out = {}
    for i, cand in enumerate(prepared):
        s = np.einsum("kd,d->k", projection.coef, projection.coef[i]).astype(np.float64)
        margin = pair_margins(vectors_size(prepared), cand.blocks32.shape[0], cand.bounds,
                              np.array([p.bounds.angle for p in prepared]), np.array(scales),
                              np.array([p.bounds.floor for p in prepared]))
        width = projected_widths(basis.size, basis.eta, (projection.rho[i], projection.delta[i], projection.size[i]),
                                 projection.rho, projection.delta, projection.size, margin)
        for j in range(len(prepared)):
            out[i, j] = (abs(s[j]), width[j]) if np.isfinite(s[j]) else (0.0, np.inf)
    return out


def vectors_size(prepared):
    """n of the stored vectors (their counts end with it)."""
    return int(prepared[0].counts[-1])


@PROPERTY
@given(correlation_rounds())
def test_projected_interval_contains_the_plain_correlation(case):
    vectors, how = case
    basis, prepared = basis_for(vectors, how, np.random.default_rng(len(vectors)))
    for (i, j), (s, width) in screened(basis, prepared).items():
        if is_constant(vectors[i]) or is_constant(vectors[j]):
            continue
        r = pearson(vectors[i], vectors[j])
        if math.isfinite(r):
            assert s - width <= abs(r) <= s + width, (i, j, r, s, width)


def test_projected_interval_on_copies_and_at_the_limit():
    """Copies, negations and affine copies (|r| = 1) and pairs within 1e-12 of
    0.95 on either side: the interval holds them all, and it is narrow enough
    to decide pairs far from the limit (different families)."""
    rng = np.random.default_rng(5)
    n = 2000
    a = rng.random(n) * 0.5 + 0.25
    centered = a - a.mean()
    vectors = [a, a.copy(), -a, 0.37 * a + 12.0, rng.permutation(a)]
    for r in (0.95 - 1e-12, 0.95, 0.95 + 1e-12, 0.05):
        noise = rng.normal(size=n)
        noise -= noise.mean()
        noise -= noise @ centered / (centered @ centered) * centered
        vectors.append(0.5 + r * centered / np.linalg.norm(centered) + math.sqrt(1 - r * r) * noise / np.linalg.norm(noise))
    vectors += [rng.normal(size=n) for _ in range(6)]
    basis, prepared = basis_for(vectors, "sample", rng)
    decided = 0
    for (i, j), (s, width) in screened(basis, prepared).items():
        r = pearson(vectors[i], vectors[j])
        assert s - width <= abs(r) <= s + width
        decided += s + width <= 0.95 or s - width > 0.95
    assert decided > 0


def test_basis_error_bounds_the_distance_from_orthonormal():
    """eta against ||Q Q^T - I||_2 computed from exactly rounded entries (math.fsum of
    float32 products, which float64 holds exactly)."""
    rng = np.random.default_rng(6)
    for d, m, spread in ((1, 5, 0.0), (4, 300, 1e-3), (8, 1024, 0.1), (3, 7, 0.5)):
        q = np.linalg.qr(rng.normal(size=(m, d)))[0].T * (1 + rng.normal(0, spread, (d, 1)))
        rows = q.astype(np.float32)
        wide = rows.astype(np.float64)
        w = np.array([[math.fsum(wide[i] * wide[j]) for j in range(d)] for i in range(d)])
        assert basis_error(rows) >= np.linalg.norm(w - np.eye(d), 2) * (1 - 1e-9)


def test_coefficients_and_residuals_are_within_their_bounds():
    """delta >= ||k32 - Q x|| and rho >= ||(I - P) x||, x = v32 / N, with Q x and
    the residual computed from exactly rounded sums."""
    rng = np.random.default_rng(7)
    n = 600
    family = rng.normal(size=n)
    vectors = [family + rng.normal(size=n) * s for s in (0.0, 0.1, 1.0, 10.0)] + [rng.random(n), 1e6 + 1e-6 * family]
    basis, prepared = basis_for(vectors, "sample", rng)
    rows = basis.blocks.transpose(1, 0, 2).reshape(basis.size, -1).astype(np.float64)
    projection = basis.project(np.stack([p.blocks32 for p in prepared]), [p.norm for p in prepared],
                               [p.bounds.scale for p in prepared])
    for i, p in enumerate(prepared):
        x = p.blocks32.reshape(-1).astype(np.float64)
        c = np.array([math.fsum(row * x) for row in rows]) / p.norm
        assert np.linalg.norm(projection.coef[i].astype(np.float64) - c) <= projection.delta[i]
        w = rows @ rows.T
        inside = c @ np.linalg.solve(w, c)
        residual = math.sqrt(max(math.fsum(x * x) / p.norm ** 2 - inside, 0.0))
        assert residual <= projection.rho[i]


def test_bad_bases_give_no_bound_rather_than_a_wrong_one():
    """A basis whose rows are far from orthonormal (eta >= 1) gives infinite widths;
    coefficient errors of constant vectors (norm 0) are infinite too."""
    width = projected_widths(4, 1.5, (0.1, 0.1, 1.0), np.array([0.1]), np.array([0.1]), np.array([1.0]),
                             np.array([0.0]))
    assert np.isinf(width).all()
    assert np.isinf(coefficient_error(10, 1, 4, 0.0, np.array([0.0]), np.array([0.0]), np.array([0.0]))).all()
    assert np.isinf(residual_bound(0.0, np.array([1.0]), np.array([np.inf]), np.array([0.0]))).all()


@PROPERTY
@given(correlation_rounds())
def test_block_products_are_within_pair_margins(case):
    """The float32 block products of two stored copies against the plain Pearson."""
    vectors, _ = case
    prepared = [stored(v) for v in vectors]
    n = vectors[0].size
    for cand, values in zip(prepared, vectors):
        if cand.constant:
            continue
        for other, other_values in zip(prepared, vectors):
            if other.constant:
                continue
            dot = np.vecdot(other.blocks32, cand.blocks32).sum(dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                fast = abs(dot / (cand.norm * other.norm))
            margin = pair_margins(n, cand.blocks32.shape[0], cand.bounds, np.array([other.bounds.angle]),
                                  np.array([other.bounds.scale]), np.array([other.bounds.floor]))[0]
            r = pearson(values, other_values)
            if math.isfinite(r) and math.isfinite(margin):
                assert abs(abs(r) - fast) <= margin


def test_vector_bounds_refuse_vectors_they_cannot_bound():
    assert math.isinf(vector_bounds(np.full(10, 0.5), 0.0).angle)
    assert math.isinf(vector_bounds(1e6 + 1e-12 * np.arange(10.0), 1e-11).angle)
    assert math.isfinite(vector_bounds(np.arange(10.0), float(np.linalg.norm(np.arange(10.0) - 4.5))).angle)
