"""``python -m bench`` runs every benchmark; ``python -m bench NAME --flags`` runs one.

Each result prints as one machine-readable line as soon as it is known,
``bench <name> key=value ... median_ms=x baseline_ms=y speedup=y/x``,
and a table of all of them follows at the end.
"""
import argparse
import sys

from bench import BENCHMARKS
from bench.timing import BenchmarkError, record_line

#: Fields shown in the summary table besides name and parameters.
TABLE_FIELDS = ("median_ms", "baseline_ms", "speedup")


def parser_with_subcommands():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    parsers = {}
    for name, module in BENCHMARKS.items():
        parsers[name] = commands.add_parser(name, help=module.__doc__.strip().splitlines()[0].split(": ", 1)[-1])
        module.add_arguments(parsers[name])
    return parser, parsers


def table(results):
    """A plain text table of the results."""
    rows = [("benchmark", "parameters") + TABLE_FIELDS]
    for entry in results:
        fields = entry["fields"]
        params = " ".join("%s=%s" % (k, v) for k, v in fields.items() if k not in TABLE_FIELDS)
        rows.append((entry["name"], params) + tuple(str(fields[k]) for k in TABLE_FIELDS))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv=None):
    parser, parsers = parser_with_subcommands()
    args = parser.parse_args(argv)
    chosen = [args.benchmark] if args.benchmark else list(BENCHMARKS)
    results = []
    for name in chosen:
        options = args if args.benchmark else parsers[name].parse_args([])
        try:
            entries = BENCHMARKS[name].run(options)
        except BenchmarkError as exc:
            print("BENCHMARK %s FAILED: %s" % (name, exc), file=sys.stderr, flush=True)
            return 1
        for entry in entries:
            print(record_line(entry), flush=True)
        results += entries
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
