"""Small helpers shared by the benchmarks: clocks, records, failures."""
import statistics
import time


class BenchmarkError(RuntimeError):
    """A benchmark found the fast path disagreeing with the plain rule."""


def clock_ms(function, *args, **kwargs):
    """``(result, milliseconds)`` of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1e3


def median(values):
    return float(statistics.median(values)) if values else float("nan")


def result(name, fields, median_ms, baseline_ms):
    """A benchmark result: its fields, then median, baseline and speedup last."""
    fields = dict(fields)
    fields["median_ms"] = round(median_ms, 3)
    fields["baseline_ms"] = round(baseline_ms, 3)
    fields["speedup"] = round(baseline_ms / median_ms, 1) if median_ms > 0 else float("inf")
    return {"name": name, "fields": fields}


def record_line(entry):
    """``bench <name> key=value ... median_ms=x baseline_ms=y speedup=y/x``."""
    return "bench %s %s" % (entry["name"], " ".join("%s=%s" % item for item in entry["fields"].items()))
