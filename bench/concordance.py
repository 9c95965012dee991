"""concordance: per-submission concordance from precomputed cluster groups vs per-cluster ks_2samp.

The fast path is the service's: :func:`scoring.concordance.fit_clusters`
once per round (timed and reported as ``fit_ms``),
:func:`scoring.concordance.cluster_groups` once (``groups_ms``), then
:func:`scoring.concordance.concordance` per submission. The baseline is
the 2017 way: per submission and cluster, select the rows of each data
type with boolean masks and call ``scipy.stats.ks_2samp`` for each of the
three comparisons. Both values must agree to 1e-12, and the verdicts
exactly, or the run aborts.

The default sizes keep the run short; ``--train-rows 535000 --features 50
--cluster-rows 243000`` measures the clustering of a full 2017 round.
"""
import numpy as np
import scipy.stats

from bench.data import tournament_features, training_features
from bench.timing import BenchmarkError, clock_ms, median, result
from scoring.concordance import PAIRS, cluster_groups, concordance, fit_clusters
from scoring.rules import Rules

#: Values of the two concordance computations may differ by float rounding only.
TOLERANCE = 1e-12


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="tournament rows each submission predicts")
    parser.add_argument("--submissions", type=int, default=12, help="submissions to judge")
    parser.add_argument("--train-rows", type=int, default=50000, help="training rows for fit_clusters")
    parser.add_argument("--features", type=int, default=21, help="feature columns")
    parser.add_argument("--cluster-rows", type=int, default=None,
                        help="tournament rows for the fit_clusters timing (default: --rows)")
    parser.add_argument("--seed", type=int, default=0)


def submissions(features, data_types, count, seed):
    """Predictions driven by the features, as models' are; a few treat live rows differently."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        weights = rng.normal(0, 1, features.shape[1])
        score = (features - 0.5) @ weights + rng.normal(0, rng.uniform(0.2, 2), features.shape[0])
        values = 1 / (1 + np.exp(-score * rng.uniform(0.05, 0.5) / score.std()))
        if i % 4 == 3:  # a submission whose live predictions are off: not concordant
            live = data_types == "live"
            values[live] = np.clip(values[live] + 0.05, 0, 1)
        out.append(np.round(values, 5))
    return out


def baseline_concordance(labels, data_types, predictions, rules):
    """The 2017 computation: masks and scipy's ks_2samp per cluster and pair."""
    scores = []
    for cluster in np.unique(labels):
        parts = {}
        for data_type in ("validation", "test", "live"):
            chosen = predictions[(labels == cluster) & (data_types == data_type)]
            if chosen.size:
                parts[data_type] = chosen
        stats = [scipy.stats.ks_2samp(parts[a], parts[b]).statistic for a, b in PAIRS if a in parts and b in parts]
        if stats:
            scores.append(max(stats))
    value = float(np.mean(scores))
    return value, value < rules.concordance_threshold


def fit_timing(args, rules):
    """fit_clusters on --train-rows x --features training and --cluster-rows tournament rows."""
    rows = args.cluster_rows or args.rows
    tournament, _ = tournament_features(rows, args.features, seed=args.seed)
    training = training_features(args.train_rows, args.features, seed=args.seed + 1)
    return clock_ms(fit_clusters, training, tournament, rules)[1]


def run(args):
    rules = Rules()
    tournament, data_types = tournament_features(args.rows, args.features, seed=args.seed)
    training = training_features(args.train_rows, args.features, seed=args.seed + 1)
    labels, fit_ms = clock_ms(fit_clusters, training, tournament, rules)
    if args.cluster_rows and args.cluster_rows != args.rows:
        fit_ms = fit_timing(args, rules)
    groups, groups_ms = clock_ms(cluster_groups, labels, data_types)
    fast_ms, baseline_ms, concordant = [], [], 0
    for predictions in submissions(tournament, data_types, args.submissions, args.seed):
        (value, verdict), ms = clock_ms(concordance, groups, predictions, rules)
        (expected, expected_verdict), base_ms = clock_ms(baseline_concordance, labels, data_types, predictions, rules)
        if abs(value - expected) > TOLERANCE or verdict != expected_verdict:
            raise BenchmarkError("concordance %r (%s) differs from ks_2samp's %r (%s)" % (value, verdict, expected, expected_verdict))
        fast_ms.append(ms)
        baseline_ms.append(base_ms)
        concordant += verdict
    fields = {
        "rows": args.rows,
        "submissions": args.submissions,
        "concordant": concordant,
        "clusters": len(groups),
        "fit_ms": round(fit_ms, 1),
        "fit_train_rows": args.train_rows,
        "fit_tournament_rows": args.cluster_rows or args.rows,
        "features": args.features,
        "groups_ms": round(groups_ms, 2),
        "verified": "%d/%d" % (len(fast_ms), len(fast_ms)),
    }
    return [result("concordance", fields, median(fast_ms), median(baseline_ms))]
