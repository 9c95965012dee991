"""Consistency: the share of validation eras in which a submission beats random.

Each era's verdict is exact (:func:`below`), but the exact sum is only
needed for eras whose mean is too close to the benchmark to tell in
floating point (:func:`clearly_below`); the others are decided from the
mean that is shown anyway. The grouping of rows by era depends only on
the round: give :func:`consistency_evidence` a ``pandas.Categorical`` of
the eras, built once per round, and no era name is compared per call.
"""
import math

import numpy as np
import pandas as pd

from scoring.errors import DataError
from scoring.rules import Rules

#: Unit roundoff of float64 (half an ulp of 1).
UNIT_ROUNDOFF = 2.0 ** -53
#: Per row of an era, how many unit roundoffs of the era's largest loss the float mean may be off by,
#: with a factor 3 to spare (see :func:`clearly_below`).
MARGIN_PER_ROW = 4 * UNIT_ROUNDOFF
#: Absolute slack for underflow in the mean's division (smallest normal float64).
MARGIN_FLOOR = 2.0 ** -1022


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


def clearly_below(mean, peak, rows, benchmark):
    """:func:`below`'s answer when ``mean`` alone settles it, else None.

    ``mean`` is ``np.mean`` of an era's ``rows`` losses and ``peak`` their
    largest absolute value. Why the margin is enough: let S be the exact
    sum of the losses l_i, M = S / n the exact mean, u = 2**-53 and
    L = max |l_i|. ``np.mean`` adds the n losses in some order (pairwise
    in numpy; any order of at most n additions, one per term and maybe a
    start from 0, will do) and divides by n. Each l_i goes through at most
    n roundings (1 + d), |d| <= u, so the float sum is within
    gamma_n * sum |l_i| <= gamma_n * n * L of S, where
    gamma_k = k u / (1 - k u) (Higham, Accuracy and Stability of Numerical
    Algorithms, Lemma 3.1 and section 4.2); the division adds at most
    u times the quotient, and 2**-1075 if it underflows. Together,
    |mean - M| <= gamma_{n+1} * L + 2**-1075 <= 4/3 (n + 1) u L + 2**-1075
    while (n + 1) u <= 1/4. The margin computed below,
    fl((n + 2) * 4u * L) + 2**-1022 (the first product is exact, the other
    two operations round by at most a factor 1 - u), is more than twice
    that. So when the computed gap fl(mean - benchmark), which is within a
    factor 1 + u of the true gap and of its sign, is beyond the margin,
    M - benchmark has the sign of mean - benchmark, and that sign is what
    :func:`below` decides exactly (fsum's correctly rounded S - n * benchmark
    is negative exactly when M < benchmark). A mean or margin that is not
    finite (overflow, infinite or NaN losses) compares false both ways and
    is left to :func:`below`.
    """
    margin = (rows + 2) * MARGIN_PER_ROW * peak + MARGIN_FLOOR
    gap = mean - benchmark
    if gap > margin:
        return False
    if gap < -margin:
        return True
    return None


def era_codes(eras):
    """``(names, codes)``: the era names in :func:`np.unique`'s order and each row's index into them.

    A ``pandas.Categorical`` built once per round gives both as they are
    (names with no rows are skipped by the caller); its categories are
    checked to be strictly increasing, as ``np.unique`` would list them,
    and a Categorical that is not (or has missing values) is grouped the
    plain way.
    """
    if isinstance(eras, pd.Categorical):
        names = list(eras.categories)
        if all(a < b for a, b in zip(names, names[1:])) and not (eras.codes < 0).any():
            return names, eras.codes
        eras = np.asarray(eras)
    names, codes = np.unique(np.asarray(eras), return_inverse=True)
    return list(names), codes


def consistency_evidence(eras, targets, probabilities, rules=Rules()):
    """Logloss of every validation era against the benchmark, and the consistency.

    Each era's ``beats`` is :func:`below`'s exact decision (taken from the
    mean by :func:`clearly_below` when the mean is far enough from the
    benchmark); its ``logloss`` is the mean shown to people (it can print
    equal to the benchmark when the exact test says it is just below).
    :func:`consistency` returns this dict's ``consistency``. ``eras``,
    ``targets`` and ``probabilities`` are aligned validation rows; ``eras``
    is an array of names or, cheaper, a ``pandas.Categorical`` of them
    built once per round.
    """
    losses = row_losses(targets, probabilities, rules.logloss_epsilon)
    names, codes = era_codes(eras)
    counts = np.bincount(codes, minlength=len(names))
    if not counts.any():
        raise DataError("no validation eras to judge consistency on")
    grouped = losses[np.argsort(codes, kind="stable")]  # each era's losses together, in row order
    starts = np.cumsum(counts) - counts
    present = np.flatnonzero(counts)
    peaks = np.maximum.reduceat(np.abs(grouped), starts[present])
    per_era = [era_entry(names[k], grouped[starts[k]:starts[k] + counts[k]], peak, rules.consistency_benchmark)
               for k, peak in zip(present.tolist(), peaks.tolist())]
    better = sum(1 for entry in per_era if entry["beats"])
    return {"consistency": better / len(per_era) * 100, "better": better, "eras": len(per_era),
            "benchmark": rules.consistency_benchmark, "per_era": per_era}


def plain_consistency_evidence(eras, targets, probabilities, rules=Rules()):
    """The same evidence from the plain per-era loop: the rule as written, which
    :func:`consistency_evidence` must equal bit for bit (its tests) and the
    benchmark's baseline."""
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


def era_entry(name, mine, peak, benchmark):
    """One era's evidence from its losses in row order (``peak``: their largest absolute value).

    ``np.mean`` of the same losses in the same order as the plain
    ``losses[eras == era]`` gives the same value bit for bit; the exact
    :func:`below` runs only when :func:`clearly_below` cannot tell.
    """
    mean = float(np.mean(mine))
    beats = clearly_below(mean, peak, mine.size, benchmark)
    if beats is None:
        beats = below(mine, benchmark)
    return {"era": str(name), "rows": int(mine.size), "logloss": mean, "beats": bool(beats)}


def consistency(eras, targets, probabilities, rules=Rules()):
    """Percent of eras whose logloss is below the random benchmark.

    ``eras``, ``targets`` and ``probabilities`` are aligned validation
    rows. Returns a float in [0, 100].
    """
    return consistency_evidence(eras, targets, probabilities, rules)["consistency"]
