"""scoring.submission.RoundIds: the plain reader's result, bit for bit, or the plain reader's error.

Files are generated from a good one and then spoiled in the ways people
spoil them (and a few more); whatever comes out, :meth:`RoundIds.parse`
must return exactly the bytes :func:`parse_submission` returns, or raise
the same error with the same message. Separate tests make sure the fast
path really is the one taken for the common files.
"""
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from scoring.dataset import Tournament
from scoring.submission import RoundIds, SubmissionError, id_keys, parse_submission

#: Ways to spell a probability: ordinary, unusual but valid, and invalid ones.
NUMBERS = ["0.5", "0.25", "1e-5", "1E-5", ".5", "1.", "+0.5", "0.1234567890123456789", "0", "1", "0.0", "1.0",
           "-0.0", "-0", "00.5", "5e-1", "0.99999999999999999999", "1e-400", "2.2250738585072014e-308",
           "nan", "NaN", "inf", "-inf", "", " ", "text", "1.5", "-0.1", "1.0000001", "True", "0x1", "1_0", "0,5"]
#: Bytes a spoiled file may gain anywhere.
STRAY = [b"\x00", b"\r", b"\n", b",", b'"', b" ", b"\t", b"\xff", b"\xef\xbb\xbf", b"#", b"'"]


def outcome(read):
    """What a reader gives: the exact bytes and flags of its array, or its error's type and message."""
    try:
        values = read()
    except SubmissionError as exc:
        return "error", type(exc).__name__, str(exc)
    return "values", values.dtype.str, values.shape, values.tobytes(), values.flags.writeable, values.flags.c_contiguous


def assert_same(raw, ids, reader=None):
    """The fast reader's outcome is the plain one's; returns whether the fast path read the file itself."""
    reader = RoundIds(ids) if reader is None else reader
    expected = outcome(lambda: parse_submission(raw, ids))
    assert outcome(lambda: reader.parse(raw)) == expected
    fast = reader.read_fast(raw)
    if fast is not None:
        assert expected[0] == "values" and fast.tobytes() == expected[3]
    return fast is not None


# ---------------------------------------------------------------- generated files

hex_ids = st.integers(0, 16 ** 15 - 1).map(lambda v: "n%015x" % v)
int_ids = st.integers(0, 10 ** 7).map(str)
zero_ids = st.tuples(st.integers(1, 3), st.integers(0, 999)).map(lambda t: "0" * t[0] + str(t[1]))
odd_ids = st.sampled_from(["NA", "null", "a b", "\u00e91", "x\"y", "nan", "None", "id", "-", "1.0", "#7"])


@st.composite
def round_ids(draw):
    """A round's ids: hex strings, integers, leading zeros, and now and then one the fast path cannot take."""
    kind = draw(st.sampled_from([hex_ids, int_ids, st.one_of(int_ids, zero_ids), st.one_of(hex_ids, odd_ids)]))
    ids = draw(st.lists(kind, min_size=1, max_size=12, unique=True))
    return pd.Index(ids)


def spelled_id(draw, value):
    """The id as written: mostly as it is, else with spaces, quotes, zeros or decimals added or taken away."""
    variants = [value, value, value, value, " " + value, value + " ", '"%s"' % value, '" %s"' % value,
                value.lstrip("0") or "0", "0" + value, value + ".0", "", value.upper()]
    return draw(st.sampled_from(variants))


@st.composite
def files(draw):
    """``(raw bytes, round ids)``: a good file of the round, then perhaps spoiled in several ways at once."""
    ids = draw(round_ids())
    values = draw(st.lists(st.floats(0, 1), min_size=len(ids), max_size=len(ids)))
    spoil = draw(st.booleans())
    rows = [[i, repr(v)] for i, v in zip(ids, values)]
    if spoil:
        for row in rows:
            if draw(st.integers(0, 4)) == 0:
                row[0] = spelled_id(draw, row[0])
            if draw(st.integers(0, 4)) == 0:
                row[1] = draw(st.sampled_from(NUMBERS))
        if draw(st.booleans()):
            rows = draw(st.permutations(rows))
        rows = list(rows)
        edit = draw(st.sampled_from(["none", "duplicate", "drop", "extra"]))
        if edit == "duplicate":
            rows.append(list(draw(st.sampled_from(rows))))
        elif edit == "drop" and len(rows) > 1:
            rows.pop(draw(st.integers(0, len(rows) - 1)))
        elif edit == "extra":
            rows.insert(draw(st.integers(0, len(rows))), ["999999999", "0.5"])
    elif draw(st.booleans()):
        rows = list(draw(st.permutations(rows)))
    header = ["id", "probability"]
    if spoil:
        header = [draw(st.sampled_from(["id", "ID", " id ", "Id", "ident"])),
                  draw(st.sampled_from(["probability", "Probability", " probability", "PROBABILITY ", "prob"]))]
        columns = draw(st.sampled_from(["none", "before", "after", "swapped"]))
        if columns == "before":
            header, rows = ["era"] + header, [["era1"] + row for row in rows]
        elif columns == "after":
            header, rows = header + ["comment"], [row + ["hello"] for row in rows]
        elif columns == "swapped":
            header, rows = header[::-1], [row[::-1] for row in rows]
    lines = [",".join(header)] + [",".join(row) for row in rows]
    if spoil and draw(st.booleans()):
        lines = [line + "," for line in lines] if draw(st.booleans()) else [lines[0]] + [line + "," for line in lines[1:]]
    if spoil and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(["", " ", ","])))
    end = draw(st.sampled_from(["\n", "\r\n"])) if spoil else "\n"
    raw = (end.join(lines) + (end if draw(st.booleans()) or not spoil else "")).encode("utf-8")
    if spoil and draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw
    if spoil and draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(STRAY)) + raw[at:]
    return raw, ids


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files())
def test_any_file_reads_as_the_plain_reader_reads_it(case):
    raw, ids = case
    fast = assert_same(raw, ids)
    event("fast path" if fast else "plain " + outcome(lambda: parse_submission(raw, ids))[0])


@st.composite
def one_byte_off(draw):
    """A good file of a round with plain ids, in round order or shuffled, with one byte inserted, dropped or changed."""
    ids = pd.Index(draw(st.lists(st.one_of(hex_ids, int_ids, zero_ids), min_size=1, max_size=8, unique=True)))
    values = draw(st.lists(st.floats(0, 1), min_size=len(ids), max_size=len(ids)))
    rows = list(zip(ids, values))
    if draw(st.booleans()):
        rows = draw(st.permutations(rows))
    raw = ("id,probability\n" + "".join("%s,%r\n" % row for row in rows)).encode()
    at = draw(st.integers(0, len(raw) - 1))
    byte = bytes([draw(st.integers(0, 255))])
    how = draw(st.sampled_from(["insert", "drop", "change"]))
    raw = {"insert": raw[:at] + byte + raw[at:], "drop": raw[:at] + raw[at + 1:],
           "change": raw[:at] + byte + raw[at + 1:]}[how]
    return raw, ids


@settings(max_examples=400, deadline=None)
@given(one_byte_off())
def test_a_good_file_one_byte_off_reads_as_the_plain_reader_reads_it(case):
    raw, ids = case
    fast = assert_same(raw, ids)
    event("fast path" if fast else "plain " + outcome(lambda: parse_submission(raw, ids))[0])


@settings(max_examples=300, deadline=None)
@given(round_ids(), st.data())
def test_good_files_in_any_order_take_the_fast_path(ids, data):
    """Every good file of a round whose ids are plain takes the fast path, and gives the plain result."""
    reader = RoundIds(ids)
    assume(reader.expected is not None)
    values = data.draw(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5])),
                                min_size=len(ids), max_size=len(ids)))
    rows = data.draw(st.permutations(list(zip(ids, values))))
    spelling = data.draw(st.sampled_from(["%r", "%.5f", "%.17g", "%s"]))
    end = data.draw(st.sampled_from(["\n", "\r\n"]))
    raw = ("id,probability" + end + "".join(("%s," + spelling + end) % row for row in rows)).encode()
    assert assert_same(raw, ids, reader)


# ---------------------------------------------------------------- chosen cases

ROUND = pd.Index(["n0003aa52cab36c2", "n000920ed083903f", "n0038e640522c4a6", "n004ac94a87dc54b"])
INTS = pd.Index(["90616", "148473", "007", "3"])


def csv(ids, cells, header="id,probability", end="\n"):
    return (end.join([header] + ["%s,%s" % row for row in zip(ids, cells)]) + end).encode()


@pytest.mark.parametrize("ids", [ROUND, INTS], ids=["hex", "ints"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1, 0, 2]], ids=["round-order", "shuffled"])
@pytest.mark.parametrize("end", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_common_files_take_the_fast_path(ids, order, end):
    cells = ["0.5", "1e-5", "0.1234567890123456789", "1"]
    raw = csv(ids[order], [cells[k] for k in order], end=end)
    assert assert_same(raw, ids)
    np.testing.assert_array_equal(RoundIds(ids).parse(raw), [0.5, 1e-5, 0.1234567890123456789, 1.0])


@pytest.mark.parametrize("cells", [
    ["0", "1", "0", "1"],           # integers: the plain reader infers int64 and converts
    ["-0", "0", "1", "0"],          # -0 as an integer is 0.0; both readers infer the same type
    ["-0.0", "0.5", "0.5", "0.5"],  # -0.0 as a float keeps its sign in both
    ["True", "False", "True", "True"],
    ["1e-400", "0.5", ".5", "1."],
], ids=["ints", "minus-zero-int", "minus-zero-float", "booleans", "spellings"])
def test_column_types_are_inferred_as_the_plain_reader_infers_them(cells):
    raw = csv(INTS, cells)
    assert assert_same(raw, INTS)


@pytest.mark.parametrize("raw", [
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5\n\x00",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3\x00,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5\xff\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5\n3,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5\n4,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n7,0.5\n3,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n 3,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n\"3\",0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,nan\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,1.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5,extra\n",
    b"id,probability\n90616,0.5\n148473,0.5\n\n007,0.5\n3,0.5\n",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,\"0.5\n",
    b"id,probability\n",
    b"id,probability",
    b"id,probability\n90616,0.5\n148473,0.5\n007,0.5\n3,0.5\n90616000000000000,0.5\n",
], ids=["nul-at-end", "nul-in-id", "bad-utf8", "duplicate", "missing", "extra", "zeros-dropped", "space-in-id",
        "quoted-id", "empty-cell", "nan", "out-of-range", "extra-cell", "blank-line", "open-quote", "header-only",
        "header-no-newline", "long-id"])
def test_unusual_files_read_as_the_plain_reader_reads_them(raw):
    assert_same(raw, INTS)


def test_ids_longer_than_any_round_id_are_not_cut_to_match():
    """Fixed-width ids keep one byte more than the longest round id, so a longer id never passes for one."""
    raw = csv(["90616", "1484730", "007", "3"], ["0.5"] * 4)
    reader = RoundIds(INTS)
    assert reader.read_fast(raw) is None
    with pytest.raises(SubmissionError, match="no prediction"):
        reader.parse(raw)


@pytest.mark.parametrize("ids", [["NA", "1", "2"], ["null", "a"], ["a b", "c"], ["\u00e91", "e2"], ["x,y", "z"],
                                 ["", "z"], ['"q"', "z"]])
def test_rounds_with_ids_the_fast_path_cannot_compare_are_read_the_plain_way(ids):
    round_ids = pd.Index(ids)
    reader = RoundIds(round_ids)
    assert reader.expected is None
    raw = csv(round_ids, ["0.5"] * len(ids))
    assert reader.read_fast(raw) is None
    assert_same(raw, round_ids, reader)


def test_ids_whose_keys_collide_are_still_compared_as_bytes(monkeypatch):
    """With every key equal, the shuffled-file lookup is off and such files go the plain way; in order still works."""
    from scoring import submission
    monkeypatch.setattr(submission, "id_keys", lambda ids: np.zeros(len(ids), np.uint64))
    reader = RoundIds(INTS)
    assert reader.keys is None and reader.expected is not None
    assert assert_same(csv(INTS, ["0.5"] * 4), INTS, reader)
    assert not assert_same(csv(INTS[::-1], ["0.5"] * 4), INTS, reader)


def test_keys_depend_on_every_byte():
    ids = np.array([b"n0003aa52cab36c2", b"n0003aa52cab36c3", b"m0003aa52cab36c2", b"7"], dtype="S17")
    assert len(set(id_keys(ids).tolist())) == 4


def test_real_sample_takes_the_fast_path_in_both_orders():
    from tests.conftest import sample_paths
    tournament_path, result_path = sample_paths("sample_tournament.csv.bz2", "sample_result.csv.bz2")
    import bz2
    tournament = pd.read_csv(tournament_path, dtype={"id": str})
    round_ids = pd.Index(tournament["id"])
    raw = bz2.open(result_path).read()
    reader = RoundIds(round_ids)
    assert assert_same(raw, round_ids, reader)
    frame = pd.read_csv(io.BytesIO(raw), dtype=str)
    in_order = frame.set_index("id").loc[round_ids].reset_index().to_csv(index=False).encode()
    assert assert_same(in_order, round_ids, reader)


def test_the_tournament_builds_its_reader_once():
    tournament = Tournament(ids=INTS, data_types=np.array(["validation"] * 4, dtype=object),
                            eras=np.array(["era1"] * 4, dtype=object), targets=np.zeros(4),
                            features=np.zeros((4, 1), np.float32))
    assert tournament.reader is tournament.reader
    assert tournament.reader.index is INTS
