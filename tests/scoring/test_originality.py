"""scoring.originality against scipy's pearsonr and ks_2samp and a plain restatement of the rule.

Whether a user's own earlier submissions count is decided by the caller,
not by this module, so it is not tested here.
"""
import warnings

import numpy as np
import pytest
from scipy.stats import ks_2samp, pearsonr

from scoring.ks import ks_statistic
from scoring.originality import clip_correlation, is_constant, is_original, pearson, too_correlated
from scoring.rules import Rules

N = 1000


# ---------------------------------------------------------------- reference

def scipy_ks(a, b):
    """scipy's statistic, snapped to the exact k/n grid for equal sizes.

    scipy computes i/n - j/n in floating point (0.53 - 0.5 = 0.030000000000000027),
    while the rule is about counts: 30 of 1000 rows is a KS of exactly 0.03.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(ks_2samp(a, b, method="asymp").statistic)
    if len(a) == len(b):
        k = round(value * len(a))
        assert abs(value - k / len(a)) < 1e-12
        value = k / len(a)
    return value


def reference_is_original(candidate, others, rules=Rules()):
    """The rule as stated, every clause against every other, no shortcuts."""
    candidate = np.asarray(candidate, dtype=np.float64)
    similar = 0
    for other in others:
        other = np.asarray(other, dtype=np.float64)
        constant = len(set(candidate.tolist())) <= 1 or len(set(other.tolist())) <= 1
        if not constant and abs(pearsonr(candidate, other).statistic) > rules.correlation_limit:
            return False
        ks = scipy_ks(candidate, other)
        if ks < rules.duplicate_ks:
            return False
        if ks <= rules.similar_ks:
            similar += 1
    return similar < rules.max_similar


def moved(values, count, by=10.0):
    """A permuted copy (so correlation is near 0) with exactly ``count`` of the smallest values moved above all others."""
    rng = np.random.default_rng(count)
    out = np.sort(values).copy()
    out[:count] += by
    return rng.permutation(out)


# ---------------------------------------------------------------- pearson / is_constant / too_correlated

@pytest.mark.parametrize("seed", range(10))
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 3000))
    a = rng.random(n)
    b = rng.normal(size=n) * rng.normal() + a * rng.normal()
    if seed % 2:
        a, b = a.round(2), b.round(2)  # ties
    assert pearson(a, b) == pytest.approx(pearsonr(a, b).statistic, abs=1e-12)
    assert pearson(a, 1 - a) == pytest.approx(-1, abs=1e-12)
    assert pearson(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(
        pearsonr(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)).statistic, abs=1e-12)


def test_clip_correlation_brings_a_rounding_overshoot_back_to_the_bound():
    assert clip_correlation(1.0000000000000002) == 1.0
    assert clip_correlation(-1.0000000000000002) == -1.0
    assert clip_correlation(0.9999999999999999) == 0.9999999999999999
    assert clip_correlation(-0.25) == -0.25


def _raw_quotient(a, b):
    """The unclipped float64 Pearson quotient, computed as ``pearson`` computes it."""
    ca, cb = a - a.mean(), b - b.mean()
    return float(np.dot(ca, cb) / np.sqrt(np.dot(ca, ca) * np.dot(cb, cb)))


def test_pearson_of_an_affine_copy_never_passes_one():
    """Whether a copy's quotient rounds past 1 depends on the machine's BLAS, so
    search for copies that do here (about a quarter of small random ones) instead
    of assuming a particular one does; every copy must stay within [-1, 1]."""
    rng = np.random.default_rng(4)
    overshoots = []
    for _ in range(2000):
        x = rng.random(int(rng.integers(3, 60)))
        other = rng.uniform(-3, 3) * x + rng.uniform(-1, 1)
        r = pearson(x, other)
        assert -1.0 <= r <= 1.0
        assert not too_correlated(x, other, Rules(correlation_limit=1.0))
        if abs(_raw_quotient(x, other)) > 1.0:
            overshoots.append(r)
    assert overshoots, "no affine copy rounded past 1 on this machine: the search proves nothing"
    assert all(abs(r) == 1.0 for r in overshoots)


def test_is_constant():
    assert is_constant(np.array([]))
    assert is_constant(np.array([0.3]))
    assert is_constant(np.full(100, 0.5))
    assert not is_constant(np.array([0.5] * 99 + [0.5000001]))
    assert not is_constant(np.array([0.0, 1.0]))


def test_too_correlated_uses_absolute_value_and_strict_limit():
    rng = np.random.default_rng(1)
    x = rng.random(N)
    assert too_correlated(x, 2 * x + 1)
    assert too_correlated(x, 1 - x)
    assert not too_correlated(x, rng.random(N))
    noisy = x + rng.normal(scale=0.2, size=N)
    r = pearsonr(x, noisy).statistic
    assert too_correlated(x, noisy, Rules(correlation_limit=r - 1e-9))
    assert not too_correlated(x, noisy, Rules(correlation_limit=r + 1e-9))


def test_too_correlated_skips_constant_vectors():
    x = np.random.default_rng(2).random(N)
    assert not too_correlated(np.full(N, 0.5), x)
    assert not too_correlated(x, np.full(N, 0.5))
    assert not too_correlated(np.full(N, 0.5), np.full(N, 0.5))


# ---------------------------------------------------------------- is_original: clauses

def test_constant_candidate_against_equal_constant_is_a_ks_duplicate():
    c = np.full(N, 0.5)
    assert scipy_ks(c, c.copy()) == 0
    assert not is_original(c, [c.copy()])
    assert not reference_is_original(c, [c.copy()])


def test_constant_candidate_against_other_constant_is_original():
    a, b = np.full(N, 0.5), np.full(N, 0.6)
    assert scipy_ks(a, b) == 1
    assert is_original(a, [b])
    assert reference_is_original(a, [b])


def test_constant_against_random_is_original_and_does_not_warn():
    x = np.random.default_rng(3).random(N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert is_original(np.full(N, 0.5), [x])
        assert is_original(x, [np.full(N, 0.5)])


@pytest.mark.parametrize("transform", [lambda x: 1 - x, lambda x: 0.5 * x + 0.2, lambda x: x ** 2],
                         ids=["negated", "affine", "square"])
def test_highly_correlated_is_not_original_even_when_ks_is_large(transform):
    x = np.random.default_rng(4).beta(2, 6, N)  # skewed, so 1 - x has a different distribution
    other = transform(x)
    assert abs(pearsonr(x, other).statistic) > 0.95
    assert scipy_ks(x, other) > 0.03  # only the correlation clause can reject it
    assert not is_original(x, [other])
    assert not reference_is_original(x, [other])
    # ... and it is that clause: with a looser limit it passes
    assert is_original(x, [other], Rules(correlation_limit=1.0))


def test_permuting_changes_correlation_but_not_ks():
    """Rows are matched by position; the caller aligns ids."""
    rng = np.random.default_rng(5)
    x = rng.beta(2, 6, N)
    other = 0.5 * x + 0.3
    shuffled = rng.permutation(other)
    assert ks_statistic(np.sort(x), np.sort(shuffled)) == ks_statistic(np.sort(x), np.sort(other))
    assert abs(pearson(x, shuffled)) < 0.2 < 0.95 < pearson(x, other)
    assert not is_original(x, [other])
    assert is_original(x, [shuffled])


@pytest.mark.parametrize("count,duplicate", [(0, True), (1, True), (4, True), (5, False), (6, False)])
def test_ks_below_duplicate_limit_is_never_original(count, duplicate):
    x = np.random.default_rng(6).random(N)
    other = moved(x, count)
    assert scipy_ks(x, other) == count / N
    assert abs(pearsonr(x, other).statistic) < 0.95
    lenient = Rules(max_similar=10)
    assert is_original(x, [other], lenient) is (not duplicate)
    assert reference_is_original(x, [other], lenient) is (not duplicate)


def test_ks_exactly_at_similar_limit_is_similar():
    x = np.random.default_rng(7).random(N)
    other = moved(x, 30)
    assert scipy_ks(x, other) == 0.03 == 30 / N
    assert not is_original(x, [other])                         # max_similar = 1
    assert is_original(x, [other], Rules(max_similar=2))       # the only similar one
    assert not is_original(x, [other, moved(x, 20)], Rules(max_similar=2))  # two similar ones
    assert is_original(x, [other, moved(x, 31)], Rules(max_similar=2))      # 31/1000 is not similar


def test_ks_just_above_similar_limit_is_not_similar():
    x = np.random.default_rng(8).random(N)
    other = moved(x, 31)
    assert scipy_ks(x, other) == 0.031
    assert is_original(x, [other])
    assert reference_is_original(x, [other])


def test_unrelated_others_are_original():
    rng = np.random.default_rng(9)
    x = rng.random(N)
    # independent uniform samples of 1000 often have KS < 0.03 -- similar by the rule -- so use other shapes
    others = [rng.beta(a, 2, N) for a in (1.5, 2, 3, 4, 5)]
    assert all(scipy_ks(x, o) > 0.03 for o in others)
    assert is_original(x, others)
    assert is_original(x, [])


def test_order_of_others_does_not_matter():
    rng = np.random.default_rng(10)
    x = rng.random(N)
    others = [moved(x, 10), rng.beta(3, 2, N), moved(x, 25), moved(x, 100)]
    rules = Rules(max_similar=3)
    results = {is_original(x, [others[i] for i in order], rules)
               for order in (range(4), reversed(range(4)), [2, 0, 3, 1])}
    assert results == {True}
    others.append(moved(x, 15))
    assert not is_original(x, others, rules)


# ---------------------------------------------------------------- is_original: many random rounds

def random_round(seed):
    """A candidate and others covering every clause: models, near copies, ties, permutations, constants."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([200, 500, 1000]))
    signal = rng.normal(size=n)
    candidate = np.clip(0.5 + 0.05 * (signal + rng.normal(size=n)), 0, 1).round(int(rng.integers(2, 6)))
    others = []
    for _ in range(int(rng.integers(3, 12))):
        kind = rng.integers(0, 9)
        if kind == 0:    # another model of the same signal, correlation anywhere around the limit
            w = rng.uniform(0.05, 1.0)
            other = 0.5 + 0.05 * (signal + w * rng.normal(size=n))
        elif kind == 1:  # near copy
            other = candidate + rng.normal(scale=10 ** rng.uniform(-6, -2), size=n)
        elif kind == 2:  # rounded copy: ties
            other = candidate.round(int(rng.integers(1, 3)))
        elif kind == 3:  # same distribution, different rows: KS tiny, correlation small
            other = rng.permutation(candidate)
        elif kind == 4:  # permuted and slightly moved: KS near the similar limit
            other = moved(candidate, int(rng.integers(0, 40)), by=1.0)
        elif kind == 5:  # negated model
            other = 1 - candidate + rng.normal(scale=rng.uniform(0, 0.03), size=n)
        elif kind == 6:  # constant
            other = np.full(n, rng.choice([0.5, float(np.median(candidate))]))
        elif kind == 7:  # unrelated
            other = rng.random(n)
        else:            # shifted copy: correlation 1, KS grows with the shift
            other = candidate + rng.uniform(0, 0.01)
        others.append(np.clip(other, 0, 1))
    if rng.random() < 0.1:
        candidate = np.full(n, 0.5)
    return candidate, others


RULE_SETS = [Rules(), Rules(max_similar=2), Rules(max_similar=3), Rules(correlation_limit=0.99),
             Rules(similar_ks=0.01, duplicate_ks=0.002)]


def test_is_original_matches_reference_on_random_rounds():
    verdicts = []
    for seed in range(120):
        candidate, others = random_round(seed)
        for rules in RULE_SETS:
            expected = reference_is_original(candidate, others, rules)
            assert is_original(candidate, others, rules) is expected, (seed, rules)
            verdicts.append(expected)
        # each other alone, so every clause is exercised on its own
        for other in others:
            expected = reference_is_original(candidate, [other])
            assert is_original(candidate, [other]) is expected, seed
            verdicts.append(expected)
    assert 0.2 < np.mean(verdicts) < 0.8  # both outcomes well represented

