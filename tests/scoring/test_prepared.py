"""The prepared fast path must reach exactly the plain rule's decisions.

Every verdict here is compared with ``scoring.originality.is_original``
on the same values; the data is built to sit on the edges the fast path
could get wrong: KS counts exactly at, below and above each cut-off,
correlations within 1e-7 of the limit, ties, ties that only float32
creates, constants, tiny rounds, and coarse grids that force the exact
fallbacks.
"""
import threading

import numpy as np
import pytest
import scipy.stats

from scoring import evidence, originality
from scoring.errors import DataError
from scoring.ks import ks_counts, ks_statistic
from scoring.basis import BASIS_SIZE
from scoring.bounds import BLOCK, GRID_POINTS, cutoff, ks_interval
from scoring.prepared import RECENT_SORTED, SEGMENT_ROWS, PreparedRound
from scoring.rules import Rules
from tests.scoring.test_bounds import tie_heavy_pairs

RULE_VARIANTS = (Rules(), Rules(max_similar=2), Rules(max_similar=3), Rules(max_similar=0))
#: Grids from one point per ~n/4 values (loose bounds, many exact fallbacks) to the default.
GRIDS = (4, 64, GRID_POINTS)
#: Without a round basis (rounds this small have none), and with one from the second submission on.
BASES = ({}, {"basis_from": 2, "basis_size": 4})


def build(vectors, grid_points=GRID_POINTS, **options):
    """A PreparedRound holding ``vectors``; exact values come from the dict."""
    store = {key: np.asarray(values, dtype=np.float64) for key, values in vectors.items()}
    prepared = PreparedRound(fetch_exact=store.__getitem__, grid_points=grid_points, **options)
    for key, values in store.items():
        prepared.add(key, values)
    return prepared


def agree(prepared, vectors, candidate, keys, rules_variants=RULE_VARIANTS):
    """Assert fast == plain under each rules variant; return the plain verdicts."""
    verdicts = []
    for rules in rules_variants:
        plain = originality.is_original(candidate, [vectors[k] for k in keys], rules)
        fast = prepared.is_original(candidate, keys, rules)
        assert fast == plain, "fast %s != plain %s with %s against %s" % (fast, plain, rules, keys)
        verdicts.append(plain)
    return verdicts


def leave_one_out(vectors, grid_points=GRID_POINTS, rules_variants=RULE_VARIANTS, **options):
    """Judge every vector against all the others; return plain verdicts."""
    prepared = build(vectors, grid_points, **options)
    verdicts = []
    for key, values in vectors.items():
        others = [k for k in vectors if k != key]
        verdicts += agree(prepared, vectors, values, others, rules_variants)
    return verdicts


def distinct_values(rng, n, low=0.1, high=0.8, decimals=5):
    """n distinct values on a decimal grid in [low, high)."""
    scale = 10 ** decimals
    return rng.choice(np.arange(int(low * scale), int(high * scale)), size=n, replace=False) / scale


def moved_copy(rng, base, count, decimals=5):
    """A permutation of ``base`` whose ``count`` smallest values move above its maximum.

    The KS count against ``base`` is then exactly ``count`` (the CDFs differ
    by ``count`` between the old smallest values and the new ones), while
    the permutation keeps the correlation near zero.
    """
    other = rng.permutation(base)
    lowest = np.argsort(other)[:count]
    other[lowest] = np.round(0.9 + np.arange(count) * 10.0 ** -decimals, decimals)
    return other


# -- KS itself --------------------------------------------------------------

def test_ks_statistic_matches_scipy_on_ties():
    rng = np.random.default_rng(1)
    for a, b in tie_heavy_pairs(rng):
        ours = ks_statistic(np.sort(a), np.sort(b))
        assert abs(ours - scipy.stats.ks_2samp(a, b).statistic) <= 1e-12


def test_checks_decide_ks_pairs_from_ks_interval(monkeypatch):
    """The check takes its KS bounds from ks_interval: widened to (0, n) they decide
    nothing, every pair goes to the exact path, and the verdicts stay the plain rule's."""
    rng = np.random.default_rng(21)
    n = 600
    candidate = np.round(rng.beta(2, 2, n), 5)
    others = {"copy": rng.permutation(candidate), "far": np.round(rng.beta(5, 1, n), 5),
              "near": np.round(np.clip(candidate + rng.normal(0, 0.002, n), 0, 1), 5)}
    prepared = PreparedRound()
    for key, values in others.items():
        prepared.add(key, values)
    for keys in (["far"], ["near", "far"], ["copy"]):
        assert prepared.is_original(candidate, keys) is originality.is_original(candidate, [others[k] for k in keys])
    decided = prepared.stats["ks_exact"]
    real = ks_interval
    monkeypatch.setattr("scoring.checks.ks_interval",
                        lambda a, b: (np.zeros_like(real(a, b)[0]), np.full_like(real(a, b)[1], n)))
    for keys in (["far"], ["near", "far"], ["copy"]):
        assert prepared.is_original(candidate, keys) is originality.is_original(candidate, [others[k] for k in keys])
    assert prepared.stats["ks_exact"] > decided


# -- KS cut-offs, exactly at the edges ---------------------------------------

@pytest.mark.parametrize("grid_points", GRIDS)
@pytest.mark.parametrize("count", [0, 4, 5, 6, 29, 30, 31, 60])
@pytest.mark.parametrize("options", BASES)
def test_ks_counts_at_each_cutoff(count, grid_points, options):
    rng = np.random.default_rng(count)
    n = 1000
    base = distinct_values(rng, n)
    other = moved_copy(rng, base, count)
    assert ks_statistic(np.sort(base), np.sort(other)) == count / n
    assert abs(originality.pearson(base, other)) < 0.5
    vectors = {"base": base, "other": other}
    prepared = build(vectors, grid_points, **options)
    agree(prepared, vectors, base, ["other"])
    agree(prepared, vectors, other, ["base"])


@pytest.mark.parametrize("grid_points", GRIDS)
@pytest.mark.parametrize("counts", [(20, 30, 31), (10, 29, 31), (5, 6, 31), (4, 50, 60), (31, 32, 40)])
@pytest.mark.parametrize("options", BASES)
def test_similar_counts_against_max_similar(counts, grid_points, options):
    rng = np.random.default_rng(sum(counts))
    base = distinct_values(rng, 1000)
    vectors = {"base": base}
    vectors.update(("moved%d" % c, moved_copy(rng, base, c)) for c in counts)
    prepared = build(vectors, grid_points, **options)
    others = [k for k in vectors if k != "base"]
    verdicts = agree(prepared, vectors, base, others)
    verdicts += agree(prepared, vectors, base, others + others[:1])  # a repeated key counts twice
    verdicts += leave_one_out(vectors, grid_points, **options)
    assert len(set(verdicts)) == 2, "the construction should give both verdicts"


@pytest.mark.parametrize("options", BASES)
def test_float32_ties_are_not_taken_for_float64_ties(options):
    """Values apart by less than float32 resolution round to the same float32
    copy; KS must still count them as different."""
    rng = np.random.default_rng(3)
    n = 1000
    for tied in (4, 5, 6, 30, 31):
        candidate = distinct_values(rng, n, 0.4, 0.9)
        candidate[:tied] = 0.3
        nudged = candidate.copy()
        nudged[:tied] = 0.3 + 1e-13
        assert np.array_equal(nudged.astype(np.float32), candidate.astype(np.float32))
        order = rng.permutation(n)
        vectors = {"nudged": nudged, "shuffled": nudged[order], "candidate": candidate}
        for grid_points in GRIDS:
            prepared = build(vectors, grid_points, **options)
            for keys in (["shuffled"], ["nudged"], ["shuffled", "nudged"]):
                agree(prepared, vectors, candidate, keys)
            assert ks_counts(np.sort(candidate), np.sort(nudged)) == tied


@pytest.mark.parametrize("options", BASES)
def test_exact_duplicates_and_permuted_copies(options):
    rng = np.random.default_rng(4)
    base = np.round(rng.beta(3, 3, 2000), 5)
    vectors = {
        "base": base,
        "copy": base.copy(),
        "permuted": rng.permutation(base),
        "coarse": np.round(base, 2),
        "coarse_permuted": rng.permutation(np.round(base, 2)),
        "unrelated": np.round(rng.beta(3, 3, 2000), 5),
    }
    verdicts = []
    for grid_points in GRIDS:
        verdicts += leave_one_out(vectors, grid_points, **options)
        prepared = build(vectors, grid_points, **options)
        verdicts += agree(prepared, vectors, base, ["permuted", "unrelated"])
        verdicts += agree(prepared, vectors, base, ["unrelated"])
    assert len(set(verdicts)) == 2


# -- correlation at the limit -----------------------------------------------

def correlated_with(rng, a, r):
    """A vector whose float64 Pearson correlation with ``a`` is ``r`` up to ~1e-15."""
    centered = a - a.mean()
    noise = rng.normal(size=a.size)
    noise -= noise.mean()
    noise -= noise @ centered / (centered @ centered) * centered
    direction = r * centered / np.linalg.norm(centered) + np.sqrt(1 - r * r) * noise / np.linalg.norm(noise)
    return 0.5 + 0.1 * np.sqrt(a.size) * direction


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("options", BASES)
def test_correlation_within_1e7_of_the_limit_full_precision(sign, options):
    """Full-precision floats cannot be rebuilt from float32: fetch_exact is used."""
    rng = np.random.default_rng(5)
    a = rng.random(1000) * 0.5 + 0.25
    vectors = {"a": a}
    for i, delta in enumerate((-1e-7, -1e-9, -1e-12, 0.0, 1e-12, 1e-9, 1e-7)):
        target = sign * (0.95 + delta)
        b = correlated_with(rng, a, target)
        assert abs(originality.pearson(a, b) - target) < 1e-12
        vectors["b%d" % i] = b
    prepared = build(vectors, **options)
    verdicts = []
    for key in vectors:
        if key != "a":
            verdicts += agree(prepared, vectors, a, [key], (Rules(),))
            verdicts += agree(prepared, vectors, vectors[key], ["a"], (Rules(),))
    assert set(verdicts) == {True, False}
    stats = prepared.stats
    assert stats["correlation_exact"] > 0 and stats["fetched"] > 0


@pytest.mark.parametrize("spread", [1e-3, 1e-9, 1e-13])
@pytest.mark.parametrize("options", BASES)
def test_correlation_of_nearly_constant_vectors(spread, options):
    """When the spread is tiny next to the mean, centering in float64 is off
    by a share of the spread itself, for the plain rule too; the bound
    widens with it and the pair falls back to the plain computation."""
    rng = np.random.default_rng(14)
    a = 0.5 + spread * rng.random(1000)
    vectors = {"a": a}
    for i, r in enumerate((0.9, 0.95 - 1e-4, 0.95, 0.95 + 1e-4, 0.99)):
        vectors["b%d" % i] = 0.5 + spread * (correlated_with(rng, a, r) - 0.5)
    prepared = build(vectors, **options)
    verdicts = []
    for key in vectors:
        if key != "a":
            verdicts += agree(prepared, vectors, a, [key], (Rules(),))
    if spread > 1e-9:
        assert set(verdicts) == {True, False}
    else:
        assert prepared.stats["correlation_exact"] > 0


@pytest.mark.parametrize("options", BASES)
def test_correlation_at_the_limit_with_six_decimals(options):
    """Rounded to 6 decimals, values are rebuilt from float32 in memory."""
    rng = np.random.default_rng(6)
    a = np.round(rng.random(777) * 0.5 + 0.25, 6)

    def rounded_other(r, seed):
        return np.round(correlated_with(np.random.default_rng(seed), a, r), 6)

    vectors = {"a": a}
    for seed in range(4):
        low, high = 0.949, 0.951
        for _ in range(60):
            middle = (low + high) / 2
            if originality.pearson(a, rounded_other(middle, seed)) > 0.95:
                high = middle
            else:
                low = middle
        below, above = rounded_other(low, seed), rounded_other(high, seed)
        assert 0.95 - 1e-6 < originality.pearson(a, below) <= 0.95 < originality.pearson(a, above) < 0.95 + 1e-6
        vectors["below%d" % seed], vectors["above%d" % seed] = below, above
    prepared = build(vectors, **options)
    verdicts = []
    for key in vectors:
        if key != "a":
            verdicts += agree(prepared, vectors, a, [key], (Rules(),))
    assert set(verdicts) == {True, False}
    assert prepared.stats["fetched"] == 0 and prepared.stats["correlation_exact"] > 0


# -- degenerate rounds ---------------------------------------------------------

@pytest.mark.parametrize("options", BASES)
def test_constant_vectors_skip_the_correlation_clause(options):
    rng = np.random.default_rng(7)
    n = 600
    vectors = {
        "half": np.full(n, 0.5),
        "half_again": np.full(n, 0.5),
        "seven": np.full(n, 0.7),
        "random": np.round(rng.random(n), 5),
        "mostly_half": np.where(np.arange(n) < 3, 0.6, 0.5),
    }
    verdicts = []
    for grid_points in GRIDS:
        verdicts += leave_one_out(vectors, grid_points, **options)
    assert set(verdicts) == {True, False}


@pytest.mark.parametrize("n", [1, 2, BLOCK - 1, BLOCK, BLOCK + 1])
@pytest.mark.parametrize("options", BASES)
def test_tiny_and_unaligned_rounds(n, options):
    rng = np.random.default_rng(n)
    vectors = {"x%d" % i: np.round(rng.random(n), 2) for i in range(6)}
    vectors["copy"] = vectors["x0"].copy()
    if n == 1:
        vectors.update(near=np.array([0.3]), same=np.array([0.3]), next=np.array([np.nextafter(0.3, 1)]))
    for grid_points in GRIDS:
        leave_one_out(vectors, grid_points, **options)


@pytest.mark.parametrize("n", [65535, 65536])
def test_counts_at_the_edge_of_uint16(n):
    """n = 65535 is the largest round with 16-bit grid counts, whose first
    pass works modulo 2**16; 65536 switches to 32 bits. Disjoint vectors
    make count differences of nearly n, which wrap around."""
    rng = np.random.default_rng(n)
    base = distinct_values(rng, n, 0.1, 0.8, decimals=6)
    vectors = {"base": base, "low": np.round(rng.uniform(0, 0.05, n), 6), "high": np.round(rng.uniform(0.95, 1, n), 6)}
    dup_cut = cutoff(n, lambda k: k / n < Rules().duplicate_ks)
    similar_cut = cutoff(n, lambda k: k / n <= Rules().similar_ks)
    for count in (dup_cut - 1, dup_cut, similar_cut - 1, similar_cut):
        vectors["moved%d" % count] = moved_copy(rng, base, count, decimals=6)
        top = base.copy()  # the largest values move up: only the top grid point (count n) sees it
        top[np.argsort(base)[-count:]] = np.round(0.9 + np.arange(count) * 1e-6, 6)
        vectors["top%d" % count] = rng.permutation(top)
    prepared = build(vectors)
    for key in ("base", "low", "moved%d" % dup_cut):
        agree(prepared, vectors, vectors[key], [k for k in vectors if k != key])
    for count in (dup_cut - 1, dup_cut, similar_cut - 1, similar_cut):
        agree(prepared, vectors, base, ["moved%d" % count, "low", "high"])
        agree(prepared, vectors, base, ["top%d" % count, "low", "high"])
        agree(prepared, vectors, vectors["top%d" % count], ["base", "low", "high"])


def test_no_others_is_original():
    prepared = build({"a": np.array([0.1, 0.2])})
    assert prepared.is_original(np.array([0.1, 0.2]), []) is True
    assert originality.is_original(np.array([0.1, 0.2]), []) is True


# -- many random rounds ------------------------------------------------------

def random_round(rng):
    """A round of families of related submissions with ties, copies and constants."""
    n = int(rng.choice([1, 2, 17, 255, 257, 600, 1500, 6000]))
    size = int(rng.integers(2, 16))
    decimals = rng.choice([2, 3, 5, 6, 0])
    families = [rng.normal(size=n) for _ in range(int(rng.integers(1, 4)))]
    vectors = {}
    for i in range(size):
        z = families[i % len(families)] + rng.normal(size=n) * rng.choice([0.01, 0.1, 0.3, 1.0])
        values = 1 / (1 + np.exp(-z * rng.uniform(0.1, 1)))
        vectors["s%d" % i] = np.round(values, decimals) if decimals else values
    keys = list(vectors)
    for i in range(int(rng.integers(0, 3))):
        source = vectors[keys[int(rng.integers(size))]]
        kind = rng.integers(3)
        vectors["c%d" % i] = source.copy() if kind == 0 else rng.permutation(source) if kind == 1 else np.full(n, 0.5)
    return vectors


def random_rules(rng):
    return Rules(
        correlation_limit=float(rng.choice([0.95, rng.uniform(0.3, 0.99)])),
        duplicate_ks=float(rng.choice([0.005, rng.uniform(0, 0.1)])),
        similar_ks=float(rng.choice([0.03, rng.uniform(0, 0.3)])),
        max_similar=int(rng.integers(0, 4)),
    )


@pytest.mark.parametrize("options", BASES)
def test_random_rounds_agree_with_the_plain_rule(options):
    rng = np.random.default_rng(8)
    verdicts, exact = [], 0
    for _ in range(400):
        vectors = random_round(rng)
        rules_variants = (Rules(), random_rules(rng), random_rules(rng))
        grid_points = int(rng.choice(GRIDS))
        prepared = build(vectors, grid_points, **options)
        for key, values in vectors.items():
            verdicts += agree(prepared, vectors, values, [k for k in vectors if k != key], rules_variants)
        exact += prepared.stats["ks_exact"] + prepared.stats["correlation_exact"]
    assert 0.1 < np.mean(verdicts) < 0.9
    assert exact > 0


# -- the container -------------------------------------------------------------

def test_add_replace_remove_and_errors():
    rng = np.random.default_rng(9)
    a, b = np.round(rng.random(300), 5), np.round(rng.random(300), 5)
    prepared = PreparedRound()
    prepared.add("k", a)
    held = prepared.nbytes
    prepared.add("k", a.copy())
    assert len(prepared) == 1 and prepared.nbytes == held
    prepared.add("k", b)
    assert len(prepared) == 1 and "k" in prepared
    assert prepared.is_original(b, ["k"]) is originality.is_original(b, [b]) is False
    assert prepared.is_original(a, ["k"]) is originality.is_original(a, [b])
    with pytest.raises(KeyError):
        prepared.is_original(a, ["k", "absent"])
    with pytest.raises(DataError, match="300 rows"):
        prepared.add("short", a[:-1])
    with pytest.raises(DataError):
        prepared.is_original(a[:-1], ["k"])
    with pytest.raises(DataError, match="finite"):
        prepared.add("inf", np.where(np.arange(300) == 7, np.inf, a))
    with pytest.raises(ValueError) as raised:
        prepared.add("precise", rng.random(300))  # not recoverable and no fetch_exact: the caller's bug
    assert not isinstance(raised.value, DataError)


def test_fetch_exact_returning_other_values_is_refused():
    rng = np.random.default_rng(10)
    values = rng.random(500)
    prepared = PreparedRound(fetch_exact=lambda key: rng.random(500), grid_points=1)
    prepared.add("x", values)
    with pytest.raises(RuntimeError):
        prepared.is_original(rng.permutation(values), ["x"])  # one grid point: KS needs exact values


def test_memory_is_one_float32_copy_plus_sketches():
    """Per submission: its float32 copy and sketches; per round, a fixed
    amount: the sorted values of the last few added (RECENT_SORTED of them)
    and the round basis (BASIS_SIZE float32 rows)."""
    rng = np.random.default_rng(11)
    n, size = 45000, 4 * SEGMENT_ROWS
    prepared = PreparedRound()
    base = rng.random(n)
    for i in range(size):
        prepared.add(str(i), np.round(base + rng.normal(0, 0.01, n), 5))
    assert prepared.stats["bases"] == 1
    assert prepared.nbytes <= 1.2 * n * size * 4 + RECENT_SORTED * n * 8 + BASIS_SIZE * n * 4


# -- threads -------------------------------------------------------------------

def test_concurrent_add_replace_and_checks():
    """A writer adds, re-adds (moving keys to new slots) and churns keys whose
    values copy the candidates, replacing them in turn, while a reader checks;
    a slot reused under a running check would show up as a duplicate the plain
    rule does not see."""
    rng = np.random.default_rng(12)
    n = 800
    pool = {"p%d" % i: np.round(rng.beta(2, 2, n) + rng.normal(0, 0.001, n), 5) for i in range(120)}
    pool.update(("f%d" % i, rng.beta(2, 2, n)) for i in range(10))  # full precision: re-adding moves slots
    candidates = [np.round(rng.beta(3, 2, n), 5) for _ in range(4)]
    store = dict(pool)
    prepared = PreparedRound(fetch_exact=store.__getitem__)
    published = list(pool)[:10] + ["f%d" % i for i in range(10)]
    for key in published:
        prepared.add(key, pool[key])
    to_add = [k for k in pool if k not in published]
    reader_done = threading.Event()
    failures, results = [], []

    def writer():
        try:
            step = 0
            while not reader_done.is_set():
                if to_add:
                    key = to_add.pop()
                    prepared.add(key, pool[key])
                    published.append(key)
                churn = "churn%d" % (step % 3)
                prepared.add(churn, candidates[step % len(candidates)])
                prepared.add("f%d" % (step % 10), pool["f%d" % (step % 10)].copy())
                step += 1
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)
            reader_done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(60):
            keys = list(published)
            candidate = candidates[i % len(candidates)]
            results.append((candidate, keys, prepared.is_original(candidate, keys)))
    finally:
        reader_done.set()
        thread.join()
    assert not failures
    for candidate, keys, fast in results:
        assert fast == originality.is_original(candidate, [pool[k] for k in keys])
    assert {len(keys) for _, keys, _ in results} != {len(results[0][1])}, "the reader should see the round grow"
    assert any(fast for _, _, fast in results)


def test_slots_freed_during_a_check_are_not_rewritten_under_it():
    """Deterministic interleaving: the first fetch_exact call, made while a check
    runs, moves the keys being checked to other values (freeing their slots),
    fills the round with copies of the candidate and adds the keys back. The
    running check must keep reading the values it started with."""
    rng = np.random.default_rng(13)
    n = 1000
    candidate = distinct_values(rng, n)
    vectors = {"r%d" % i: moved_copy(rng, candidate, 40) for i in range(5)}
    vectors["f"] = moved_copy(rng, candidate, 40) + rng.uniform(0, 1e-9, n)  # fetched, not rebuilt
    keys = ["f"] + ["r%d" % i for i in range(5)]
    interleaved = []

    def fetch(key):
        if not interleaved:
            interleaved.append(key)
            for other in keys[1:]:
                prepared.add(other, np.round(rng.random(n), 5))
            for i in range(2 * SEGMENT_ROWS):
                prepared.add("churn%d" % i, candidate)
            for other in keys[1:]:
                prepared.add(other, vectors[other])
        return vectors[key]

    prepared = PreparedRound(fetch_exact=fetch, grid_points=1)
    prepared.add("grid", np.full(n, 0.95))  # one grid point above every value: every KS pair is open
    for key in keys:
        prepared.add(key, vectors[key])
    plain = originality.is_original(candidate, [vectors[k] for k in keys])
    assert plain is True
    assert prepared.is_original(candidate, keys) is plain
    assert interleaved == ["f"]
    assert prepared.is_original(candidate, keys) is plain
    assert prepared.is_original(candidate, keys + ["churn0"]) is originality.is_original(candidate, [candidate]) is False


def test_discard_forgets_a_key_and_reuses_its_slot_only_after_running_checks():
    rng = np.random.default_rng(12)
    a, b, c = (np.round(rng.random(300), 5) for _ in range(3))
    prepared = PreparedRound()
    prepared.add("a", a)
    prepared.add("b", b)
    held = prepared.nbytes
    snapshot = prepared._snapshot(["a", "b"])  # a check is running
    prepared.discard("a")
    prepared.discard("absent")  # no error
    assert "a" not in prepared and len(prepared) == 1
    prepared.add("c", c)  # must not take a's slot while the check may still read it
    assert np.array_equal(snapshot.stored_values(snapshot.slots[0], np.empty(300)), a)
    prepared._release(dict.fromkeys(("pairs", "correlation_exact", "ks_exact", "fetched"), 0))
    assert prepared.is_original(a, ["b", "c"]) is originality.is_original(a, [b, c])
    assert prepared.nbytes >= held


# -- the round basis, the candidate's own key ------------------------------------------

def family_round(rng, n=600, families=4, members=12):
    """A round as submissions come: model families (pairs within a family near the
    limit, across far from it) plus copies, shuffles, affine copies, constants,
    full-precision files, values beyond float32 and KS counts on the cut-offs."""
    dup_cut = cutoff(n, lambda k: k / n < Rules().duplicate_ks)
    similar_cut = cutoff(n, lambda k: k / n <= Rules().similar_ks)
    bases = [rng.normal(size=n) for _ in range(families)]
    vectors = {}
    for f, base in enumerate(bases):
        for m in range(members):
            noise = rng.choice([0.05, 0.2, 0.3, 1.0])
            values = 1 / (1 + np.exp(-(base + noise * rng.normal(size=n))))
            vectors["f%dm%d" % (f, m)] = values if m % 5 == 4 else np.round(values, 5)
    first = vectors["f0m0"]
    base = distinct_values(rng, n)
    vectors.update({
        "copy": first.copy(), "shuffled": rng.permutation(first), "affine": np.round(0.5 * first + 0.25, 6),
        "half": np.full(n, 0.5), "half_again": np.full(n, 0.5), "base": base,
        "below": correlated_with(rng, first, 0.95 - 1e-12), "above": correlated_with(rng, first, 0.95 + 1e-12),
        "huge": rng.normal(size=n) * 1e150, "huge_too": rng.normal(size=n) * 1e150,
    })
    for count in (dup_cut - 1, dup_cut, similar_cut - 1, similar_cut):
        vectors["moved%d" % count] = moved_copy(rng, base, count)
    return vectors


def agree_explained(prepared, vectors, candidate, keys, rules=Rules(), key=None):
    """explain == plain evidence and is_original == the plain rule, with and without ``key``."""
    for own in {None, key}:
        fast = prepared.explain(candidate, keys, rules, key=own)
        assert fast == evidence.originality_evidence(candidate, [(k, vectors[k]) for k in keys], rules)
        assert prepared.is_original(candidate, keys, rules, key=own) is fast["original"]
        assert fast["original"] is originality.is_original(candidate, [vectors[k] for k in keys], rules)
    return fast["original"]


def test_a_round_with_a_basis_agrees_with_the_plain_rule():
    """Leave-one-out over a round of families and adversarial submissions, judged by
    key as the service does, the basis rebuilt between checks as the round grows."""
    rng = np.random.default_rng(30)
    vectors = family_round(rng)
    keys = list(vectors)
    store = dict(vectors)
    prepared = PreparedRound(fetch_exact=store.__getitem__, basis_from=8, basis_size=6)
    verdicts, bases = [], []
    for i, key in enumerate(keys):
        prepared.add(key, vectors[key])
        if i in (3, 20, 40, len(keys) - 1):
            bases.append(prepared.stats["bases"])
            for judged in keys[: i + 1]:
                others = [k for k in keys[: i + 1] if k != judged]
                verdicts.append(agree_explained(prepared, vectors, vectors[judged], others, key=judged))
    assert bases[0] == 0 and bases[-1] >= 2, bases
    assert set(verdicts) == {True, False}
    assert prepared.stats["fetched"] > 0


def test_values_beyond_float32_get_the_plain_verdict():
    """Centred values beyond float32's range overflow in the stored copy; such
    vectors get no bound, and unrelated ones are not taken for correlated."""
    rng = np.random.default_rng(31)
    n = 300
    vectors = {"a": rng.normal(size=n) * 1e150, "b": rng.normal(size=n) * 1e150, "c": np.round(rng.random(n), 5)}
    for options in BASES:
        prepared = build(vectors, **options)
        for key, values in vectors.items():
            others = [k for k in vectors if k != key]
            assert agree_explained(prepared, vectors, values, others) is True


def test_the_own_key_is_used_only_for_the_values_it_holds(monkeypatch):
    """A candidate judged by key reuses its stored sketch only when its stored copy
    rebuilds exactly the values given: another key's values, replaced values and
    full-precision values are prepared again, and every verdict is the plain one."""
    rng = np.random.default_rng(32)
    vectors = family_round(rng, members=6)
    store = dict(vectors)
    prepared = PreparedRound(fetch_exact=store.__getitem__, basis_from=8, basis_size=6)
    for key, values in vectors.items():
        prepared.add(key, values)
    prepared_again = []
    real = __import__("scoring.prepared", fromlist=["prepare"]).prepare
    monkeypatch.setattr("scoring.prepared.prepare", lambda *args: prepared_again.append(1) or real(*args))
    others = [k for k in vectors if not k.startswith("f0")]

    def judged(candidate, key):
        del prepared_again[:]
        agree_explained(prepared, vectors, candidate, others, key=key)
        return len(prepared_again)

    # explain and is_original are each run without the key and with it: 2 preparations when the key's
    # sketch is reused, 4 when it is not
    assert judged(vectors["f0m1"], "f0m1") == 2
    assert judged(vectors["f0m4"], "f0m4") == 4          # full precision: not rebuilt from float32
    assert judged(vectors["f0m1"], "f0m2") == 4          # another submission's key
    assert judged(vectors["f0m1"], "absent") == 4        # not added (a replaced dataset)
    replaced = np.round(rng.random(vectors["f0m1"].size), 5)
    store["f0m1"] = vectors["f0m1"] = replaced
    prepared.add("f0m1", replaced)
    assert judged(replaced, "f0m1") == 2
    old = np.round(rng.random(replaced.size), 5)
    assert judged(old, "f0m1") == 4                       # the key now holds other values


@pytest.mark.parametrize("size", [0, 1, 2, 300])
def test_rounds_of_0_1_and_a_few_hundred(size):
    rng = np.random.default_rng(33 + size)
    n = 400
    family = rng.normal(size=n)
    vectors = {"k%d" % i: np.round(1 / (1 + np.exp(-(family * (i % 3 == 0) + rng.normal(size=n)))), 5)
               for i in range(size)}
    candidate = np.round(1 / (1 + np.exp(-(family + 0.3 * rng.normal(size=n)))), 5)
    prepared = build(vectors, basis_from=16, basis_size=8)
    prepared.add("candidate", candidate)
    assert prepared.stats["bases"] == (3 if size == 300 else 0)  # at 16, 64 and 256 submissions
    keys = list(vectors)
    agree_explained(prepared, dict(vectors, candidate=candidate), candidate, keys, key="candidate")
    if keys:
        agree_explained(prepared, vectors, vectors[keys[-1]], keys[:-1], key=keys[-1])


def test_replaced_and_discarded_keys_with_a_basis():
    rng = np.random.default_rng(34)
    vectors = family_round(rng, members=5)
    store = dict(vectors)
    prepared = PreparedRound(fetch_exact=store.__getitem__, basis_from=8, basis_size=6)
    for key, values in vectors.items():
        prepared.add(key, values)
    for key in ("f1m0", "copy", "f2m4"):
        prepared.discard(key)
        del vectors[key]
    for key in ("f0m1", "f3m2"):
        store[key] = vectors[key] = np.round(rng.random(vectors[key].size), 5)
        prepared.add(key, vectors[key])
    moved = [k for k in vectors if k.startswith("moved")]
    for judged in ["f0m0", "f0m1", "shuffled"] + moved[:2]:
        agree_explained(prepared, vectors, vectors[judged], [k for k in vectors if k != judged], key=judged)
    with pytest.raises(KeyError):
        prepared.explain(vectors["f0m0"], ["f1m0"])


def test_a_basis_rebuilt_while_a_check_runs_is_not_seen_by_it():
    """Deterministic interleaving: the check's first fetch_exact adds enough
    submissions to build a new basis (re-projecting every slot into new arrays)
    and replaces the keys being checked. The running check keeps its snapshot."""
    rng = np.random.default_rng(35)
    n = 500
    candidate = distinct_values(rng, n)
    vectors = {"r%d" % i: moved_copy(rng, candidate, 40) for i in range(6)}
    vectors["f"] = moved_copy(rng, candidate, 40) + rng.uniform(0, 1e-9, n)  # fetched, not rebuilt
    keys = list(vectors)
    interleaved = []

    def fetch(key):
        if not interleaved:
            interleaved.append(key)
            for i in range(30):
                prepared.add("churn%d" % i, np.round(rng.random(n), 5))
            for other in keys[:-1]:
                prepared.add(other, candidate)
            interleaved.append(prepared.stats["bases"])
        return vectors[key]

    prepared = PreparedRound(fetch_exact=fetch, grid_points=1, basis_from=4, basis_size=3)
    prepared.add("grid", np.full(n, 0.95))  # one grid point above every value: every KS pair is open
    for key in keys:
        prepared.add(key, vectors[key])
    before = prepared.stats["bases"]
    plain = evidence.originality_evidence(candidate, [(k, vectors[k]) for k in keys])
    assert prepared.explain(candidate, keys) == plain
    assert interleaved[0] == "f" and interleaved[1] > before >= 1


def test_concurrent_adds_rebuilds_and_explains():
    """A writer adds submissions (crossing the basis marks at 4, 16 and 64) and
    replaces some while a reader explains; every evidence is the plain one for
    its keys, whatever the interleaving."""
    rng = np.random.default_rng(36)
    n = 400
    family = rng.normal(size=n)
    pool = {"p%d" % i: np.round(1 / (1 + np.exp(-(family + rng.normal(size=n) * 0.3))), 5) for i in range(150)}
    pool.update(("f%d" % i, 1 / (1 + np.exp(-(family + rng.normal(size=n))))) for i in range(6))
    candidates = [np.round(1 / (1 + np.exp(-(family + rng.normal(size=n) * 0.3))), 5) for _ in range(3)]
    prepared = PreparedRound(fetch_exact=pool.__getitem__, basis_from=4, basis_size=4)
    published = list(pool)[:3]
    for key in published:
        prepared.add(key, pool[key])
    to_add = [k for k in pool if k not in published]
    done = threading.Event()
    failures, results = [], []

    def writer():
        try:
            for step, key in enumerate(to_add):
                prepared.add(key, pool[key])
                published.append(key)
                prepared.add("f%d" % (step % 6), pool["f%d" % (step % 6)].copy())
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        i = 0
        while not done.is_set() or i < 10:
            keys = [k for k in published if k in prepared]
            candidate = candidates[i % len(candidates)]
            results.append((candidate, keys, prepared.explain(candidate, keys)))
            i += 1
    finally:
        thread.join()
    assert not failures
    assert prepared.stats["bases"] == 3
    for candidate, keys, found in results:
        assert found == evidence.originality_evidence(candidate, [(k, pool[k]) for k in keys])
