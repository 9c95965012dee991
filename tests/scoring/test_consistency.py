"""scoring.consistency against sklearn's log_loss and a plain per-era loop."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from scoring.consistency import consistency, logloss
from scoring.errors import DataError
from scoring.rules import Rules
from tests.conftest import sample_paths

EPS = 1e-15


def sk_logloss(y, p):
    """sklearn's log_loss with the rule's explicit clip (labels given so one-class eras work)."""
    return log_loss(np.asarray(y), np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS), labels=[0, 1])


def reference_consistency(eras, targets, probabilities, benchmark=-math.log(0.5)):
    """The rule written out: percent of eras whose sklearn log_loss is strictly below the benchmark."""
    eras = np.asarray(eras)
    names = sorted(set(eras.tolist()))
    if not names:
        raise AssertionError("reference needs eras")
    better = 0
    for name in names:
        rows = eras == name
        if sk_logloss(targets[rows], probabilities[rows]) < benchmark:
            better += 1
    return better * 100 / len(names)


def random_validation(seed, eras=12, rows=2400, skill=None):
    """Eras, 0/1 targets and probabilities whose quality varies from era to era."""
    rng = np.random.default_rng(seed)
    era = rng.integers(0, eras, rows)
    names = np.array(["era%d" % (86 + e) for e in era])
    signal = rng.normal(size=rows)
    targets = (signal + rng.normal(scale=2.0, size=rows) > 0).astype(np.float64)
    skill = rng.normal(0, 0.05, eras) if skill is None else np.asarray(skill)
    probabilities = np.clip(0.5 + skill[era] * signal + rng.normal(scale=0.01, size=rows), 0.001, 0.999)
    return names, targets, probabilities


# ---------------------------------------------------------------- logloss

@pytest.mark.parametrize("seed", range(5))
def test_logloss_matches_sklearn_inside_unit_interval(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    y = rng.integers(0, 2, n)
    p = rng.uniform(1e-6, 1 - 1e-6, n)
    assert logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12, abs=1e-12)


def test_logloss_matches_sklearn_with_certain_predictions():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 1000)
    p = rng.random(1000)
    p[:10] = 0.0
    p[10:20] = 1.0
    p[20:30] = y[20:30]          # certain and right
    p[30:40] = 1 - y[30:40]      # certain and wrong: each costs -ln(1e-15)
    expected = sk_logloss(y, p)
    assert np.isfinite(logloss(y, p))
    assert logloss(y, p) == pytest.approx(expected, rel=1e-12)


def test_logloss_certain_and_wrong_costs_the_clip():
    assert logloss([1], [0.0]) == pytest.approx(-math.log(EPS), rel=1e-9)
    # 1 - 1e-15 is not exact in binary, so this side costs -ln(1 - fl(1 - 1e-15)), as in sklearn.
    assert logloss([0], [1.0]) == pytest.approx(-math.log1p(-(1 - EPS)), rel=1e-12)
    assert logloss([0], [1.0]) == pytest.approx(sk_logloss([0], [1.0]), rel=1e-12)
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - EPS), abs=1e-15)


def test_logloss_epsilon_argument_is_used():
    assert logloss([1], [0.0], epsilon=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-12)


def test_logloss_of_one_half_is_ln2():
    y = np.arange(100) % 2
    assert logloss(y, np.full(100, 0.5)) == pytest.approx(math.log(2), rel=1e-15)


# ---------------------------------------------------------------- consistency

@pytest.mark.parametrize("seed", range(20))
def test_consistency_matches_reference_loop(seed):
    eras, y, p = random_validation(seed)
    expected = reference_consistency(eras, y, p)
    assert consistency(eras, y, p) == pytest.approx(expected, abs=1e-12)


def test_random_data_is_not_trivially_0_or_100():
    """Guard for the test above: the generated eras really are mixed."""
    values = {reference_consistency(*random_validation(seed)) for seed in range(20)}
    assert any(0 < v < 100 for v in values)


def test_consistency_counts_each_good_era():
    # 4 eras with strong positive skill, 6 with negative skill: exactly 40%.
    eras, y, p = random_validation(5, eras=10, rows=5000, skill=[0.2] * 4 + [-0.2] * 6)
    assert reference_consistency(eras, y, p) == 40
    assert consistency(eras, y, p) == pytest.approx(40)


@pytest.mark.parametrize("seed", range(5))
def test_consistency_ignores_row_order(seed):
    eras, y, p = random_validation(seed)
    order = np.random.default_rng(100 + seed).permutation(len(eras))
    assert consistency(eras[order], y[order], p[order]) == consistency(eras, y, p)


def test_consistency_is_a_percentage_of_eras_not_rows():
    # One tiny good era and one huge bad era: 50%, whatever the row counts.
    eras = np.array(["a"] * 4 + ["b"] * 1000)
    y = np.array([1, 0, 1, 0] + [1, 0] * 500, dtype=float)
    p = np.array([0.9, 0.1, 0.9, 0.1] + [0.1, 0.9] * 500)
    assert reference_consistency(eras, y, p) == 50
    assert consistency(eras, y, p) == 50


@pytest.mark.parametrize("rows", [
    2, 10, 50, 100, 499, 1000,
    # Sizes where the float mean of n copies of -ln(0.5) rounds below ln 2 (decided exactly now).
    25,
    29,
])
def test_era_exactly_at_benchmark_does_not_count(rows):
    """Predicting 0.5 everywhere is the benchmark itself (loss ln 2): not better than random."""
    y = (np.arange(rows) % 2).astype(float)
    eras = np.array(["era1"] * rows)
    assert consistency(eras, y, np.full(rows, 0.5)) == 0


def test_benchmark_era_does_not_count_among_others():
    eras = np.array(["good"] * 4 + ["flat"] * 100)
    y = np.array([1, 0, 1, 0] + [1, 0] * 50, dtype=float)
    p = np.array([0.9, 0.1, 0.9, 0.1] + [0.5] * 100)
    assert logloss(y[4:], p[4:]) == math.log(2)
    assert consistency(eras, y, p) == 50


def test_no_eras_raises_a_data_error():
    empty = np.array([], dtype=np.float64)
    with pytest.raises(DataError, match="era"):
        consistency(np.array([], dtype=str), empty, empty)


def test_custom_benchmark_changes_the_result():
    eras, y, p = random_validation(8)
    losses = sorted(sk_logloss(y[eras == era], p[eras == era]) for era in set(eras.tolist()))
    n = len(losses)
    # A benchmark between the k-th and (k+1)-th smallest era loss counts exactly k eras.
    for k in range(n + 1):
        low = losses[k - 1] if k else 0.0
        high = losses[k] if k < n else losses[-1] + 1
        benchmark = (low + high) / 2
        expected = reference_consistency(eras, y, p, benchmark)
        assert expected == pytest.approx(k * 100 / n)
        assert consistency(eras, y, p, Rules(consistency_benchmark=benchmark)) == pytest.approx(expected)


def test_custom_epsilon_is_used():
    eras = np.array(["a", "a", "a"])
    y = np.array([0.0, 0.0, 0.0])
    p = np.array([1.0, 0.0, 0.0])  # one certain and wrong prediction
    # With the default clip the loss is about 11.5; clipped at 0.4 it is (-ln 0.4 - 2 ln 0.6) / 3 < ln 2.
    assert (-math.log(0.4) - 2 * math.log(0.6)) / 3 < math.log(2)
    assert consistency(eras, y, p) == 0
    assert consistency(eras, y, p, Rules(logloss_epsilon=0.4)) == 100


# ---------------------------------------------------------------- data

def _demo_round():
    demo = pytest.importorskip("queues.demo")
    training, tournament = demo.make_round(seed=3, train_rows=3000, validation_rows=2400, test_rows=600, live_rows=600)
    return demo, training, tournament


def test_consistency_on_generated_round():
    demo, training, tournament = _demo_round()
    predictions = demo.demo_predictions(training, tournament)
    validation = (tournament["data_type"] == "validation").to_numpy()
    eras = tournament["era"].to_numpy()[validation]
    y = tournament["target"].to_numpy()[validation]
    for name, values in predictions.items():
        p = values[validation]
        assert consistency(eras, y, p) == pytest.approx(reference_consistency(eras, y, p), abs=1e-12), name


def test_consistency_on_real_sample():
    tournament_path, result_path = sample_paths("sample_tournament.csv.bz2", "sample_result.csv.bz2")
    tournament = pd.read_csv(tournament_path, dtype={"id": str})
    result = pd.read_csv(result_path, dtype={"id": str})
    merged = tournament.merge(result, on="id", validate="one_to_one")
    validation = merged[merged["data_type"] == "validation"]
    assert len(validation) == 499
    eras = validation["era"].to_numpy()
    y = validation["target"].to_numpy(dtype=np.float64)
    p = validation["probability"].to_numpy(dtype=np.float64)
    assert consistency(eras, y, p) == pytest.approx(reference_consistency(eras, y, p), abs=1e-12)
    # And some deliberately bad predictions on the same rows.
    worse = 1 - p
    assert consistency(eras, y, worse) == pytest.approx(reference_consistency(eras, y, worse), abs=1e-12)
