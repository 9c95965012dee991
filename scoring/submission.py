"""Reading a participant's prediction file, with reasons they can act on.

A file that cannot be judged fairly is rejected as a whole with a
:class:`SubmissionError` whose message is written for the participant;
nothing here guesses at what a broken file meant.

:func:`parse_submission` is the plain reader. :class:`RoundIds`, built
once per round, reads the common file (header ``id,probability``, rows
in any order) several times faster with exactly the plain reader's
result, and hands every other file to the plain reader.
"""
import io
import logging
import re

import numpy as np
import pandas as pd

from scoring.errors import DataError

log = logging.getLogger(__name__)

#: How many offending ids or rows a message quotes.
EXAMPLES = 3
#: Header lines the fast path reads; a file with any other header is read the plain way.
FAST_HEADERS = (b"id,probability\n", b"id,probability\r\n")
#: Round ids the fast path can compare as bytes: printable ASCII without space, comma or quote, which
#: the CSV tokenizer passes through unchanged and the plain reader's strip leaves alone.
PLAIN_ID = re.compile(rb"[!#-+\--~]+")
#: Odd 64-bit multiplier (2**64 / golden ratio) that mixes an id's 8-byte words into one key.
KEY_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


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


class RoundIds:
    """A round's ids, prepared once so that each of its submissions is read quickly.

    :meth:`parse` returns exactly what ``parse_submission(raw, ids)``
    returns, or raises its error. :meth:`read_fast` reads the common file
    with the same ``pandas.read_csv`` call as the plain reader, except that
    the id column stays fixed-width bytes instead of becoming 45,000 Python
    strings to strip, hash and look up: ids in the round's order are one
    comparison of bytes, ids in another order are found through a numeric
    key per id (:func:`id_keys`) and then compared as bytes too.
    """

    def __init__(self, ids):
        self.index = ids
        encoded = [str(i).encode() for i in ids]
        self.dtype = np.dtype("S%d" % (max(map(len, encoded), default=0) + 1))  # a spare byte: longer ids differ
        self.expected = self.ids = self.keys = None
        if not fast_ids(ids, encoded):
            log.info("the round's ids are not all plain ASCII that the plain reader reads back as themselves; "
                     "its %s-row submissions are read the plain way", len(ids))
            return
        self.expected = np.array(encoded, dtype=self.dtype).tobytes()
        self.ids = np.frombuffer(self.expected, dtype=self.dtype)
        keys = pd.Index(id_keys(self.ids))
        if keys.is_unique:
            self.keys = keys
        else:
            log.info("two of the round's ids share a lookup key; its files with rows out of order are read the plain way")

    def parse(self, raw):
        """Predictions from CSV bytes in the round's row order, as :func:`parse_submission` gives them."""
        values = self.read_fast(raw)
        return parse_submission(raw, self.index) if values is None else values

    def read_fast(self, raw):
        """The predictions when the file is the common case, else None (then only the plain reader knows).

        Why the result is the plain reader's: :meth:`read_frame` tokenizes
        and converts the probability column as the plain reader does. Ids
        equal to the round's, byte for byte (:meth:`rows`), are read by the
        plain reader as those ids (:func:`fast_ids`), so its checks of the
        ids pass and its lookup puts each value where this puts it; the
        values are accepted only when the plain checks would accept them.
        """
        frame = self.read_frame(raw)
        if frame is None:
            return None
        values = pd.to_numeric(frame["probability"], errors="coerce").to_numpy(dtype=np.float64)
        if not ((values >= 0) & (values <= 1)).all():  # NaN fails both: missing, text and out of range
            return None
        ids = frame["id"].to_numpy()
        if ids.tobytes() == self.expected:
            return values.copy()
        rows = self.rows(ids)
        if rows is None:
            return None
        placed = np.empty_like(values)
        placed[rows] = values
        return placed

    def read_frame(self, raw):
        """The file as the plain reader's ``read_csv`` call reads it, but with fixed-width byte ids; None if unusual.

        Only the header ``id,probability`` is read here, so the plain
        reader's id column is this ``id``. ``skipinitialspace`` only skips
        spaces at the start of a field (pandas' tokenizer), so it is left
        off for a file without any. A NUL byte, which fixed-width bytes would
        hide, or any error sends the file the plain way.
        """
        if self.expected is None or not raw.startswith(FAST_HEADERS) or b"\0" in raw:
            return None
        try:
            frame = pd.read_csv(io.BytesIO(raw), dtype={"id": self.dtype}, skipinitialspace=b" " in raw,
                                index_col=False)
        except Exception as exc:  # anything unusual is the plain reader's to read and explain
            log.debug("fast read declined the file (%s); reading it the plain way", type(exc).__name__)
            return None
        if list(frame.columns) != ["id", "probability"] or frame["id"].dtype != self.dtype:
            return None
        return frame

    def rows(self, ids):
        """The round row of each of the file's ids when they are the round's ids in another order, else None."""
        if self.keys is None or len(ids) != len(self.ids):
            return None
        rows = self.keys.get_indexer(id_keys(ids))
        if (rows < 0).any() or self.ids[rows].tobytes() != ids.tobytes():
            return None
        if np.bincount(rows, minlength=len(self.ids)).max() > 1:  # an id twice, so another is missing
            return None
        return rows


def id_keys(ids):
    """A 64-bit key of each fixed-width byte id: its 8-byte words mixed by multiplying and xor-ing.

    Looking numbers up is far cheaper than looking up strings. A key only
    finds where an id may be; :meth:`RoundIds.rows` then compares the bytes.
    """
    n, width = len(ids), ids.dtype.itemsize
    words = -(-width // 8)
    padded = np.zeros((n, words * 8), np.uint8)
    padded[:, :width] = np.frombuffer(ids.tobytes(), np.uint8).reshape(n, width)
    columns = padded.view(np.uint64)
    keys = np.zeros(n, np.uint64)
    for word in range(words):
        keys = keys * KEY_MULTIPLIER ^ columns[:, word]
    return keys


def fast_ids(ids, encoded):
    """Whether byte-equal ids in a file are read by the plain reader as the round's ids.

    The ids must be plain ASCII the tokenizer passes through unchanged
    (:data:`PLAIN_ID`), and the plain reader must read a file of them back
    as themselves: that rules out the spellings it takes for a missing
    value (``NA``, ``null``, ...), whatever pandas' list of them is.
    """
    if not len(ids) or not all(PLAIN_ID.fullmatch(i) for i in encoded):
        return False
    raw = b"id,probability\n" + b"".join(b"%s,0\n" % i for i in encoded)
    try:
        read = read_table(raw)["id"]
    except SubmissionError:
        return False
    return not read.isna().any() and read.astype(str).str.strip().tolist() == [str(i) for i in ids]
