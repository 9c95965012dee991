"""originality: one candidate against a prepared round, fast path vs the 2017 loop.

The fast path is :class:`scoring.prepared.PreparedRound`. The baseline is
the 2017 "optimized" algorithm: every other submission sorted once, then
per pair in a Python loop the correlation with numpy and the KS
statistic by ``searchsorted`` of both sorted arrays over their
concatenation. Both run on the same data in the same run.

Verification: for every candidate the plain rule's clauses are
evaluated pair by pair with the plain functions
(:func:`scoring.originality.too_correlated`,
:func:`scoring.ks.ks_statistic`); the plain verdict is "no correlated
pair, no duplicate pair, fewer than max(max_similar, 1) similar pairs",
which tests/scoring/test_rules_plain.py shows is exactly what
:func:`scoring.originality.is_original` returns. Any fast verdict that
differs aborts the run.

What is timed is what the service calls: each candidate is first
``add``-ed to the round (as dispatch does, ``Rounds.prepare``), then
judged by its key, ``explain(values, keys, rules, key=candidate)`` and
``is_original(values, keys, rules, key=candidate)``, which reuse its
stored sketch. The round's ``add``s before are timed too (``add_ms`` the
median, ``add_mean_ms`` with the occasional round-basis rebuild
amortised, ``add_max_ms`` the slowest: a rebuild).

Two timings per candidate: against the whole round (``all_keys_*``: a
copy stops early), and against the round minus the pairs that make it
not original (``median_ms``). ``explain_*`` times
:meth:`~scoring.prepared.PreparedRound.explain` (the evidence stored with
each verdict) on the same two key sets; its verdict and offender count
are verified too. The latter is a full pass over about K
realistic pairs for every candidate, which is what an original
submission costs and what the baseline's per-pair time is scaled to.
Wall-clock medians are the headline; ``*_cpu_*`` fields give the same
medians in CPU time of the calling thread, which a machine shared with
other work disturbs less.
"""
import concurrent.futures
import time

import numpy as np
from threadpoolctl import threadpool_limits

from bench.data import RoundGenerator
from bench.timing import BenchmarkError, clock_ms, median, result
from scoring.ks import ks_statistic
from scoring.originality import too_correlated
from scoring.prepared import PreparedRound
from scoring.rules import Rules

MB = 1e6
#: Threads evaluating the plain clauses for verification (numpy releases the GIL).
VERIFY_THREADS = 2


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="predictions per submission (n)")
    parser.add_argument("--others", type=int, default=1000, help="submissions already in the round (K)")
    parser.add_argument("--candidates", type=int, default=8, help="candidates to check")
    parser.add_argument("--repeat", type=int, default=3, help="timed checks per candidate and key set (median taken)")
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


def time_baseline(store, keys, candidates, pairs, rules):
    """Baseline ms per candidate for all ``len(keys)`` pairs, timed on ``pairs`` of them."""
    chosen = keys[:pairs]
    others = [store[key] for key in chosen]
    others_sorted, presort_ms = clock_ms(lambda: [np.sort(v) for v in others])
    per_candidate = []
    for values in candidates.values():
        _, ms = clock_ms(baseline_full_pass, values, others, others_sorted, rules)
        per_candidate.append(ms * len(keys) / len(chosen))
    return median(per_candidate), presort_ms * len(keys) / len(chosen)


def plain_clauses(candidate, others, rules, executor):
    """Per other: ``(too correlated, KS statistic)`` from the plain functions."""
    candidate_sorted = np.sort(candidate)

    def clauses(other):
        return too_correlated(candidate, other, rules), ks_statistic(candidate_sorted, np.sort(other))

    return list(executor.map(clauses, others))


def offending(keys, clauses, rules):
    """Keys whose pairs make the candidate not original (empty when original).

    Correlated and duplicate pairs each decide alone; similar pairs decide
    together once there are max(max_similar, 1) of them.
    """
    alone = [k for k, (correlated, ks) in zip(keys, clauses) if correlated or ks < rules.duplicate_ks]
    similar = [k for k, (correlated, ks) in zip(keys, clauses)
               if not correlated and rules.duplicate_ks <= ks <= rules.similar_ks]
    return alone + (similar if len(similar) >= max(rules.max_similar, 1) else [])


def clock_both(function, *args, **kwargs):
    """``(result, wall ms, cpu ms of this thread)`` of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    found = function(*args, **kwargs)
    return found, (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3


def timed(prepared, call, candidate, keys, rules, key, repeat):
    """(result, median wall ms, median cpu ms, counter changes of the first call) of
    ``call(candidate, keys, rules, key=key)``, a method of ``prepared``, as the service calls it."""
    before = prepared.stats
    runs = [clock_both(call, candidate, keys, rules, key=key)]
    after = prepared.stats
    runs += [clock_both(call, candidate, keys, rules, key=key) for _ in range(repeat - 1)]
    changes = {name: after[name] - before[name] for name in after}
    return runs[0][0], median([run[1] for run in runs]), median([run[2] for run in runs]), changes


def timed_checks(prepared, candidate, keys, rules, key, repeat):
    """(verdict, median ms, median cpu ms, fallback counters of the first check)."""
    return timed(prepared, prepared.is_original, candidate, keys, rules, key, repeat)


def timed_explains(prepared, candidate, keys, rules, key, repeat):
    """(evidence, median ms, median cpu ms, exact statistics and fetches of the first explain)."""
    found, wall, cpu, changes = timed(prepared, prepared.explain, candidate, keys, rules, key, repeat)
    return found, wall, cpu, changes["ks_exact"] + changes["correlation_exact"], changes["fetched"]


def judge_candidates(store, prepared, candidates, rules, repeat):
    """Add each candidate to the round (as dispatch does), then time it on all
    keys and on the keys it does not offend, by its key; verify both.

    The fallback counters add up the first check on each key set.
    """
    keys = list(store)
    others = [store[key] for key in keys]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(VERIFY_THREADS) as executor:
        for name, candidate in candidates.items():
            bad = set(offending(keys, plain_clauses(candidate, others, rules, executor), rules))
            clean = [key for key in keys if key not in bad]
            prepared.add(name, candidate)
            verdict, all_ms, _, counters = timed_checks(prepared, candidate, keys, rules, name, repeat)
            full_verdict, full_ms, full_cpu, full_counters = timed_checks(prepared, candidate, clean, rules, name,
                                                                          repeat)
            counters = {name: counters[name] + full_counters[name] for name in counters}
            found, explain_ms, _, explain_exact, explain_fetched = timed_explains(
                prepared, candidate, keys, rules, name, repeat)
            clean_found, clean_explain_ms, clean_explain_cpu, clean_exact, clean_fetched = timed_explains(
                prepared, candidate, clean, rules, name, repeat)
            for got, expected, which in ((verdict, not bad, "all %d keys" % len(keys)),
                                         (full_verdict, True, "%d keys it does not offend" % len(clean)),
                                         (found["original"], not bad, "all %d keys (explain)" % len(keys)),
                                         (clean_found["original"], True, "%d keys it does not offend (explain)" % len(clean))):
                if got != expected:
                    raise BenchmarkError("candidate %s against %s: fast path says %s, plain rule says %s"
                                         % (name, which, got, expected))
            if found["counted_against_total"] != len(bad):
                raise BenchmarkError("candidate %s: explain counts %d offenders, the plain clauses %d"
                                     % (name, found["counted_against_total"], len(bad)))
            rows.append({"verdict": verdict, "all_ms": all_ms, "full_ms": full_ms, "full_cpu": full_cpu,
                         "removed": len(bad), "explain_all_ms": explain_ms, "explain_ms": clean_explain_ms,
                         "explain_cpu": clean_explain_cpu,
                         "explain_exact": explain_exact + clean_exact, "explain_fetched": explain_fetched + clean_fetched,
                         **counters})
    return rows


def build_round(args):
    """The round, the prepared round (timed per add) and the candidates (not added yet)."""
    generator = RoundGenerator(args.rows, seed=args.seed)
    store = generator.round(args.others).predictions
    candidates = generator.round(args.candidates, prefix="c", sources=store).predictions
    prepared = PreparedRound(fetch_exact=store.__getitem__)
    add_ms = [clock_ms(prepared.add, key, values)[1] for key, values in store.items()]
    return store, prepared, add_ms, candidates


def run(args):
    """Single-threaded BLAS: the baseline's many small dot products only pay
    for waking a BLAS thread pool, and the fast path makes no threaded BLAS
    calls (see scoring.prepared.SEGMENT_ROWS)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return measure(args)


def measure(args):
    rules = Rules()
    store, prepared, add_ms, candidates = build_round(args)
    rows = judge_candidates(store, prepared, candidates, rules, args.repeat)
    baseline_ms, presort_ms = time_baseline(store, list(store), candidates, args.baseline_pairs, rules)
    float32_mb = args.rows * args.others * 4 / MB
    pairs = sum(row["pairs"] for row in rows)
    exact = sum(row["correlation_exact"] + row["ks_exact"] for row in rows)
    fields = {
        "rows": args.rows,
        "others": args.others,
        "candidates": len(rows),
        "original": sum(row["verdict"] for row in rows),
        "all_keys_median_ms": round(median([row["all_ms"] for row in rows]), 3),
        "removed_pairs": sum(row["removed"] for row in rows),
        "max_ms": round(max(row["full_ms"] for row in rows), 3),
        "add_ms": round(median(add_ms), 3),
        "add_mean_ms": round(float(np.mean(add_ms)), 3),
        "add_max_ms": round(max(add_ms), 1),
        "bases": prepared.stats["bases"],
        "baseline_presort_ms": round(presort_ms, 1),
        "prepared_mb": round(prepared.nbytes / MB, 1),
        "float32_mb": round(float32_mb, 1),
        "memory_ratio": round(prepared.nbytes / MB / float32_mb, 3),
        "pairs": pairs,
        "correlation_exact": sum(row["correlation_exact"] for row in rows),
        "ks_exact": sum(row["ks_exact"] for row in rows),
        "fetched": sum(row["fetched"] for row in rows),
        "exact_share": "%.5f" % (exact / max(pairs, 1)),
        "explain_median_ms": round(median([row["explain_ms"] for row in rows]), 3),
        "explain_all_keys_median_ms": round(median([row["explain_all_ms"] for row in rows]), 3),
        "explain_max_ms": round(max(row["explain_ms"] for row in rows), 3),
        "explain_cpu_median_ms": round(median([row["explain_cpu"] for row in rows]), 3),
        "cpu_median_ms": round(median([row["full_cpu"] for row in rows]), 3),
        "explain_exact_pairs": sum(row["explain_exact"] for row in rows),
        "explain_fetched": sum(row["explain_fetched"] for row in rows),
        "verified": "%d/%d" % (len(rows), len(rows)),
        "baseline_pairs": min(args.baseline_pairs, args.others),
        "blas_threads": 1,
    }
    return [result("originality", fields, median([row["full_ms"] for row in rows]), baseline_ms)]
