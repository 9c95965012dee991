"""Seeded, realistic synthetic rounds for the benchmarks.

Predictions are built the way tournament submissions come about: a
hidden target signal, about twenty model families that each see part of
it, and users whose predictions are a family's output plus their own
noise, passed through a logistic with a per-user bias, spread and tail
shape, rounded as most files are (5 decimals; some users send full
precision). A few users copy someone else exactly, shuffled, or with a
little noise. The result spreads the pairwise KS statistics and
correlations across the originality thresholds instead of leaving every
pair far from them, so nothing is trivially prunable.
"""
import dataclasses

import numpy as np

#: Model families of a round.
FAMILIES = 20
#: Share of users who copy another user (exactly, shuffled or nearly).
COPY_SHARE = 0.02
#: Share of users whose files carry full float precision.
PRECISE_SHARE = 0.05
#: Decimals of an ordinary file.
DECIMALS = 5
#: How strongly the families see the hidden target.
SIGNAL = 0.3


@dataclasses.dataclass
class Round:
    """A round's hidden target and its submissions (float64, round row order)."""

    target: np.ndarray
    predictions: dict
    kinds: dict      # user -> 'model' | 'copy' | 'shuffled' | 'near-copy'


class RoundGenerator:
    """Draws users of one round; users drawn later share the round's families."""

    def __init__(self, rows, seed=0, families=FAMILIES):
        self.rng = np.random.default_rng(seed)
        self.rows = rows
        self.target = self.rng.normal(size=rows)
        self.families = [SIGNAL * self.target + self.rng.normal(size=rows) for _ in range(families)]

    def model_user(self):
        """A family's prediction plus user noise through a user-specific logistic."""
        rng = self.rng
        family = self.families[rng.integers(len(self.families))]
        score = family + rng.lognormal(np.log(0.35), 0.7) * rng.standard_normal(self.rows, dtype=np.float64)
        score /= score.std()
        shape = rng.uniform(0.6, 1.6)
        score = np.sign(score) * np.abs(score) ** shape
        logit = rng.normal(0, 0.25) + rng.lognormal(np.log(0.25), 0.6) * score
        values = 1 / (1 + np.exp(-logit))
        return values if rng.random() < PRECISE_SHARE else np.round(values, DECIMALS)

    def copier(self, source):
        """A copy of ``source``: exact, shuffled, or with a little noise."""
        rng = self.rng
        kind = ("copy", "shuffled", "near-copy")[rng.integers(3)]
        if kind == "copy":
            return kind, source.copy()
        if kind == "shuffled":
            return kind, rng.permutation(source)
        noisy = source + rng.normal(0, 10 ** -rng.uniform(2.5, 4), source.size)
        return kind, np.round(np.clip(noisy, 0, 1), DECIMALS)

    def round(self, users, prefix="u", sources=None):
        """``users`` submissions keyed ``<prefix><i>``.

        Copiers copy from ``sources`` (a dict of earlier submissions, e.g.
        the round when drawing candidates) or else from this batch.
        """
        predictions, kinds = {}, {}
        for i in range(users):
            key = "%s%d" % (prefix, i)
            pool = predictions if sources is None else sources
            if pool and self.rng.random() < COPY_SHARE:
                source = list(pool.values())[self.rng.integers(len(pool))]
                kinds[key], predictions[key] = self.copier(source)
            else:
                kinds[key], predictions[key] = "model", self.model_user()
        return Round(self.target, predictions, kinds)


def tournament_features(rows, features, seed=0, clusters=5, world=2017):
    """Feature rows drawn around a few centres, like the round's feature space.

    ``world`` fixes the centres, so training and tournament rows drawn
    with different seeds share them. Returns ``(features float32,
    data_types)`` with validation, test and live rows in proportions like
    a 2017 round (~20%, ~60%, ~20%).
    """
    centres = np.random.default_rng(world).normal(0.5, 0.15, size=(clusters, features))
    rng = np.random.default_rng(seed)
    which = rng.integers(clusters, size=rows)
    values = np.clip(centres[which] + rng.normal(0, 0.1, size=(rows, features)), 0, 1).astype(np.float32)
    data_types = rng.choice(np.array(["validation", "test", "live"]), size=rows, p=[0.2, 0.6, 0.2])
    return values, data_types


def training_features(rows, features, seed=1, clusters=5, world=2017):
    """Training feature rows around the same centres, float32."""
    return tournament_features(rows, features, seed, clusters, world)[0]
