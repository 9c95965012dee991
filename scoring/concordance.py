"""Concordance: do a submission's predictions look alike on validation, test and live?

Rows are grouped by K-Means clusters of the round's features; within a
cluster the three prediction distributions should agree. The clustering
depends only on the round's data, so it is computed once per round
(:func:`fit_clusters`) and each submission then costs a few sorts
(:func:`concordance`).
"""
import numpy as np
from sklearn.cluster import MiniBatchKMeans

from scoring.dataset import DatasetError
from scoring.ks import ks_statistic
from scoring.rules import Rules

VALIDATION, TEST, LIVE = "validation", "test", "live"
#: The three comparisons made within each cluster.
PAIRS = ((VALIDATION, TEST), (VALIDATION, LIVE), (LIVE, TEST))


def fit_clusters(training_features, tournament_features, rules=Rules()):
    """Cluster label (int8) of every tournament row.

    The model is fitted on training rows without missing values stacked
    with the tournament rows. Tournament rows with missing values get the
    training column means so that every row has a cluster.
    """
    train = np.asarray(training_features, dtype=np.float64)
    train = train[~np.isnan(train).any(axis=1)]
    tournament = np.array(tournament_features, dtype=np.float64)
    holes = np.isnan(tournament)
    if holes.any():
        fill = np.nanmean(train, axis=0) if len(train) else np.zeros(tournament.shape[1])
        tournament[holes] = np.take(fill, np.nonzero(holes)[1])
    model = MiniBatchKMeans(n_clusters=rules.concordance_clusters, random_state=rules.concordance_seed)
    model.fit(np.vstack([train, tournament]))
    return model.predict(tournament).astype(np.int8)


def cluster_groups(labels, data_types):
    """Row indices for each (cluster, data type), computed once per round.

    Returns ``{cluster: {data_type: int array}}`` over the clusters present.
    """
    labels = np.asarray(labels)
    data_types = np.asarray(data_types)
    return {
        int(c): {t: np.flatnonzero((labels == c) & (data_types == t)) for t in (VALIDATION, TEST, LIVE)}
        for c in np.unique(labels)
    }


def pair_name(pair):
    """How a comparison is named in the evidence, e.g. ``validation-test``."""
    return "%s-%s" % pair


def cluster_evidence(cluster, by_type, predictions):
    """One cluster's rows per data type, KS of each comparison and the worst of them.

    A comparison with an empty side is skipped (KS None); ``max`` is None
    when the cluster has nothing to compare.
    """
    parts = {t: np.sort(predictions[idx]) for t, idx in by_type.items() if len(idx)}
    ks = {pair_name((a, b)): ks_statistic(parts[a], parts[b]) if a in parts and b in parts else None
          for a, b in PAIRS}
    stats = [value for value in ks.values() if value is not None]
    return {"cluster": int(cluster), "sizes": {t: int(len(idx)) for t, idx in by_type.items()},
            "ks": ks, "max": max(stats) if stats else None}


def concordance_evidence(groups, predictions, rules=Rules()):
    """Everything the concordance verdict rests on, as a JSON-able dict.

    Per cluster: rows per data type, the KS of each comparison and their
    maximum; then the mean of the maxima, the threshold and the verdict.
    :func:`concordance` decides from this very dict. Raises DatasetError
    when no cluster holds two data types to compare: the round's data
    cannot support the check, whatever the submission, so the service
    records that reason instead of an internal error.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    clusters = [cluster_evidence(c, by_type, predictions) for c, by_type in groups.items()]
    scores = [entry["max"] for entry in clusters if entry["max"] is not None]
    if not scores:
        raise DatasetError("the round's data cannot support concordance: "
                           "no cluster has rows of two data types (validation, test, live) to compare")
    value = float(np.mean(scores))
    return {"concordant": bool(value < rules.concordance_threshold), "mean": value,
            "threshold": rules.concordance_threshold, "clusters": clusters}


def concordance(groups, predictions, rules=Rules()):
    """Return ``(mean worst KS, concordant)`` for predictions in round row order.

    Raises DatasetError when no cluster holds two data types to compare.
    """
    evidence = concordance_evidence(groups, predictions, rules)
    return evidence["mean"], evidence["concordant"]
