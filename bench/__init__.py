"""Benchmarks of the judging code, run with ``python -m bench [name] [flags]``.

Each benchmark is a module with ``add_arguments(parser)`` and
``run(args) -> list of result dicts`` (see :func:`bench.timing.result`),
registered in :data:`BENCHMARKS` below; that is the only place a new one
(``round``, ``intake``, ...) needs to be added.
"""
from bench import concordance, intake, originality, reading, round, scaleout

#: name -> benchmark module, in the order ``python -m bench`` runs them.
BENCHMARKS = {
    "originality": originality,
    "concordance": concordance,
    "reading": reading,
    "round": round,
    "intake": intake,
    "scaleout": scaleout,
}
