"""The two-sample Kolmogorov-Smirnov statistic, exactly.

``scipy.stats.ks_2samp`` also computes a p-value we never use; the
statistic alone is a merge of two sorted arrays. Ties are handled the
way scipy handles them: both empirical CDFs are evaluated at every
observed value with ``side='right'``.
"""
import numpy as np

from scoring.errors import DataError


def ks_counts(a_sorted, b_sorted):
    """Return max |#a<=x - #b<=x| over all x, for equal-length sorted arrays.

    With equal sizes the statistic is this integer divided by n, which
    lets fast paths compare against thresholds without rounding doubt.
    """
    both = np.concatenate([a_sorted, b_sorted])
    ca = np.searchsorted(a_sorted, both, side="right")
    cb = np.searchsorted(b_sorted, both, side="right")
    return int(np.max(np.abs(ca - cb))) if both.size else 0


def ks_statistic(a_sorted, b_sorted):
    """Two-sample KS statistic of two sorted float arrays (any sizes).

    Equal sizes go through :func:`ks_counts` so that the value is the
    canonical ``k / n``; scipy agrees with it to within 1e-15.
    """
    n1, n2 = len(a_sorted), len(b_sorted)
    if n1 == 0 or n2 == 0:
        raise DataError("KS statistic needs two non-empty samples")
    if n1 == n2:
        return ks_counts(a_sorted, b_sorted) / n1
    both = np.concatenate([a_sorted, b_sorted])
    cdf1 = np.searchsorted(a_sorted, both, side="right") / n1
    cdf2 = np.searchsorted(b_sorted, both, side="right") / n2
    return float(np.max(np.abs(cdf1 - cdf2)))

