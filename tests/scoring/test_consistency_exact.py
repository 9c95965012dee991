"""scoring.consistency's fast path: the same evidence as the plain per-era loop, bit for bit.

The plain loop (``np.unique`` of the era names, a mask per era, ``np.mean``
and the exact :func:`below` for every era) is kept here as the reference.
Every comparison is between two computations from the same row losses, or
against exact rational arithmetic, so no test depends on how a machine
rounds ``log`` or sums.
"""
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import consistency
from scoring.consistency import below, clearly_below, consistency_evidence, plain_consistency_evidence
from scoring.dataset import Tournament
from scoring.errors import DataError
from scoring.rules import Rules

BENCHMARK = Rules().consistency_benchmark
HALF_BELOW, HALF_ABOVE = np.nextafter(0.5, 0.0), np.nextafter(0.5, 1.0)


def bits(evidence):
    """The evidence with every float replaced by its exact hex spelling (so -0.0, NaN and ulps count)."""
    if isinstance(evidence, dict):
        return {key: bits(value) for key, value in evidence.items()}
    if isinstance(evidence, list):
        return [bits(value) for value in evidence]
    if isinstance(evidence, float):
        return float.hex(evidence)
    return evidence


def assert_same(eras, targets, probabilities, rules=Rules()):
    expected = bits(plain_consistency_evidence(eras, targets, probabilities, rules))
    assert bits(consistency_evidence(eras, targets, probabilities, rules)) == expected
    assert bits(consistency_evidence(pd.Categorical(eras), targets, probabilities, rules)) == expected
    return expected


#: Probabilities that make era means land on, or a hair either side of, the benchmark; 0 and 1 are clipped.
SPECIAL = [0.5, HALF_BELOW, HALF_ABOVE, 0.0, 1.0, 1e-300, 1 - 1e-16, 0.25, 0.75]


@st.composite
def validation_rows(draw):
    """Eras (some of a single row), 0/1 targets and probabilities drawn near the benchmark and at the clips."""
    n = draw(st.integers(1, 300))
    names = draw(st.lists(st.sampled_from(["era%d" % i for i in range(1, 13)] + ["eraX", "a", "b"]),
                          min_size=1, max_size=6, unique=True))
    eras = draw(st.lists(st.sampled_from(names), min_size=n, max_size=n))
    targets = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    probability = st.one_of(st.sampled_from(SPECIAL), st.floats(0, 1))
    probabilities = draw(st.lists(probability, min_size=n, max_size=n))
    return np.array(eras, dtype=object), np.array(targets), np.array(probabilities)


@settings(max_examples=150, deadline=None)
@given(validation_rows())
def test_fast_evidence_equals_the_plain_loop(rows):
    assert_same(*rows)


@settings(max_examples=100, deadline=None)
@given(validation_rows(), st.sampled_from([1e-15, 1e-3, 0.4, 0.0]))
def test_fast_evidence_equals_the_plain_loop_under_other_clips(rows, epsilon):
    """Epsilon 0 lets certain wrong predictions cost infinity: such eras are left to the exact test."""
    with np.errstate(divide="ignore", invalid="ignore"):
        assert_same(*rows, rules=Rules(logloss_epsilon=epsilon))


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 25, 29, 100, 127, 128, 129, 499, 750, 1000, 4099])
@pytest.mark.parametrize("probability", [0.5, HALF_BELOW, HALF_ABOVE], ids=["half", "below-half", "above-half"])
def test_eras_predicted_at_or_one_ulp_from_one_half(rows, probability):
    """Each era's mean sits on the benchmark or within an ulp or so of it, at sizes around numpy's summation blocks."""
    targets = (np.arange(rows) % 2).astype(float)
    eras = np.array(["era1"] * rows + ["era2"] * rows, dtype=object)
    y = np.concatenate([targets, 1 - targets])
    p = np.concatenate([np.full(rows, probability), np.full(rows, 0.5)])
    assert_same(eras, y, p)


def test_the_exact_test_runs_only_for_eras_too_close_to_call(monkeypatch):
    """An era predicted 0.5 throughout is left to :func:`below`; clearly better or worse eras are not."""
    calls = []

    def counting(losses, benchmark):
        calls.append(len(losses))
        return below(losses, benchmark)

    monkeypatch.setattr(consistency, "below", counting)
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 3000).astype(float)
    good = np.clip(0.5 + (targets - 0.5) * 0.2, 0, 1)
    eras = np.array(["good"] * 1000 + ["bad"] * 1000 + ["flat"] * 1000, dtype=object)
    p = np.concatenate([good[:1000], 1 - good[1000:2000], np.full(1000, 0.5)])
    found = consistency_evidence(pd.Categorical(eras), targets, p)
    assert [(e["era"], e["beats"]) for e in found["per_era"]] == [("bad", False), ("flat", False), ("good", True)]
    assert calls == [1000]


def exact_below(losses, benchmark):
    """Whether the mean of ``losses`` is below ``benchmark``, in rational arithmetic."""
    return sum(map(Fraction, losses)) < len(losses) * Fraction(benchmark)


@st.composite
def losses_near(draw):
    """Losses a few ulps around a benchmark, or spread widely, with the benchmark itself drawn too."""
    benchmark = draw(st.one_of(st.just(BENCHMARK), st.floats(1e-300, 1e3)))
    n = draw(st.integers(1, 200))
    ulp = math.ulp(benchmark)
    near = st.integers(-4, 4).map(lambda k: benchmark + k * ulp)
    spread = st.floats(0, 40)
    values = draw(st.lists(st.one_of(near, near, spread), min_size=n, max_size=n))
    return np.array(values), benchmark


@settings(max_examples=200, deadline=None)
@given(losses_near())
def test_a_decision_from_the_mean_is_the_exact_one(case):
    losses, benchmark = case
    mean = float(np.mean(losses))
    decided = clearly_below(mean, float(np.max(np.abs(losses))), losses.size, benchmark)
    truth = exact_below(losses, benchmark)
    assert below(losses, benchmark) is truth
    assert decided is None or decided is truth


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 10 ** 6])
def test_a_mean_on_the_benchmark_is_never_decided_from_the_float_mean(n):
    assert clearly_below(BENCHMARK, BENCHMARK, n, BENCHMARK) is None
    assert clearly_below(math.nextafter(BENCHMARK, 0), BENCHMARK, n, BENCHMARK) is None
    assert clearly_below(math.nextafter(BENCHMARK, 1), BENCHMARK, n, BENCHMARK) is None


@pytest.mark.parametrize("mean,peak", [(math.nan, 1.0), (math.inf, math.inf), (0.5, math.inf), (0.5, math.nan)])
def test_means_or_losses_that_are_not_finite_go_to_the_exact_test(mean, peak):
    assert clearly_below(mean, peak, 10, BENCHMARK) is None


def test_far_from_the_benchmark_is_decided():
    assert clearly_below(0.5, 30.0, 1000, BENCHMARK) is True
    assert clearly_below(0.9, 30.0, 1000, BENCHMARK) is False


# ---------------------------------------------------------------- the per-round Categorical

def test_categorical_with_unused_or_unsorted_categories_gives_the_plain_consistency_evidence():
    rng = np.random.default_rng(5)
    eras = rng.choice(np.array(["era3", "era1", "era2"], dtype=object), 400)
    targets = rng.integers(0, 2, 400).astype(float)
    p = rng.random(400)
    expected = assert_same(eras, targets, p)
    unused = pd.Categorical(eras, categories=["era0", "era1", "era2", "era3", "era9"])
    unsorted = pd.Categorical(eras, categories=["era3", "era1", "era2"])
    for categorical in (unused, unsorted):
        assert bits(consistency_evidence(categorical, targets, p)) == expected


def test_an_empty_categorical_has_no_eras_to_judge():
    eras = pd.Categorical(np.array(["era1", "era2"], dtype=object))
    with pytest.raises(DataError, match="no validation eras"):
        consistency_evidence(eras[:0], np.array([]), np.array([]))


def test_tournament_validation_eras_are_the_validation_rows_eras():
    data_types = np.array(["validation", "test", "validation", "live", "validation"], dtype=object)
    eras = np.array(["era2", "era1", "era1", "eraX", "era2"], dtype=object)
    tournament = Tournament(ids=pd.Index(list("abcde")), data_types=data_types, eras=eras,
                            targets=np.array([1.0, 0.0, 0.0, np.nan, 1.0]), features=np.zeros((5, 1), np.float32))
    assert list(tournament.validation_eras) == ["era2", "era1", "era2"]
    assert tournament.validation_eras is tournament.validation_eras  # built once
    p = np.array([0.7, 0.5, 0.2, 0.5, 0.6])
    valid = tournament.validation
    assert consistency_evidence(tournament.validation_eras, tournament.targets[valid], p[valid]) == \
        plain_consistency_evidence(eras[valid], tournament.targets[valid], p[valid])
