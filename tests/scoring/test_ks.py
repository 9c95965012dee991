"""scoring.ks against scipy.stats.ks_2samp, the statistic the tournament's rule was written with."""
import warnings

import numpy as np
import pytest
from scipy.stats import ks_2samp

from scoring.errors import DataError
from scoring.ks import ks_counts, ks_statistic

TOL = 1e-12


def scipy_ks(a, b):
    # method only affects the p-value, whose tiny-sample warnings are not our concern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ks_2samp(a, b, method="asymp").statistic)


def ks_samples(a, b):
    """The statistic of two unsorted samples, the way the rules take it."""
    return ks_statistic(np.sort(a), np.sort(b))


def assert_all_agree(a, b):
    """ks_statistic (on sorted input, either order) and scipy give the same statistic."""
    expected = scipy_ks(a, b)
    assert ks_samples(a, b) == pytest.approx(expected, abs=TOL)
    assert ks_statistic(np.sort(a), np.sort(b)) == pytest.approx(expected, abs=TOL)
    # symmetric in its arguments
    assert ks_samples(b, a) == pytest.approx(expected, abs=TOL)
    return expected


def pairs():
    """(name, a, b) cases covering the shapes the rules meet."""
    rng = np.random.default_rng(20170401)
    yield "random", rng.random(500), rng.random(500)
    yield "random-shifted", rng.normal(size=700), rng.normal(0.1, size=700)
    yield "heavy-ties", rng.random(1000).round(2), rng.random(1000).round(2)
    yield "heavy-ties-unequal", rng.random(333).round(2), rng.random(1000).round(2)
    yield "few-values", rng.integers(0, 3, 400).astype(float), rng.integers(0, 4, 400).astype(float)
    yield "unequal-sizes", rng.random(499), rng.random(1500)
    yield "unequal-sizes-small", rng.random(7), rng.random(3)
    yield "size-1-vs-many", np.array([0.5]), rng.random(50)
    yield "size-1-each-equal", np.array([0.25]), np.array([0.25])
    yield "size-1-each-different", np.array([0.25]), np.array([0.75])
    yield "constant-equal", np.full(100, 0.5), np.full(100, 0.5)
    yield "constant-different", np.full(100, 0.4), np.full(100, 0.6)
    yield "constant-vs-random", np.full(200, 0.5), rng.random(200)
    yield "constant-vs-random-unequal", np.full(30, 0.5), rng.random(200)
    x = rng.random(1000)
    yield "near-copy", x, np.clip(x + rng.normal(scale=1e-4, size=x.size), 0, 1)


@pytest.mark.parametrize("name,a,b", list(pairs()), ids=[p[0] for p in pairs()])
def test_matches_scipy(name, a, b):
    assert_all_agree(a, b)


def test_matches_scipy_on_many_random_pairs():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n1, n2 = rng.integers(1, 300, size=2)
        decimals = rng.integers(1, 6)
        a = rng.beta(2, 2, n1).round(decimals)
        b = (rng.beta(2, 2, n2) + rng.normal(scale=0.05)).round(decimals)
        if rng.random() < 0.5:
            n2 = n1
            b = b[:n1] if b.size >= n1 else np.resize(b, n1)
        assert_all_agree(a, b)


def test_identical_samples_give_zero():
    rng = np.random.default_rng(1)
    a = rng.random(1000)
    assert scipy_ks(a, a) == 0
    assert ks_samples(a, a) == 0
    assert ks_samples(a, rng.permutation(a)) == 0
    assert ks_counts(np.sort(a), np.sort(a)) == 0


def test_disjoint_samples_give_one():
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(400) + 2
    assert scipy_ks(a, b) == 1
    assert ks_samples(a, b) == 1
    assert ks_samples(b, a) == 1
    n = 300
    assert ks_counts(np.sort(a), np.sort(b[:n])) == n


@pytest.mark.parametrize("seed", range(10))
def test_counts_over_n_is_the_statistic_for_equal_sizes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2000))
    a = np.sort(rng.random(n).round(int(rng.integers(1, 5))))
    b = np.sort(rng.random(n).round(int(rng.integers(1, 5))))
    k = ks_counts(a, b)
    assert isinstance(k, int)
    assert 0 <= k <= n
    assert k * (1 / n) == pytest.approx(ks_statistic(a, b), abs=TOL)
    assert k / n == ks_statistic(a, b)
    assert k / n == pytest.approx(scipy_ks(a, b), abs=TOL)


def test_counts_is_an_exact_count():
    """Shifting exactly m of n values past every other value moves the counts by exactly m."""
    n, m = 1000, 30
    a = np.arange(n) / n
    b = a.copy()
    b[:m] += 10  # the m smallest move above everything
    assert ks_counts(np.sort(a), np.sort(b)) == m
    assert ks_statistic(np.sort(a), np.sort(b)) == m / n
    assert scipy_ks(a, b) == pytest.approx(m / n, abs=TOL)


@pytest.mark.parametrize("a,b", [([], [0.5]), ([0.5], []), ([], [])])
def test_statistic_rejects_empty_input(a, b):
    with pytest.raises(DataError):  # the data's fault: the service fails the submission with this reason
        ks_statistic(np.array(a, dtype=float), np.array(b, dtype=float))
    with pytest.raises(ValueError):
        ks_samples(np.array(a, dtype=float), np.array(b, dtype=float))


def test_counts_of_two_empty_arrays_is_zero():
    assert ks_counts(np.array([], dtype=float), np.array([], dtype=float)) == 0


def test_result_is_a_python_float_in_unit_interval():
    rng = np.random.default_rng(3)
    for n1, n2 in [(10, 10), (10, 17)]:
        value = ks_samples(rng.random(n1), rng.random(n2))
        assert isinstance(value, float)
        assert 0 <= value <= 1
