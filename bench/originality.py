"""originality: one candidate against a prepared round, fast path vs the 2017 loop.

The fast path is :class:`scoring.prepared.PreparedRound`. The baseline is
the 2017 "optimized" algorithm: every other submission sorted once, then
per pair in a Python loop the correlation with numpy and the KS
statistic by ``searchsorted`` of both sorted arrays over their
concatenation. Both answer the same question on the same data in the
same run; every benchmarked candidate's fast verdict is checked against
the plain rule (:func:`scoring.originality.is_original`) and the run
aborts when one differs.

The headline median is over candidates that are original, since only
they make either method compare every pair (a copy stops both early);
the others are timed and reported too.
"""
import numpy as np

from bench.data import RoundGenerator
from bench.timing import BenchmarkError, clock_ms, median, result
from scoring import originality
from scoring.prepared import PreparedRound
from scoring.rules import Rules

#: Fewer original candidates than this and the headline uses all of them.
MIN_ORIGINAL = 3
MB = 1e6


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="predictions per submission (n)")
    parser.add_argument("--others", type=int, default=1000, help="submissions already in the round (K)")
    parser.add_argument("--candidates", type=int, default=12, help="candidates to check")
    parser.add_argument("--repeat", type=int, default=3, help="timed checks per candidate (median taken)")
    parser.add_argument("--baseline-pairs", type=int, default=100,
                        help="pairs per candidate the baseline is timed on; scaled linearly to --others")
    parser.add_argument("--seed", type=int, default=0)


def baseline_pair(candidate, candidate_sorted, other, other_sorted, rules):
    """The 2017 per-pair work: ``(too correlated, ks statistic or None)``."""
    r = np.corrcoef(candidate, other)[0, 1]
    if abs(r) > rules.correlation_limit:
        return True, None
    both = np.concatenate([candidate_sorted, other_sorted])
    cdf1 = np.searchsorted(candidate_sorted, both, side="right") / candidate_sorted.size
    cdf2 = np.searchsorted(other_sorted, both, side="right") / other_sorted.size
    return False, float(np.max(np.abs(cdf1 - cdf2)))


def baseline_full_pass(candidate, others, others_sorted, rules):
    """The baseline's work for an original candidate: every pair, no early stop."""
    candidate_sorted = np.sort(candidate)
    with np.errstate(invalid="ignore", divide="ignore"):
        for other, other_sorted in zip(others, others_sorted):
            baseline_pair(candidate, candidate_sorted, other, other_sorted, rules)


def build_round(args):
    """The round, the prepared round (timed per add) and the candidates."""
    generator = RoundGenerator(args.rows, seed=args.seed)
    round_ = generator.round(args.others)
    candidates = generator.round(args.candidates, prefix="c", sources=round_.predictions)
    store = round_.predictions
    prepared = PreparedRound(fetch_exact=store.__getitem__)
    add_ms = [clock_ms(prepared.add, key, values)[1] for key, values in store.items()]
    return store, prepared, add_ms, candidates


def time_fast(prepared, keys, candidates, rules, repeat):
    """Per candidate: (verdict, median ms over ``repeat`` checks); plus the
    fallback counters of one pass over all candidates."""
    timed = {}
    before = prepared.stats
    for name, values in candidates.predictions.items():
        verdict, first_ms = clock_ms(prepared.is_original, values, keys, rules)
        timed[name] = (verdict, [first_ms])
    after = prepared.stats
    for _ in range(repeat - 1):
        for name, values in candidates.predictions.items():
            timed[name][1].append(clock_ms(prepared.is_original, values, keys, rules)[1])
    counters = {name: after[name] - before[name] for name in after}
    return {name: (verdict, median(ms)) for name, (verdict, ms) in timed.items()}, counters


def verify(store, keys, candidates, fast, rules):
    """Abort unless every fast verdict is the plain rule's verdict."""
    others = [store[key] for key in keys]
    for name, values in candidates.predictions.items():
        plain = originality.is_original(values, others, rules)
        if plain != fast[name][0]:
            raise BenchmarkError("candidate %s (%s): fast path says %s, plain rule says %s"
                                 % (name, candidates.kinds[name], fast[name][0], plain))


def time_baseline(store, keys, candidates, pairs, rules):
    """Baseline ms per candidate for all ``len(keys)`` pairs, timed on ``pairs`` of them."""
    chosen = keys[:pairs]
    others = [store[key] for key in chosen]
    others_sorted, presort_ms = clock_ms(lambda: [np.sort(v) for v in others])
    per_candidate = []
    for values in candidates.predictions.values():
        _, ms = clock_ms(baseline_full_pass, values, others, others_sorted, rules)
        per_candidate.append(ms * len(keys) / len(chosen))
    return median(per_candidate), presort_ms * len(keys) / len(chosen)


def run(args):
    rules = Rules()
    store, prepared, add_ms, candidates = build_round(args)
    keys = list(store)
    fast, counters = time_fast(prepared, keys, candidates, rules, args.repeat)
    verify(store, keys, candidates, fast, rules)
    baseline_ms, presort_ms = time_baseline(store, keys, candidates, args.baseline_pairs, rules)
    original = [ms for verdict, ms in fast.values() if verdict]
    copies = [ms for verdict, ms in fast.values() if not verdict]
    headline = original if len(original) >= MIN_ORIGINAL else original + copies
    float32_mb = args.rows * args.others * 4 / MB
    pairs = max(counters["pairs"], 1)
    fields = {
        "rows": args.rows,
        "others": args.others,
        "candidates": len(fast),
        "original": len(original),
        "median_over": "original" if headline is original else "all",
        "not_original_median_ms": round(median(copies), 3),
        "max_ms": round(max(ms for _, ms in fast.values()), 3),
        "add_ms": round(median(add_ms), 3),
        "baseline_presort_ms": round(presort_ms, 1),
        "prepared_mb": round(prepared.nbytes / MB, 1),
        "float32_mb": round(float32_mb, 1),
        "memory_ratio": round(prepared.nbytes / MB / float32_mb, 3),
        "pairs": counters["pairs"],
        "correlation_exact": counters["correlation_exact"],
        "ks_exact": counters["ks_exact"],
        "fetched": counters["fetched"],
        "exact_share": "%.5f" % ((counters["correlation_exact"] + counters["ks_exact"]) / pairs),
        "verified": "%d/%d" % (len(fast), len(fast)),
        "baseline_pairs": min(args.baseline_pairs, args.others),
    }
    return [result("originality", fields, median(headline), baseline_ms)]
