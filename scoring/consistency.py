"""Consistency: the share of validation eras in which a submission beats random."""
import numpy as np

from scoring.rules import Rules


def logloss(targets, probabilities, epsilon=Rules.logloss_epsilon):
    """Binary cross-entropy with probabilities clipped ``epsilon`` from 0 and 1.

    Matches ``sklearn.metrics.log_loss`` for 0/1 targets; written out so
    the per-era loop does not pay sklearn's input validation 12 times.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1 - epsilon)
    y = np.asarray(targets, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def era_loglosses(eras, targets, probabilities, epsilon=Rules.logloss_epsilon):
    """Logloss per era, as ``{era: logloss}`` in sorted era order."""
    eras = np.asarray(eras)
    return {
        era: logloss(targets[eras == era], probabilities[eras == era], epsilon)
        for era in np.unique(eras)
    }


def consistency(eras, targets, probabilities, rules=Rules()):
    """Percent of eras whose logloss is below the random benchmark.

    ``eras``, ``targets`` and ``probabilities`` are aligned validation
    rows. Returns a float in [0, 100].
    """
    losses = era_loglosses(eras, targets, probabilities, rules.logloss_epsilon)
    if not losses:
        raise ValueError("no validation eras to judge consistency on")
    better = sum(1 for loss in losses.values() if loss < rules.consistency_benchmark)
    return better / len(losses) * 100
