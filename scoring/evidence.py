"""Evidence: the numbers behind each verdict, as plain JSON-able dicts.

A person asking "why was my submission judged not original?" needs the
values the decision was made on, not a recomputation that might differ
in the last digit. So the decisions in :mod:`scoring.concordance` and
:mod:`scoring.consistency` are made *from* the evidence built here, and
the originality evidence of :func:`originality_evidence` is the plain
statement that :meth:`scoring.prepared.PreparedRound.explain` must
reproduce exactly (dict for dict) while staying fast.

Evidence stays compact whatever the round's size: lists of submissions
are capped (:data:`OFFENDER_CAP` offenders plus a total, :data:`CLOSEST`
nearest ones), never one entry per round member.
"""
import math

import numpy as np

from scoring.ks import ks_statistic
from scoring.originality import is_constant, pearson
from scoring.rules import Rules

#: How many nearest submissions (by KS, and by |correlation|) are kept.
CLOSEST = 3
#: At most this many submissions that counted against a candidate are kept.
OFFENDER_CAP = 20
#: Clause names, in the order they are listed for a pair.
CORRELATED, DUPLICATE, SIMILAR = "too correlated", "duplicate", "similar"
#: What "KS" means everywhere in the evidence.
KS_DEFINITION = ("exact two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical "
                 "CDFs, both evaluated at every observed value (ties counted together, as "
                 "scipy.stats.ks_2samp does); not a position-by-position comparison of sorted values")


def finite_or_none(value):
    """A float for JSON, or None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def originality_thresholds(rules):
    """The rule values the originality verdict depends on."""
    return {"correlation_limit": rules.correlation_limit, "duplicate_ks": rules.duplicate_ks,
            "similar_ks": rules.similar_ks, "max_similar": rules.max_similar}


def clauses(ks, correlation, rules):
    """Which originality clauses one pair meets, from its exact KS and correlation.

    The same comparisons as :func:`scoring.originality.is_original`; a
    duplicate is not also called similar (the rule stops at the duplicate).
    """
    met = []
    if correlation is not None and abs(correlation) > rules.correlation_limit:
        met.append(CORRELATED)
    if ks < rules.duplicate_ks:
        met.append(DUPLICATE)
    elif ks <= rules.similar_ks:
        met.append(SIMILAR)
    return met


def pair_entry(key, ks, correlation, rules):
    """One compared submission as it appears in the evidence.

    ``correlation`` is the rule's own value (None for a constant vector);
    the clauses are decided on it, and it is stored as None in the
    degenerate case where it is not finite (JSON has no NaN).
    """
    return {"key": key, "ks": ks, "correlation": None if correlation is None else finite_or_none(correlation),
            "clauses": clauses(ks, correlation, rules)}


def ranked_correlation(correlation):
    """Sort key of a pair for "closest by |correlation|"; None leaves it out (constant or not finite)."""
    if correlation is None or not math.isfinite(correlation):
        return None
    return -abs(correlation)


def originality_record(keys, decisive, similar, exact, closest_ks, closest_correlation, rules, cap=OFFENDER_CAP):
    """Assemble originality evidence from a classification of every pair.

    ``decisive`` and ``similar`` are sorted positions (in ``keys``) of the
    pairs that alone make the candidate not original (too correlated or
    duplicate) and of the other similar pairs; ``exact`` maps each position
    that is listed to its exact ``(ks, correlation)``. Offenders are listed
    decisive first, each group in the order of ``keys``, at most ``cap``.
    """
    offenders = (list(decisive) + list(similar))[:cap]
    original = not len(decisive) and len(similar) < max(rules.max_similar, 1)

    def entries(positions):
        return [pair_entry(keys[p], *exact[p], rules) for p in positions]

    return {
        "original": bool(original),
        "compared": len(keys),
        "statistic": KS_DEFINITION,
        "thresholds": originality_thresholds(rules),
        "counted_against": entries(offenders),
        "counted_against_total": len(decisive) + len(similar),
        "decisive_total": len(decisive),
        "similar_total": len(similar),
        "closest_by_ks": entries(closest_ks),
        "closest_by_correlation": entries(closest_correlation),
    }


def nearest(pairs, closest):
    """Positions of the ``closest`` smallest keys among ``(sort key, position)`` pairs."""
    return [position for _, position in sorted(pairs)[:closest]]


def originality_evidence(candidate, others, rules=Rules(), closest=CLOSEST, cap=OFFENDER_CAP):
    """Originality evidence of ``candidate`` against ``others``, every pair computed plainly.

    ``others`` is a sequence of ``(key, values)``. Each pair's KS is
    :func:`scoring.ks.ks_statistic` and its correlation
    :func:`scoring.originality.pearson` (None when either vector is
    constant), the very functions the rule applies, so ``original`` is
    exactly :func:`scoring.originality.is_original`'s verdict.
    """
    candidate = np.asarray(candidate, dtype=np.float64)
    candidate_sorted = np.sort(candidate)
    constant = is_constant(candidate)
    keys, exact = [], {}
    for position, (key, values) in enumerate(others):
        values = np.asarray(values, dtype=np.float64)
        ks = ks_statistic(candidate_sorted, np.sort(values))
        correlation = None if constant or is_constant(values) else pearson(candidate, values)
        keys.append(key)
        exact[position] = (ks, correlation)
    met = {p: clauses(ks, r, rules) for p, (ks, r) in exact.items()}
    decisive = [p for p in range(len(keys)) if CORRELATED in met[p] or DUPLICATE in met[p]]
    similar = [p for p in range(len(keys)) if met[p] == [SIMILAR]]
    closest_ks = nearest([(ks, p) for p, (ks, _) in exact.items()], closest)
    closest_r = nearest([(ranked_correlation(r), p) for p, (_, r) in exact.items()
                         if ranked_correlation(r) is not None], closest)
    return originality_record(keys, decisive, similar, exact, closest_ks, closest_r, rules, cap)
