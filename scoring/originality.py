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
    """Pearson correlation in float64 of two non-constant vectors."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ca = a - a.mean()
    cb = b - b.mean()
    return float(np.dot(ca, cb) / np.sqrt(np.dot(ca, ca) * np.dot(cb, cb)))


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


class PlainIndex:
    """A round's submissions for originality, kept as float64 and judged by the plain rule.

    The reference that :class:`scoring.prepared.PreparedRound` must agree
    with; it has the same interface so tests can run the pipeline on either.
    """

    def __init__(self, fetch_exact=None):
        self._values = {}

    def __contains__(self, key):
        return key in self._values

    def __len__(self):
        return len(self._values)

    def add(self, key, values):
        self._values[key] = np.array(values, dtype=np.float64)  # a copy: callers may reuse theirs

    def is_original(self, candidate, keys, rules=Rules()):
        return is_original(candidate, [self._values[key] for key in keys], rules)

    def explain(self, candidate, keys, rules=Rules(), closest=None, cap=None):
        """Originality evidence, every pair computed plainly (see :mod:`scoring.evidence`)."""
        from scoring import evidence  # evidence builds on this module's functions
        closest = evidence.CLOSEST if closest is None else closest
        cap = evidence.OFFENDER_CAP if cap is None else cap
        return evidence.originality_evidence(candidate, [(key, self._values[key]) for key in keys], rules, closest, cap)
