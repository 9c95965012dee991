"""Reading a participant's prediction file, with reasons they can act on.

A file that cannot be judged fairly is rejected as a whole with a
:class:`SubmissionError` whose message is written for the participant;
nothing here guesses at what a broken file meant.
"""
import io

import numpy as np
import pandas as pd

from scoring.errors import DataError

#: How many offending ids or rows a message quotes.
EXAMPLES = 3


class SubmissionError(DataError):
    """The submission file cannot be judged; the message says why."""


def _examples(values):
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:EXAMPLES])
    return shown + (", ..." if len(values) > EXAMPLES else "")


def read_table(raw):
    """Parse CSV bytes into a frame with string ``id`` and raw ``probability``."""
    if not raw or not raw.strip():
        raise SubmissionError("the submission file is empty")
    try:
        header = pd.read_csv(io.BytesIO(raw), nrows=0, skipinitialspace=True).columns
        text_columns = {name: str for name in header if str(name).strip().lower() == "id"}
        frame = pd.read_csv(io.BytesIO(raw), dtype=text_columns, skipinitialspace=True, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SubmissionError("the submission file is not a readable CSV file (%s)" % first_line) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("id", "probability") if c not in frame.columns]
    if missing:
        raise SubmissionError(
            "the submission file needs a header line 'id,probability'; column %s not found (found: %s)"
            % (" and ".join(repr(c) for c in missing), ", ".join(repr(c) for c in frame.columns[:5]) or "nothing")
        )
    if frame.empty:
        raise SubmissionError("the submission file has a header but no predictions")
    return frame


def probabilities(frame):
    """Probabilities as float64, rejecting text, missing and out-of-range values."""
    column = frame["probability"]
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raw = column.iloc[bad[0]]
        what = "is missing" if pd.isna(raw) or str(raw).strip().lower() in ("", "nan") else "is not a number: %r" % (raw,)
        raise SubmissionError("probability %s on data row %d (id %r); %d rows have no valid number"
                              % (what, bad[0] + 1, frame["id"].iloc[bad[0]], bad.size))
    outside = np.flatnonzero((values < 0) | (values > 1))
    if outside.size:
        raise SubmissionError("probability %s on data row %d (id %r) is outside [0, 1]; %d rows are"
                              % (float(values[outside[0]]), outside[0] + 1, frame["id"].iloc[outside[0]], outside.size))
    return values


def align(ids, values, round_ids):
    """Put ``values`` in the round's row order, demanding each round id exactly once."""
    ids = pd.Index(ids.astype(str).str.strip())
    if ids.hasnans:
        raise SubmissionError("an id is missing on data row %d" % (np.flatnonzero(ids.isna())[0] + 1))
    if not ids.is_unique:
        raise SubmissionError("ids appear more than once: %s" % _examples(ids[ids.duplicated()].unique()))
    position = ids.get_indexer(round_ids)
    absent = position < 0
    if absent.any():
        raise SubmissionError("%d ids of the round have no prediction: %s" % (absent.sum(), _examples(round_ids[absent])))
    if len(ids) > len(round_ids):
        unknown = ids.difference(round_ids)
        raise SubmissionError("%d ids are not in the round's tournament data: %s" % (len(unknown), _examples(unknown)))
    return values[position]


def parse_submission(raw, round_ids):
    """Predictions from CSV bytes, as float64 in the order of ``round_ids``.

    ``round_ids`` is a ``pandas.Index`` of the round's ids as strings.
    Raises :class:`SubmissionError` for any file that cannot be judged.
    """
    frame = read_table(raw)
    values = probabilities(frame)
    return align(frame["id"], values, round_ids)
