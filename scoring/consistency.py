"""Consistency: the share of validation eras in which a submission beats random."""
import math

import numpy as np

from scoring.errors import DataError
from scoring.rules import Rules


def row_losses(targets, probabilities, epsilon=Rules.logloss_epsilon):
    """Per-row binary cross-entropy, probabilities clipped ``epsilon`` from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), epsilon, 1 - epsilon)
    y = np.asarray(targets, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def logloss(targets, probabilities, epsilon=Rules.logloss_epsilon):
    """Mean binary cross-entropy; matches ``sklearn.metrics.log_loss`` for 0/1 targets.

    Written out so the per-era loop does not pay sklearn's input
    validation a dozen times per submission.
    """
    return float(np.mean(row_losses(targets, probabilities, epsilon)))


def below(losses, benchmark):
    """Whether the mean of ``losses`` is below ``benchmark``, decided exactly.

    ``mean < benchmark`` in floating point can round either way when the
    mean sits on the benchmark (an era predicted 0.5 throughout gives
    ln 2 - 1e-16 at some sizes). ``math.fsum`` of the losses minus n copies
    of the benchmark is correctly rounded, so its sign is exact.
    """
    terms = np.concatenate([losses, np.full(len(losses), -benchmark)])
    return math.fsum(terms.tolist()) < 0


def consistency_evidence(eras, targets, probabilities, rules=Rules()):
    """Logloss of every validation era against the benchmark, and the consistency.

    Each era's ``beats`` is :func:`below`'s exact decision; its ``logloss``
    is the mean shown to people (it can print equal to the benchmark when
    the exact test says it is just below). :func:`consistency` returns this
    dict's ``consistency``. ``eras``, ``targets`` and ``probabilities`` are
    aligned validation rows.
    """
    eras = np.asarray(eras)
    losses = row_losses(targets, probabilities, rules.logloss_epsilon)
    names = np.unique(eras)
    if not len(names):
        raise DataError("no validation eras to judge consistency on")
    per_era = []
    for era in names:
        mine = losses[eras == era]
        per_era.append({"era": str(era), "rows": int(mine.size), "logloss": float(np.mean(mine)),
                        "beats": bool(below(mine, rules.consistency_benchmark))})
    better = sum(1 for entry in per_era if entry["beats"])
    return {"consistency": better / len(names) * 100, "better": better, "eras": len(names),
            "benchmark": rules.consistency_benchmark, "per_era": per_era}


def consistency(eras, targets, probabilities, rules=Rules()):
    """Percent of eras whose logloss is below the random benchmark.

    ``eras``, ``targets`` and ``probabilities`` are aligned validation
    rows. Returns a float in [0, 100].
    """
    return consistency_evidence(eras, targets, probabilities, rules)["consistency"]
