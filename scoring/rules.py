"""The judging thresholds, named once.

Every rule in ``scoring`` takes its thresholds from a :class:`Rules`
instance whose defaults are the constants below, so an operator can
change a threshold without touching the code that applies it.
"""
import dataclasses
import math
import os

#: An era beats random when its logloss is below that of predicting 0.5.
CONSISTENCY_BENCHMARK = -math.log(0.5)
#: Probabilities are clipped this far from 0 and 1 before taking logs.
LOGLOSS_EPSILON = 1e-15

#: K-Means settings for concordance clustering.
CONCORDANCE_CLUSTERS = 5
CONCORDANCE_SEED = 1337
#: Concordant when the mean per-cluster worst KS statistic is below this.
CONCORDANCE_THRESHOLD = 0.12

#: Not original when |pearson| exceeds this against any other submission.
CORRELATION_LIMIT = 0.95
#: A KS statistic below this marks a duplicate.
DUPLICATE_KS = 0.005
#: A KS statistic at or below this marks a similar submission ...
SIMILAR_KS = 0.03
#: ... and this many similar submissions make it not original.
MAX_SIMILAR = 1


@dataclasses.dataclass(frozen=True)
class Rules:
    """Thresholds for one deployment; defaults are the tournament's rules."""

    consistency_benchmark: float = CONSISTENCY_BENCHMARK
    logloss_epsilon: float = LOGLOSS_EPSILON
    concordance_clusters: int = CONCORDANCE_CLUSTERS
    concordance_seed: int = CONCORDANCE_SEED
    concordance_threshold: float = CONCORDANCE_THRESHOLD
    correlation_limit: float = CORRELATION_LIMIT
    duplicate_ks: float = DUPLICATE_KS
    similar_ks: float = SIMILAR_KS
    max_similar: int = MAX_SIMILAR

    @classmethod
    def from_env(cls, environ=None):
        """Build rules, overriding any field from ``RULE_<FIELD>`` variables.

        Raises ValueError naming the variable when a value does not parse,
        so a typo stops the server at start rather than changing verdicts.
        """
        environ = os.environ if environ is None else environ
        overrides = {}
        for field in dataclasses.fields(cls):
            name = "RULE_" + field.name.upper()
            if name in environ:
                kind = type(field.default)
                try:
                    value = kind(environ[name])
                except ValueError:
                    value = None
                if value is None or not math.isfinite(value) or value < 0:
                    raise ValueError("%s=%r is not a valid non-negative %s" % (name, environ[name], kind.__name__))
                overrides[field.name] = value
        return cls(**overrides)
