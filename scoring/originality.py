"""Originality: is a submission more than a copy of someone else's?

This module is the plain statement of the rule, pair by pair. The fast
path in :mod:`scoring.prepared` must reach exactly the same decisions.
"""
import numpy as np

from scoring.ks import ks_statistic
from scoring.rules import Rules


def is_constant(values):
    """True when every prediction is the same number (correlation undefined)."""
    return values.size == 0 or bool(np.all(values == values[0]))


def pearson(a, b):
    """Pearson correlation in float64 of two non-constant vectors, within [-1, 1].

    Rounding can carry the quotient of an exact affine copy a few units
    past 1 (1.0000000000000002); a correlation cannot exceed 1, and a
    limit of 1 must pass every vector, so the value is clipped as scipy's
    ``pearsonr`` clips it.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return centered_pearson(a - a.mean(), b - b.mean())


def centered_pearson(ca, cb, ca_squared=None):
    """The end of :func:`pearson`, on vectors it has centred.

    A separate step so that the fast path, which centres into reused
    buffers, runs the very same float64 operations on the very same
    values and so gets the very same number. ``ca_squared`` is
    ``np.dot(ca, ca)`` when the caller has it already (one candidate
    against many others).
    """
    ca_squared = np.dot(ca, ca) if ca_squared is None else ca_squared
    return clip_correlation(float(np.dot(ca, cb) / np.sqrt(ca_squared * np.dot(cb, cb))))


def clip_correlation(r):
    """``r`` brought within [-1, 1], where rounding may have carried it a unit past.

    Whether a given quotient overshoots depends on the machine's summation
    order (BLAS blocking, fused multiply-adds), so the bound is enforced
    here rather than trusted to the arithmetic.
    """
    return min(1.0, max(-1.0, r))


def too_correlated(a, b, rules=Rules()):
    """The correlation clause: both non-constant and |r| above the limit."""
    if is_constant(a) or is_constant(b):
        return False
    return abs(pearson(a, b)) > rules.correlation_limit


def is_original(candidate, others, rules=Rules()):
    """Apply the rule to ``candidate`` against each vector in ``others``.

    All vectors are predictions in the same (round) row order. Not
    original when any other is too correlated, or is a duplicate by KS,
    or when the count of similar ones reaches ``rules.max_similar``.
    """
    candidate = np.asarray(candidate, dtype=np.float64)
    candidate_sorted = np.sort(candidate)
    similar = 0
    for other in others:
        other = np.asarray(other, dtype=np.float64)
        if too_correlated(candidate, other, rules):
            return False
        ks = ks_statistic(candidate_sorted, np.sort(other))
        if ks < rules.duplicate_ks:
            return False
        if ks <= rules.similar_ks:
            similar += 1
            if similar >= rules.max_similar:
                return False
    return True

