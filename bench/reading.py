"""reading: a submission file read through the round's RoundIds, and its consistency, vs the plain code.

The fast paths are the service's. :class:`scoring.submission.RoundIds`,
built once per round (``build_ms``), reads each user's file as
``bench.round`` writes it: in the round's row order with ``%r`` floats
(``order=round``), and the same rows shuffled (``order=shuffled``).
:func:`scoring.consistency.consistency_evidence` judges the validation
eras given as the round's ``pandas.Categorical`` of them
(``Tournament.validation_eras``). The baselines are the plain reader,
:func:`scoring.submission.parse_submission`, and the plain per-era loop
(``np.unique`` of the era names, then per era a mask, a mean and the
exact sum). Every result must equal its baseline's bit for bit, or the
run aborts. Each file is timed ``--repeats`` times; the medians are over
all calls.
"""
import argparse
import math
import os
import tempfile

import numpy as np
import pandas as pd

from bench import data
from bench.round import frames, write_csv
from bench.timing import BenchmarkError, clock_ms, median, result
from scoring.consistency import consistency_evidence, plain_consistency_evidence
from scoring.rules import Rules
from scoring.submission import RoundIds, parse_submission


def add_arguments(parser):
    parser.add_argument("--rows", type=int, default=45000, help="tournament rows (n)")
    parser.add_argument("--submissions", type=int, default=20, help="users' files to read")
    parser.add_argument("--repeats", type=int, default=5, help="times each file is read and judged")
    parser.add_argument("--seed", type=int, default=0)


def same_floats(a, b):
    """Equal, with floats compared bit for bit (as hex)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_floats(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_floats(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isnan(a) and math.isnan(b) or float.hex(a) == float.hex(b)
    return a == b


def files(folder, ids, predictions, order):
    """Each user's file as bytes, rows in the round's order or shuffled (seeded)."""
    rng = np.random.default_rng(len(predictions))
    out = []
    for user, values in predictions.items():
        rows = np.arange(len(ids)) if order == "round" else rng.permutation(len(ids))
        path = os.path.join(folder, "%s-%s.csv" % (user, order))
        write_csv(path, [ids[k] for k in rows], values[rows])
        with open(path, "rb") as handle:
            out.append(handle.read())
    return out


def reading(reader, ids, raws, repeats):
    """Median ms of the fast and the plain reader over every file; aborts unless their arrays are identical."""
    fast_ms, plain_ms, taken = [], [], 0
    for raw in raws:
        for _ in range(repeats):
            fast, ms = clock_ms(reader.parse, raw)
            fast_ms.append(ms)
            plain, ms = clock_ms(parse_submission, raw, ids)
            plain_ms.append(ms)
            if fast.tobytes() != plain.tobytes() or fast.dtype != plain.dtype:
                raise BenchmarkError("RoundIds.parse differs from parse_submission on a generated file")
        taken += reader.read_fast(raw) is not None
    return median(fast_ms), median(plain_ms), taken


def run(args):
    rules = Rules()
    generator = data.RoundGenerator(args.rows, seed=args.seed)
    _, tournament = frames(generator, argparse.Namespace(rows=args.rows, features=1, train_rows=1, seed=args.seed))
    ids = pd.Index(tournament["id"].astype(str))
    reader, build_ms = clock_ms(RoundIds, ids)
    predictions = generator.round(args.submissions).predictions
    entries = []
    with tempfile.TemporaryDirectory() as folder:
        for order in ("round", "shuffled"):
            raws = files(folder, list(ids), predictions, order)
            fast_ms, plain_ms, taken = reading(reader, ids, raws, args.repeats)
            fields = {"rows": args.rows, "order": order, "files": len(raws), "fast_path": "%d/%d" % (taken, len(raws)),
                      "bytes_per_file": sum(map(len, raws)) // len(raws), "build_ms": round(build_ms, 1)}
            entries.append(result("reading", fields, fast_ms, plain_ms))
    valid = (tournament["data_type"] == "validation").to_numpy()
    names = tournament["era"].astype(str).to_numpy()[valid]
    eras = pd.Categorical(names)
    targets = tournament["target"].to_numpy(dtype=np.float64)[valid]
    fast_ms, plain_ms = [], []
    for values in predictions.values():
        for _ in range(args.repeats):
            found, ms = clock_ms(consistency_evidence, eras, targets, values[valid], rules)
            fast_ms.append(ms)
            expected, ms = clock_ms(plain_consistency_evidence, names, targets, values[valid], rules)
            plain_ms.append(ms)
            if not same_floats(found, expected):
                raise BenchmarkError("consistency_evidence differs from the plain per-era loop")
    fields = {"rows": int(valid.sum()), "eras": len(eras.categories), "submissions": len(predictions)}
    entries.append(result("consistency", fields, median(fast_ms), median(plain_ms)))
    return entries
