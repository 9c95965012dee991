"""scoring.concordance against a direct MiniBatchKMeans fit and scipy's ks_2samp per cluster."""
import functools
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.cluster import MiniBatchKMeans

from scoring.concordance import cluster_groups, concordance, fit_clusters
from scoring.dataset import DatasetError
from scoring.rules import Rules
from tests.conftest import SAMPLES

DATA = SAMPLES
TYPES = ("validation", "test", "live")
PAIRS = (("validation", "test"), ("validation", "live"), ("live", "test"))


# ---------------------------------------------------------------- references

def reference_labels(train, tournament, clusters=5, seed=1337):
    train = np.asarray(train, dtype=np.float64)
    train = train[~np.isnan(train).any(axis=1)]
    tournament = np.asarray(tournament, dtype=np.float64)
    model = MiniBatchKMeans(n_clusters=clusters, random_state=seed).fit(np.vstack([train, tournament]))
    return model.predict(tournament)


def scipy_ks(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ks_2samp(a, b, method="asymp").statistic)


def reference_concordance(labels, data_types, predictions):
    """Mean over clusters of the worst KS of the three pairs; clusters with nothing to compare skipped."""
    labels, data_types, predictions = map(np.asarray, (labels, data_types, predictions))
    scores = []
    for cluster in np.unique(labels):
        stats = []
        for a, b in PAIRS:
            pa = predictions[(labels == cluster) & (data_types == a)]
            pb = predictions[(labels == cluster) & (data_types == b)]
            if len(pa) and len(pb):
                stats.append(scipy_ks(pa, pb))
        if stats:
            scores.append(max(stats))
    if not scores:
        raise AssertionError("reference: nothing to compare")
    return float(np.mean(scores))


# ---------------------------------------------------------------- data

def _frozen(*arrays):
    for a in arrays:
        a.flags.writeable = False  # shared between tests: none may change them
    return arrays


def generated_round(seed=5):
    return _generated_round(seed)


@functools.lru_cache(maxsize=None)
def _generated_round(seed):
    from queues import demo
    training, tournament = demo.make_round(seed=seed, train_rows=3000, validation_eras=6, validation_rows=1500,
                                           test_rows=1500, live_rows=750)
    columns = [c for c in tournament.columns if "feature" in c]
    predictions = demo.demo_predictions(training, tournament, seed=seed)
    _frozen(*predictions.values())
    return _frozen(training[columns].to_numpy(dtype=np.float64), tournament[columns].to_numpy(dtype=np.float64),
                   tournament["data_type"].to_numpy()) + (predictions,)


def real_round():
    paths = tuple(os.path.join(DATA, "sample_%s.csv.bz2" % name) for name in ("training", "tournament", "result"))
    if not all(os.path.exists(p) for p in paths):
        pytest.skip("real 2017 samples not available in %s" % DATA)
    return _real_round(paths)


@functools.lru_cache(maxsize=None)
def _real_round(paths):
    training = pd.read_csv(paths[0], dtype={"id": str})
    tournament = pd.read_csv(paths[1], dtype={"id": str})
    result = pd.read_csv(paths[2], dtype={"id": str}).set_index("id")
    columns = [c for c in tournament.columns if "feature" in c]
    predictions = result.loc[tournament["id"], "probability"].to_numpy(dtype=np.float64)
    return _frozen(training[columns].to_numpy(dtype=np.float64), tournament[columns].to_numpy(dtype=np.float64),
                   tournament["data_type"].to_numpy(), predictions)


def prediction_variants(data_types, base, seed=0):
    """Some prediction vectors: the base, noisy copies, and ones whose live/test rows drift away."""
    rng = np.random.default_rng(seed)
    live = data_types == "live"
    test = data_types == "test"
    yield "base", base
    yield "noise", np.clip(0.5 + rng.normal(scale=0.02, size=base.size), 0, 1)
    yield "live-shift", np.clip(base + 0.05 * live, 0, 1)
    yield "test-shift", np.clip(base - 0.1 * test, 0, 1)
    yield "ties", base.round(2)


# ---------------------------------------------------------------- fit_clusters

def test_fit_clusters_equals_direct_minibatch_kmeans_on_generated_round():
    train, tournament, _, _ = generated_round()
    labels = fit_clusters(train, tournament)
    assert labels.dtype == np.int8
    assert labels.shape == (len(tournament),)
    np.testing.assert_array_equal(labels, reference_labels(train, tournament))
    assert set(np.unique(labels)) <= set(range(5))


def test_fit_clusters_equals_direct_minibatch_kmeans_on_real_sample():
    train, tournament, _, _ = real_round()
    np.testing.assert_array_equal(fit_clusters(train, tournament), reference_labels(train, tournament))
    # float32 input, as scoring.dataset delivers it, is clustered in float64 just the same
    np.testing.assert_array_equal(fit_clusters(train.astype(np.float32), tournament.astype(np.float32)),
                                  reference_labels(train.astype(np.float32), tournament.astype(np.float32)))


def test_fit_clusters_uses_rules_clusters_and_seed():
    train, tournament, _, _ = generated_round()
    rules = Rules(concordance_clusters=3, concordance_seed=7)
    labels = fit_clusters(train, tournament, rules)
    np.testing.assert_array_equal(labels, reference_labels(train, tournament, clusters=3, seed=7))
    assert set(np.unique(labels)) == {0, 1, 2}


def test_training_rows_with_nan_are_dropped():
    train, tournament, _, _ = generated_round()
    rng = np.random.default_rng(9)
    holey = train.copy()
    rows = rng.choice(len(train), 200, replace=False)
    holey[rows, rng.integers(0, train.shape[1], 200)] = np.nan
    clean = np.delete(train, rows, axis=0)
    labels = fit_clusters(holey, tournament)
    np.testing.assert_array_equal(labels, fit_clusters(clean, tournament))
    np.testing.assert_array_equal(labels, reference_labels(clean, tournament))


def test_tournament_rows_with_nan_still_get_a_label():
    train, tournament, _, _ = generated_round()
    holey = tournament.copy()
    holey[3, 0] = np.nan
    holey[10, :5] = np.nan
    holey[20, :] = np.nan
    labels = fit_clusters(train, holey)
    assert labels.shape == (len(tournament),)
    assert set(np.unique(labels)) <= set(range(5))
    # documented fill: the training column means
    filled = holey.copy()
    means = train.mean(axis=0)
    filled[np.isnan(filled)] = np.take(means, np.nonzero(np.isnan(holey))[1])
    np.testing.assert_array_equal(labels, reference_labels(train, filled))


def test_fit_clusters_does_not_modify_its_inputs():
    train, tournament, _, _ = generated_round()
    train, tournament = train.copy(), tournament.copy()
    train[0, 0] = np.nan
    tournament[1, 1] = np.nan
    train_copy, tournament_copy = train.copy(), tournament.copy()
    # read-only, as pandas' copy-on-write hands out arrays: filling holes must work on a copy
    train.flags.writeable = False
    tournament.flags.writeable = False
    fit_clusters(train, tournament)
    np.testing.assert_array_equal(train, train_copy)
    np.testing.assert_array_equal(tournament, tournament_copy)


# ---------------------------------------------------------------- concordance

@pytest.mark.parametrize("source", ["generated", "real"])
def test_concordance_equals_direct_ks_computation(source):
    train, tournament, data_types, predictions = generated_round() if source == "generated" else real_round()
    base = predictions["model"] if isinstance(predictions, dict) else predictions
    labels = fit_clusters(train, tournament)
    groups = cluster_groups(labels, data_types)
    verdicts = set()
    for name, p in prediction_variants(data_types, base):
        expected = reference_concordance(labels, data_types, p)
        value, concordant = concordance(groups, p)
        assert value == pytest.approx(expected, abs=1e-12), name
        assert concordant == (expected < 0.12), name
        verdicts.add(concordant)
    if source == "generated":
        assert verdicts == {True, False}  # the variants exercise both outcomes


def test_every_demo_submission_on_generated_round():
    train, tournament, data_types, predictions = generated_round(seed=11)
    labels = fit_clusters(train, tournament)
    groups = cluster_groups(labels, data_types)
    for name, p in predictions.items():
        value, concordant = concordance(groups, p)
        expected = reference_concordance(labels, data_types, p)
        assert value == pytest.approx(expected, abs=1e-12), name
        assert concordant == (expected < 0.12), name


@pytest.mark.parametrize("source", ["generated", "real"])
def test_threshold_boundary(source):
    train, tournament, data_types, predictions = generated_round() if source == "generated" else real_round()
    base = predictions["model"] if isinstance(predictions, dict) else predictions
    labels = fit_clusters(train, tournament)
    groups = cluster_groups(labels, data_types)
    expected = reference_concordance(labels, data_types, base)
    value, _ = concordance(groups, base)
    assert concordance(groups, base, Rules(concordance_threshold=expected + 1e-9)) == (value, True)
    assert concordance(groups, base, Rules(concordance_threshold=expected - 1e-9)) == (value, False)
    # strictly below: a threshold equal to the value is not met, the next float up is
    assert concordance(groups, base, Rules(concordance_threshold=value))[1] is False
    assert concordance(groups, base, Rules(concordance_threshold=float(np.nextafter(value, np.inf))))[1] is True


@pytest.mark.parametrize("seed", range(3))
def test_row_order_does_not_matter(seed):
    train, tournament, data_types, predictions = generated_round()
    labels = fit_clusters(train, tournament)
    p = predictions["other-model"]
    order = np.random.default_rng(seed).permutation(len(labels))
    before = concordance(cluster_groups(labels, data_types), p)
    after = concordance(cluster_groups(labels[order], data_types[order]), p[order])
    assert after == before


def test_cluster_groups_partition_rows_by_cluster_and_type():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 300)
    data_types = rng.choice(TYPES, 300)
    groups = cluster_groups(labels, data_types)
    assert sorted(groups) == [0, 1, 2, 3]
    seen = np.concatenate([idx for by_type in groups.values() for idx in by_type.values()])
    assert sorted(seen.tolist()) == list(range(300))
    for cluster, by_type in groups.items():
        assert set(by_type) == set(TYPES)
        for data_type, idx in by_type.items():
            assert (labels[idx] == cluster).all() and (data_types[idx] == data_type).all()


def test_type_absent_from_a_cluster_is_skipped():
    rng = np.random.default_rng(12)
    # cluster 0: validation and test only; cluster 1: all three; cluster 2: live only (nothing to compare)
    labels = np.array([0] * 60 + [1] * 90 + [2] * 40)
    data_types = np.array(["validation"] * 30 + ["test"] * 30 + ["validation", "test", "live"] * 30 + ["live"] * 40)
    p = rng.random(len(labels))
    p[labels == 2] = 5.0  # would dominate any statistic it took part in
    value, _ = concordance(cluster_groups(labels, data_types), p)
    expected = reference_concordance(labels, data_types, p)
    assert value == pytest.approx(expected, abs=1e-12)
    only_vt = scipy_ks(p[:30], p[30:60])
    rows = labels == 1
    all_three = max(scipy_ks(p[rows & (data_types == a)], p[rows & (data_types == b)]) for a, b in PAIRS)
    assert value == pytest.approx((only_vt + all_three) / 2, abs=1e-12)


def test_cluster_with_validation_and_live_only_uses_that_pair():
    labels = np.zeros(20, dtype=int)
    data_types = np.array(["validation"] * 10 + ["live"] * 10)
    p = np.concatenate([np.linspace(0, 1, 10), np.linspace(0.5, 1.5, 10)])
    value, _ = concordance(cluster_groups(labels, data_types), p)
    assert value == pytest.approx(scipy_ks(p[:10], p[10:]), abs=1e-12)


def test_no_comparable_cluster_raises():
    labels = np.array([0, 0, 1, 1, 2])
    data_types = np.array(["validation", "validation", "test", "test", "live"])
    with pytest.raises(DatasetError, match="no cluster has rows of two data types"):
        concordance(cluster_groups(labels, data_types), np.linspace(0, 1, 5))


def test_identical_distributions_are_concordant_and_disjoint_are_not():
    rng = np.random.default_rng(21)
    labels = rng.integers(0, 5, 3000)
    data_types = np.array(TYPES * 1000)
    same = np.tile(rng.random(1000), 3)  # each type gets exactly the same values
    order = np.argsort(labels, kind="stable")
    labels, data_types = labels[order], data_types[order]
    groups = cluster_groups(labels, data_types)
    value, concordant = concordance(groups, same[order])
    assert value == pytest.approx(reference_concordance(labels, data_types, same[order]), abs=1e-12)
    apart = np.where(data_types == "live", 2.0, 0.0) + rng.random(3000)
    assert concordance(groups, apart) == (1.0, False)
