"""The plain originality rule as a set property, which the fast path relies on.

``scoring.prepared`` looks at pairs in its own order and stops at the
first certainty. That is only the same rule if the plain loop's verdict
is a property of the set of pairs: not original exactly when some pair
is too correlated, some pair is a KS duplicate, or at least
``max(max_similar, 1)`` pairs are KS-similar (the loop counts before it
compares, so 0 acts as 1).
"""
import itertools

import numpy as np
import pytest

from scoring import originality
from scoring.ks import ks_statistic
from scoring.rules import Rules


def closed_form(candidate, others, rules):
    """The rule stated over the whole set of pairs."""
    similar = 0
    for other in others:
        if originality.too_correlated(candidate, other, rules):
            return False
        ks = ks_statistic(np.sort(candidate), np.sort(other))
        if ks < rules.duplicate_ks:
            return False
        similar += ks <= rules.similar_ks
    return similar < max(rules.max_similar, 1)


def small_round(rng, n=200):
    """A candidate and others at every relation to it: copies, shuffles, shifts, noise."""
    candidate = np.round(rng.beta(2, 2, n), 3)
    others = [
        np.round(rng.beta(2, 2, n), 3),
        rng.permutation(candidate),
        np.round(candidate + rng.normal(0, 0.02, n), 3),
        np.round(np.clip(rng.permutation(candidate) + 0.01, 0, 1), 3),
        np.full(n, 0.5),
        np.round(rng.beta(2, 2, n), 3),
    ]
    return candidate, [others[i] for i in rng.choice(len(others), size=rng.integers(0, 5), replace=False)]


@pytest.mark.parametrize("max_similar", [0, 1, 2, 3])
def test_verdict_is_a_property_of_the_set_of_pairs(max_similar):
    rng = np.random.default_rng(max_similar)
    verdicts = []
    for _ in range(40):
        candidate, others = small_round(rng)
        rules = Rules(max_similar=max_similar, similar_ks=float(rng.choice([0.03, 0.1, 0.2])))
        expected = closed_form(candidate, others, rules)
        for order in itertools.permutations(range(len(others))):
            assert originality.is_original(candidate, [others[i] for i in order], rules) == expected
        verdicts.append(expected)
    assert set(verdicts) == {True, False}


def test_zero_max_similar_acts_as_one():
    rng = np.random.default_rng(5)
    candidate = rng.permutation(np.arange(100) / 200)
    similar = rng.permutation(np.concatenate([candidate[candidate >= 0.01], [0.9, 0.91]]))
    assert ks_statistic(np.sort(candidate), np.sort(similar)) == 0.02
    for max_similar in (0, 1):
        assert originality.is_original(candidate, [similar], Rules(max_similar=max_similar)) is False
    assert originality.is_original(candidate, [similar], Rules(max_similar=2)) is True
    assert originality.is_original(candidate, [], Rules(max_similar=0)) is True
