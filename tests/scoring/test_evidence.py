"""Evidence: the numbers behind each verdict, against scipy and numpy, and against the verdicts.

Three promises are tested on adversarial data (ties, constants, copies,
KS counts and correlations on the thresholds):

* every number equals what a straightforward scipy / numpy computation
  gives (``scipy.stats.ks_2samp``, ``numpy.corrcoef``, ``sklearn``'s log
  loss);
* the verdict each evidence implies is the rule's decision;
* ``PreparedRound.explain`` returns the plain evidence dict for dict,
  computing only a handful of pairs exactly.
"""
import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss

from scoring import concordance, consistency, evidence, originality
from scoring.bounds import cutoff
from scoring.rules import Rules
from tests.scoring.test_prepared import (
    BASES,
    GRIDS,
    build,
    correlated_with,
    distinct_values,
    moved_copy,
    random_round,
    random_rules,
)


# ---------------------------------------------------------------- helpers

def scipy_ks(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy.stats.ks_2samp(a, b, method="asymp").statistic)


def numpy_correlation(a, b):
    """np.corrcoef, or None when either vector is constant (the rule's convention)."""
    if np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(np.corrcoef(a, b)[0, 1])


def assert_plain_json(value, path="evidence"):
    """Only str, int, float, bool, None, lists and dicts with str keys: what JSON and BSON both store as is."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, path
            assert_plain_json(item, "%s.%s" % (path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_plain_json(item, "%s[%d]" % (path, index))
    else:
        assert type(value) in (str, int, float, bool, type(None)), "%s is %s" % (path, type(value))
        assert not (type(value) is float and not math.isfinite(value)), path
    json.dumps(value, allow_nan=False)


def check_against_scipy(found, candidate, vectors, rules):
    """Every listed pair's numbers are scipy's and numpy's; its clauses follow from them."""
    for entry in found["counted_against"] + found["closest_by_ks"] + found["closest_by_correlation"]:
        other = vectors[entry["key"]]
        assert entry["ks"] == pytest.approx(scipy_ks(candidate, other), abs=1e-12)
        expected_r = numpy_correlation(candidate, other)
        if expected_r is None:
            assert entry["correlation"] is None
        else:
            assert entry["correlation"] == pytest.approx(expected_r, abs=1e-12)
        correlated = originality.too_correlated(candidate, other, rules)
        assert (evidence.CORRELATED in entry["clauses"]) == correlated
        assert (evidence.DUPLICATE in entry["clauses"]) == (entry["ks"] < rules.duplicate_ks)


def plain(candidate, vectors, keys, rules=Rules(), **options):
    return evidence.originality_evidence(candidate, [(k, vectors[k]) for k in keys], rules, **options)


def explained(prepared, vectors, candidate, keys, rules=Rules(), **options):
    """explain == plain evidence, and its verdict == is_original (fast and plain)."""
    fast = prepared.explain(candidate, keys, rules, **options)
    reference = plain(candidate, vectors, keys, rules, **options)
    assert fast == reference
    verdict = originality.is_original(candidate, [vectors[k] for k in keys], rules)
    assert fast["original"] is verdict is prepared.is_original(candidate, keys, rules)
    assert_plain_json(fast)
    return fast


# ---------------------------------------------------------------- originality, plain

def threshold_round(n=1000, seed=0):
    """A base vector and others at KS counts on both sides of both cut-offs, plus
    correlations within 1e-12 of the limit, a copy, a permutation and constants."""
    rng = np.random.default_rng(seed)
    rules = Rules()
    base = distinct_values(rng, n)
    dup_cut = cutoff(n, lambda k: k / n < rules.duplicate_ks)
    similar_cut = cutoff(n, lambda k: k / n <= rules.similar_ks)
    vectors = {"base": base, "copy": base.copy(), "permuted": rng.permutation(base),
               "half": np.full(n, 0.5), "other_half": np.full(n, 0.5)}
    for count in (dup_cut - 1, dup_cut, similar_cut - 1, similar_cut, similar_cut + 1):
        vectors["moved%d" % count] = moved_copy(rng, base, count)
    for delta in (-1e-12, 1e-12):
        vectors["r%+g" % delta] = correlated_with(rng, base, rules.correlation_limit + delta)
    return vectors


def test_plain_evidence_numbers_are_scipys_and_the_verdict_is_the_rules():
    vectors = threshold_round()
    rules = Rules()
    for key, candidate in vectors.items():
        others = [k for k in vectors if k != key]
        for subset in (others, others[3:], others[-2:], others[5:7]):
            found = plain(candidate, vectors, subset, rules, closest=len(subset), cap=len(subset))
            assert found["original"] is originality.is_original(candidate, [vectors[k] for k in subset], rules)
            assert found["compared"] == len(subset)
            check_against_scipy(found, candidate, vectors, rules)
            # closest=len: every pair is listed, by KS ascending then by |r| descending
            assert [e["key"] for e in found["closest_by_ks"]] == sorted(
                subset, key=lambda k: (scipy_ks(candidate, vectors[k]), subset.index(k)))
            ranked = [k for k in subset if numpy_correlation(candidate, vectors[k]) is not None]
            assert len(found["closest_by_correlation"]) == len(ranked)
            assert_plain_json(found)


def test_threshold_pairs_get_the_right_clause():
    vectors = threshold_round()
    rules = Rules()
    n = vectors["base"].size
    dup_cut = cutoff(n, lambda k: k / n < rules.duplicate_ks)
    similar_cut = cutoff(n, lambda k: k / n <= rules.similar_ks)
    keys = [k for k in vectors if k != "base"]
    found = plain(vectors["base"], vectors, keys, rules, cap=len(keys))
    clauses = {entry["key"]: entry["clauses"] for entry in found["counted_against"]}
    assert clauses["copy"] == [evidence.CORRELATED, evidence.DUPLICATE]
    assert clauses["permuted"] == [evidence.DUPLICATE]
    assert clauses["moved%d" % (dup_cut - 1)] == [evidence.DUPLICATE]
    assert clauses["moved%d" % dup_cut] == [evidence.SIMILAR]
    assert clauses["moved%d" % (similar_cut - 1)] == [evidence.SIMILAR]
    assert "moved%d" % similar_cut not in clauses
    assert clauses["r+1e-12"] == [evidence.CORRELATED]
    assert "r-1e-12" not in clauses
    assert "half" not in clauses  # constant: KS far, correlation undefined
    # decisive offenders come first, each group in the given order
    listed = [entry["key"] for entry in found["counted_against"]]
    decisive = [k for k in listed if clauses[k] != [evidence.SIMILAR]]
    assert listed == decisive + [k for k in listed if clauses[k] == [evidence.SIMILAR]]
    assert found["decisive_total"] == len(decisive) and found["similar_total"] == 2
    assert found["original"] is False


def test_similar_pairs_count_against_an_original_candidate_below_the_limit():
    vectors = threshold_round()
    n = vectors["base"].size
    similar_key = "moved%d" % cutoff(n, lambda k: k / n < 0.005)
    keys = [similar_key, "half", "moved%d" % (cutoff(n, lambda k: k / n <= 0.03) + 1)]
    for rules, original in ((Rules(max_similar=2), True), (Rules(max_similar=1), False), (Rules(max_similar=0), False)):
        found = plain(vectors["base"], vectors, keys, rules)
        assert found["original"] is original is originality.is_original(vectors["base"], [vectors[k] for k in keys], rules)
        assert [e["key"] for e in found["counted_against"]] == [similar_key]
        assert found["thresholds"]["max_similar"] == rules.max_similar


def test_constant_candidate_has_no_correlations():
    vectors = threshold_round()
    keys = [k for k in vectors if k != "half"]
    found = plain(vectors["half"], vectors, keys)
    assert found["closest_by_correlation"] == []
    assert all(entry["correlation"] is None for entry in found["closest_by_ks"])
    assert [e["key"] for e in found["closest_by_ks"]][0] == "other_half"  # KS 0 with the other constant
    assert found["original"] is False


def test_lists_are_capped_but_the_total_is_counted():
    rng = np.random.default_rng(1)
    base = np.round(rng.random(500), 5)
    vectors = {"base": base}
    vectors.update(("copy%02d" % i, rng.permutation(base)) for i in range(45))
    vectors.update(("own%d" % i, np.round(rng.random(500), 5)) for i in range(5))
    keys = [k for k in vectors if k != "base"]
    found = plain(base, vectors, keys)
    assert len(found["counted_against"]) == evidence.OFFENDER_CAP
    assert found["counted_against_total"] == found["decisive_total"] == 45
    assert [e["key"] for e in found["counted_against"]] == keys[:evidence.OFFENDER_CAP]
    assert len(found["closest_by_ks"]) == len(found["closest_by_correlation"]) == evidence.CLOSEST
    assert len(json.dumps(found)) < 8000


def test_no_others():
    found = evidence.originality_evidence(np.array([0.2, 0.4]), [])
    assert found["original"] is True and found["compared"] == 0
    assert found["counted_against"] == found["closest_by_ks"] == found["closest_by_correlation"] == []


# ---------------------------------------------------------------- originality, explain

@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("grid_points", GRIDS)
def test_explain_equals_plain_evidence_on_threshold_rounds(grid_points, basis):
    vectors = threshold_round(seed=grid_points)
    prepared = build(vectors, grid_points, **basis)
    for rules in (Rules(), Rules(max_similar=2), Rules(max_similar=0)):
        for key, candidate in vectors.items():
            others = [k for k in vectors if k != key]
            for options in ({}, {"closest": 1, "cap": 2}, {"closest": 0, "cap": 0}, {"closest": 20, "cap": 20}):
                explained(prepared, vectors, candidate, others, rules, **options)


@pytest.mark.parametrize("basis", BASES)
def test_explain_on_ties_in_the_closest_lists(basis):
    """Several pairs at the same KS and the same |correlation|: position breaks the tie."""
    rng = np.random.default_rng(2)
    base = distinct_values(rng, 800)
    moved = moved_copy(rng, base, 100)
    vectors = {"base": base}
    for i in range(6):
        vectors["same%d" % i] = rng.permutation(moved)      # identical KS to base
        vectors["mirror%d" % i] = 1 - base                  # correlation exactly -1
        vectors["copy%d" % i] = base.copy()
    prepared = build(vectors, **basis)
    keys = [k for k in vectors if k != "base"]
    for order in (keys, keys[::-1], sorted(keys)):
        found = explained(prepared, vectors, base, order, closest=3)
        assert found["closest_by_ks"][0]["key"] == [k for k in order if k.startswith("copy")][0]
    found = explained(prepared, vectors, vectors["same0"], [k for k in keys if k != "same0"], closest=4)
    assert [e["ks"] for e in found["closest_by_ks"]] == [0.0] * 4


def test_explain_with_full_precision_values_fetches_rarely():
    rng = np.random.default_rng(3)
    base = rng.random(1000) * 0.5 + 0.25
    vectors = {"base": base}
    for i, delta in enumerate((-1e-9, 0.0, 1e-9)):
        vectors["r%d" % i] = correlated_with(rng, base, 0.95 + delta)
    vectors.update(("far%d" % i, rng.random(1000)) for i in range(30))
    prepared = build(vectors)
    keys = [k for k in vectors if k != "base"]
    before = prepared.stats["fetched"]
    explained(prepared, vectors, base, keys)
    fetched = prepared.stats["fetched"] - before
    assert 0 < fetched <= 3 + 2 * evidence.CLOSEST  # the three near the limit, and the listed ones


def test_explain_on_degenerate_correlations():
    """Spreads so small that the plain Pearson is not finite: the clause follows the
    rule's own value, the stored number is None, and explain still agrees."""
    n = 300
    tiny = np.zeros(n)
    tiny[::7] = 1e-200
    vectors = {"tiny": tiny, "tiny_too": np.roll(tiny, 1), "normal": np.linspace(0, 1, n).round(4)}
    prepared = build(vectors)
    for key in vectors:
        explained(prepared, vectors, vectors[key], [k for k in vectors if k != key])


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("seed", range(4))
def test_explain_equals_plain_evidence_on_random_rounds(seed, basis):
    rng = np.random.default_rng(100 + seed)
    verdicts = []
    for _ in range(60):
        vectors = random_round(rng)
        prepared = build(vectors, int(rng.choice(GRIDS)), **basis)
        rules = random_rules(rng) if rng.random() < 0.5 else Rules()
        options = {"closest": int(rng.integers(0, 5)), "cap": int(rng.integers(0, 4))}
        for key, values in vectors.items():
            others = [k for k in vectors if k != key]
            verdicts.append(explained(prepared, vectors, values, others, rules, **options)["original"])
    assert 0.1 < np.mean(verdicts) < 0.9


def test_explain_makes_few_pairs_exact():
    """An original candidate against 300 unrelated others: exact statistics for a
    handful of pairs (the closest ones), not one per member of the round."""
    rng = np.random.default_rng(4)
    n = 6000
    vectors = {"k%d" % i: np.round(rng.beta(2, 2 + i / 100, n), 5) for i in range(300)}
    prepared = build(vectors)
    candidate = np.round(rng.beta(3, 2, n), 5)
    before = prepared.stats
    found = explained(prepared, vectors, candidate, list(vectors))
    after = prepared.stats
    exact = after["ks_exact"] - before["ks_exact"] + after["correlation_exact"] - before["correlation_exact"]
    assert found["original"] is True
    assert exact <= 6 * evidence.CLOSEST, exact
    assert after["fetched"] == before["fetched"]


def test_explain_unknown_key_and_wrong_length():
    vectors = {"a": np.array([0.1, 0.2, 0.3])}
    prepared = build(vectors)
    with pytest.raises(KeyError):
        prepared.explain(vectors["a"], ["absent"])
    with pytest.raises(ValueError):
        prepared.explain(np.array([0.1, 0.2]), ["a"])


# ---------------------------------------------------------------- concordance

def reference_cluster_ks(labels, data_types, predictions):
    """{cluster: {pair name: scipy KS or None}} computed from scratch."""
    found = {}
    for cluster in np.unique(labels):
        found[int(cluster)] = {}
        for a, b in concordance.PAIRS:
            pa = predictions[(labels == cluster) & (data_types == a)]
            pb = predictions[(labels == cluster) & (data_types == b)]
            found[int(cluster)]["%s-%s" % (a, b)] = scipy_ks(pa, pb) if len(pa) and len(pb) else None
    return found


def concordance_case(seed, empty_live_cluster=False):
    rng = np.random.default_rng(seed)
    n = 900
    labels = rng.integers(0, 5, n)
    data_types = rng.choice(["validation", "test", "live"], n, p=[0.4, 0.4, 0.2])
    if empty_live_cluster:
        data_types[(labels == 2) & (data_types == "live")] = "test"
        data_types[labels == 4] = "validation"  # nothing to compare in cluster 4
    predictions = np.round(rng.beta(2, 2, n), 2)  # two decimals: many ties
    predictions[data_types == "live"] += 0.05 * seed
    return labels, data_types, np.clip(predictions, 0, 1)


@pytest.mark.parametrize("seed,empty", [(0, False), (1, True), (2, False), (3, True)])
def test_concordance_evidence_against_scipy(seed, empty):
    labels, data_types, predictions = concordance_case(seed, empty)
    groups = concordance.cluster_groups(labels, data_types)
    found = concordance.concordance_evidence(groups, predictions)
    reference = reference_cluster_ks(labels, data_types, predictions)
    assert [c["cluster"] for c in found["clusters"]] == sorted(reference)
    maxima = []
    for cluster in found["clusters"]:
        expected = reference[cluster["cluster"]]
        assert set(cluster["ks"]) == set(expected)
        for name, value in expected.items():
            assert (cluster["ks"][name] is None) == (value is None)
            if value is not None:
                assert cluster["ks"][name] == pytest.approx(value, abs=1e-12)
        present = [v for v in cluster["ks"].values() if v is not None]
        assert cluster["max"] == (max(present) if present else None)
        for data_type in ("validation", "test", "live"):
            assert cluster["sizes"][data_type] == int(np.sum((labels == cluster["cluster"]) & (data_types == data_type)))
        if cluster["max"] is not None:
            maxima.append(cluster["max"])
    assert found["mean"] == pytest.approx(np.mean(maxima), abs=1e-12)
    mean, verdict = concordance.concordance(groups, predictions)
    assert (found["mean"], found["concordant"]) == (mean, verdict)
    assert found["threshold"] == Rules().concordance_threshold
    if empty:
        assert any(c["max"] is None for c in found["clusters"])
    assert_plain_json(found)


def test_concordance_verdict_at_the_threshold():
    labels, data_types, predictions = concordance_case(2)
    groups = concordance.cluster_groups(labels, data_types)
    mean = concordance.concordance_evidence(groups, predictions)["mean"]
    for threshold, concordant in ((mean, False), (np.nextafter(mean, 1), True), (np.nextafter(mean, 0), False)):
        rules = Rules(concordance_threshold=float(threshold))
        found = concordance.concordance_evidence(groups, predictions, rules)
        assert found["concordant"] is concordant
        assert concordance.concordance(groups, predictions, rules) == (mean, concordant)


def test_concordance_evidence_refuses_rounds_with_nothing_to_compare():
    labels = np.zeros(4, dtype=int)
    groups = concordance.cluster_groups(labels, np.array(["validation"] * 4))
    with pytest.raises(ValueError):
        concordance.concordance_evidence(groups, np.full(4, 0.5))


# ---------------------------------------------------------------- consistency

def consistency_case(seed):
    """Eras of different sizes; one predicted 0.5 throughout (logloss on the benchmark)."""
    rng = np.random.default_rng(seed)
    eras = np.repeat(["era%d" % i for i in range(1, 8)], [50, 80, 30, 100, 64, 70, 40])
    targets = rng.integers(0, 2, eras.size).astype(float)
    probabilities = np.clip(0.5 + (targets - 0.5) * rng.normal(0.05, 0.2, eras.size), 0, 1)
    probabilities[eras == "era3"] = 0.5
    probabilities[eras == "era5"] = np.where(targets[eras == "era5"] == 1, 1.0, 0.0)  # clipped at epsilon
    return eras, targets, probabilities


@pytest.mark.parametrize("seed", range(3))
def test_consistency_evidence_against_sklearn_and_the_exact_test(seed):
    eras, targets, probabilities = consistency_case(seed)
    rules = Rules()
    found = consistency.consistency_evidence(eras, targets, probabilities, rules)
    assert [e["era"] for e in found["per_era"]] == sorted(set(eras.tolist()))
    losses = consistency.row_losses(targets, probabilities)
    for entry in found["per_era"]:
        mine = eras == entry["era"]
        expected = log_loss(targets[mine], np.clip(probabilities[mine], 1e-15, 1 - 1e-15), labels=[0, 1])
        assert entry["logloss"] == pytest.approx(expected, abs=1e-12)
        assert entry["rows"] == int(mine.sum())
        assert entry["beats"] is consistency.below(losses[mine], rules.consistency_benchmark)
    era3 = next(e for e in found["per_era"] if e["era"] == "era3")
    assert era3["beats"] is False and era3["logloss"] == pytest.approx(math.log(2), abs=1e-15)
    better = sum(e["beats"] for e in found["per_era"])
    assert found["better"] == better and found["eras"] == 7
    assert found["consistency"] == better / 7 * 100 == consistency.consistency(eras, targets, probabilities, rules)
    assert found["benchmark"] == rules.consistency_benchmark
    assert_plain_json(found)


def test_consistency_evidence_with_no_eras():
    with pytest.raises(ValueError):
        consistency.consistency_evidence(np.array([]), np.array([]), np.array([]))


# ---------------------------------------------------------------- originality, explain: property

@st.composite
def small_rounds(draw):
    """A small round of families, copies, shuffles, constants and full-precision
    files; a candidate from it or new; the rules; and the index's basis options."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    n = draw(st.sampled_from([1, 2, 5, 40, 257, 600]))
    families = [rng.normal(size=n) for _ in range(draw(st.integers(1, 3)))]
    vectors = {}
    for i in range(draw(st.integers(0, 24))):
        kind = draw(st.sampled_from(["member", "member", "member", "copy", "shuffled", "constant", "precise"]))
        if kind in ("copy", "shuffled") and vectors:
            source = vectors[draw(st.sampled_from(sorted(vectors)))]
            values = source.copy() if kind == "copy" else rng.permutation(source)
        elif kind == "constant":
            values = np.full(n, draw(st.sampled_from([0.5, 0.25])))
        else:
            family = families[i % len(families)]
            values = 1 / (1 + np.exp(-(family + rng.normal(size=n) * draw(st.sampled_from([0.02, 0.3, 1.0])))))
            values = values if kind == "precise" else np.round(values, draw(st.sampled_from([2, 5, 6])))
        vectors["s%d" % i] = values
    rules = Rules(correlation_limit=draw(st.sampled_from([0.95, 0.5, 0.99])),
                  duplicate_ks=draw(st.sampled_from([0.005, 0.05])),
                  similar_ks=draw(st.sampled_from([0.03, 0.2])), max_similar=draw(st.integers(0, 3)))
    basis = draw(st.sampled_from([{}, {"basis_from": 2, "basis_size": 3}, {"basis_from": 5, "basis_size": 8}]))
    newcomer = np.round(1 / (1 + np.exp(-(families[0] + rng.normal(size=n)))), 4)
    return vectors, newcomer, rules, basis, draw(st.sampled_from([1, 64, 4096]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_rounds(), st.data())
def test_explain_equals_plain_evidence_property(case, data):
    """explain (by key and without) == plain evidence, and is_original == the plain rule,
    for a candidate in the round or not, with or without a round basis."""
    vectors, newcomer, rules, basis, grid_points = case
    prepared = build(vectors, grid_points, **basis)
    keys = list(vectors)
    if keys and data.draw(st.booleans()):
        own = data.draw(st.sampled_from(keys))
        candidate, others = vectors[own], [k for k in keys if k != own]
    else:
        own, candidate, others = None, newcomer, keys
    plain = evidence.originality_evidence(candidate, [(k, vectors[k]) for k in others], rules)
    for key in {None, own}:
        assert prepared.explain(candidate, others, rules, key=key) == plain
        assert prepared.is_original(candidate, others, rules, key=key) is plain["original"]
    assert plain["original"] is originality.is_original(candidate, [vectors[k] for k in others], rules)
