"""The judging thresholds, named once.

Every rule in ``scoring`` takes its thresholds from a :class:`Rules`
instance whose defaults are the constants below, so an operator can
change a threshold without touching the code that applies it.
"""
import dataclasses
import difflib
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
class Limit:
    """The values a rule may take, and why: outside them the rule stops meaning what it says."""

    low: float
    high: float
    low_included: bool
    high_included: bool
    why: str

    def allows(self, value):
        """True inside the range (each end included or not, as the rule compares with it)."""
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        return above and below

    def describe(self):
        """The range in words, e.g. 'from 0 to 1' or 'greater than 0 and below 0.5'."""
        if self.high == math.inf:
            return "%s %s" % ("at least" if self.low_included else "greater than", _number(self.low))
        if self.low_included and self.high_included:
            return "from %s to %s" % (_number(self.low), _number(self.high))
        return "%s %s and %s %s" % ("at least" if self.low_included else "greater than", _number(self.low),
                                    "at most" if self.high_included else "below", _number(self.high))


def _number(value):
    """A bound or default as it is compared: whole numbers as such, others in full (ln 2 is 0.6931471805599453)."""
    return "%d" % value if float(value).is_integer() else repr(float(value))


#: What each rule may be set to through RULE_<NAME>, decided from what the rule means.
LIMITS = {
    "consistency_benchmark": Limit(0, CONSISTENCY_BENCHMARK, False, True,
                                   "an era counts when its logloss is below it, and above ln 2 (the logloss "
                                   "of predicting 0.5) eras worse than random would count"),
    "logloss_epsilon": Limit(0, 0.5, False, False,
                             "probabilities are clipped to [epsilon, 1 - epsilon]; 0 lets log(0) in, and 0.5 "
                             "clips every prediction to 0.5"),
    "concordance_clusters": Limit(1, 100, True, True,
                                  "it is the number of K-Means clusters, and beyond 100 a cluster holds too few "
                                  "live rows for its KS statistic to mean anything"),
    "concordance_seed": Limit(0, 2 ** 32 - 1, True, True, "it is K-Means' random_state, which numpy takes up to 2**32 - 1"),
    "concordance_threshold": Limit(0, 1, False, True,
                                   "it is compared with a mean of KS statistics, which lie in [0, 1], and at 0 "
                                   "nothing would be concordant"),
    "correlation_limit": Limit(0, 1, True, True, "it is compared with |correlation|, which is at most 1 (1 turns "
                                                 "the clause off)"),
    "duplicate_ks": Limit(0, 1, True, True, "it is compared with a KS statistic, which lies in [0, 1] (0 turns "
                                            "the clause off)"),
    "similar_ks": Limit(0, 1, True, True, "it is compared with a KS statistic, which lies in [0, 1]"),
    "max_similar": Limit(1, math.inf, True, False, "it counts similar submissions, and 0 would make every "
                                                   "submission not original"),
}


class RuleSettingsError(ValueError):
    """Some RULE_* variables are wrong; ``problems`` holds ``(variable, message)`` for each, in name order."""

    def __init__(self, problems):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


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

        A typo must stop the server at start rather than change verdicts (or
        silently change nothing), so every RULE_* variable must name a rule
        and hold a value in that rule's range; RuleSettingsError lists every
        one that does not.
        """
        environ = os.environ if environ is None else environ
        fields = {"RULE_" + field.name.upper(): field for field in dataclasses.fields(cls)}
        overrides, problems = {}, []
        for name in sorted(variable for variable in environ if variable.startswith("RULE_")):
            if name not in fields:
                problems.append((name, _unknown(name, fields)))
                continue
            field = fields[name]
            value, problem = _parse(name, environ[name], field.default, LIMITS[field.name])
            if problem:
                problems.append((name, problem))
            else:
                overrides[field.name] = value
        if problems:
            raise RuleSettingsError(problems)
        return cls(**overrides)


def _parse(name, text, default, limit):
    """``(value, None)``, or ``(None, message)`` naming the variable, its range and why."""
    kind = type(default)
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is not None and math.isfinite(value) and limit.allows(value):
        return value, None
    return None, "%s=%r must be %s %s, default %s: %s" % (
        name, text, "a whole number" if kind is int else "a number", limit.describe(), _number(default), limit.why)


def _unknown(name, fields):
    """The message for a RULE_* variable that names no rule: the closest names, or all of them."""
    close = difflib.get_close_matches(name, list(fields), n=2, cutoff=0.6)
    if close:
        return "%s is not a rule setting; did you mean %s?" % (name, " or ".join(close))
    return "%s is not a rule setting; the rule settings are %s" % (name, ", ".join(fields))
