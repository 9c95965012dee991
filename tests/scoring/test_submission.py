"""scoring.submission: files that can be judged come out aligned; the others get a reason."""
import bz2
import io

import numpy as np
import pandas as pd
import pytest

from scoring.submission import SubmissionError, parse_submission
from tests.conftest import sample_paths

STRING_IDS = pd.Index(["n0003aa52cab36c2", "n000920ed083903f", "n0038e640522c4a6", "n004ac94a87dc54b"])
INT_IDS = pd.Index(["90616", "148473", "72743", "32457"])


def csv(*lines):
    return ("\n".join(lines) + "\n").encode()


def good_lines(ids, values=None, header="id,probability"):
    values = np.linspace(0.1, 0.9, len(ids)) if values is None else values
    return [header] + ["%s,%r" % (i, float(v)) for i, v in zip(ids, values)]


def rejected(raw, round_ids=INT_IDS):
    with pytest.raises(SubmissionError) as info:
        parse_submission(raw, round_ids)
    message = str(info.value)
    assert message.strip()
    return message


# ---------------------------------------------------------------- accepted files

@pytest.mark.parametrize("round_ids", [STRING_IDS, INT_IDS], ids=["string-ids", "int-ids"])
@pytest.mark.parametrize("seed", range(3))
def test_rows_in_any_order_are_aligned_to_the_round(round_ids, seed):
    rng = np.random.default_rng(seed)
    values = rng.random(len(round_ids)).round(5)
    order = rng.permutation(len(round_ids))
    raw = csv(*good_lines(round_ids[order], values[order]))
    parsed = parse_submission(raw, round_ids)
    assert parsed.dtype == np.float64
    np.testing.assert_array_equal(parsed, values)


def test_generated_round_with_shuffled_file():
    demo = pytest.importorskip("queues.demo")
    _, tournament = demo.make_round(seed=2, train_rows=20, validation_rows=600, test_rows=300, live_rows=300)
    round_ids = pd.Index(tournament["id"].astype(str))
    values = np.random.default_rng(2).random(len(round_ids)).round(5)
    raw = demo.submission_csv(tournament["id"], values, seed=3)
    assert raw.splitlines()[1].split(b",")[0] != round_ids[0].encode()  # the file really is shuffled
    np.testing.assert_array_equal(parse_submission(raw, round_ids), values)


def test_real_sample_result_is_aligned_to_the_tournament():
    tournament_path, result_path = sample_paths("sample_tournament.csv.bz2", "sample_result.csv.bz2")
    tournament = pd.read_csv(tournament_path, dtype={"id": str})
    raw = bz2.open(result_path).read()
    expected = pd.read_csv(io.BytesIO(raw), dtype={"id": str}).set_index("id").loc[tournament["id"], "probability"]
    round_ids = pd.Index(tournament["id"])
    parsed = parse_submission(raw, round_ids)
    assert parsed.shape == (1499,)
    np.testing.assert_array_equal(parsed, expected.to_numpy(dtype=np.float64))
    # shuffled rows, same answer
    frame = pd.read_csv(io.BytesIO(raw), dtype=str).sample(frac=1, random_state=0)
    np.testing.assert_array_equal(parse_submission(frame.to_csv(index=False).encode(), round_ids), parsed)


@pytest.mark.parametrize("header", ["ID, Probability", "Id,PROBABILITY", " id , probability ", "id,probability"])
@pytest.mark.parametrize("round_ids", [STRING_IDS, INT_IDS], ids=["string-ids", "int-ids"])
def test_header_case_and_whitespace_are_tolerated(header, round_ids):
    values = np.array([0.1, 0.2, 0.3, 0.4])
    lines = [header] + ["%s, %s" % (i, v) for i, v in zip(round_ids[::-1], values[::-1])]
    np.testing.assert_array_equal(parse_submission(csv(*lines), round_ids), values)


def test_extra_columns_are_ignored():
    lines = ["era,id,probability,comment"] + ["era1,%s,0.%d,hello" % (i, k + 1) for k, i in enumerate(INT_IDS)]
    np.testing.assert_array_equal(parse_submission(csv(*lines), INT_IDS), [0.1, 0.2, 0.3, 0.4])


def test_zero_and_one_exactly_are_accepted():
    raw = csv("id,probability", "90616,0", "148473,1", "72743,0.0", "32457,1.0")
    np.testing.assert_array_equal(parse_submission(raw, INT_IDS), [0, 1, 0, 1])


def test_other_number_spellings_and_line_endings():
    raw = b"id,probability\r\n90616,1e-3\r\n148473,.5\r\n\"72743\",\"0.25\"\r\n32457,  0.75  \r\n"
    np.testing.assert_array_equal(parse_submission(raw, INT_IDS), [0.001, 0.5, 0.25, 0.75])
    bom = "\ufeff".encode() + csv(*good_lines(INT_IDS, [0.1, 0.2, 0.3, 0.4]))
    np.testing.assert_array_equal(parse_submission(bom, INT_IDS), [0.1, 0.2, 0.3, 0.4])


# ---------------------------------------------------------------- rejected files

@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\n  \n", b"\r\n\t"], ids=["empty", "spaces", "newlines", "crlf-tab"])
def test_empty_file(raw):
    assert "empty" in rejected(raw)


def test_header_only():
    message = rejected(csv("id,probability"))
    assert "no predictions" in message and "header" in message


@pytest.mark.parametrize("raw", [
    bytes(range(256)) * 4,
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x00",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xb4\x8a\x9cJ\xff\xfe",
    "id,probability\n1,0.5\n".encode("utf-16"),
], ids=["all-bytes", "png", "zip", "utf16"])
def test_binary_garbage(raw):
    message = rejected(raw)
    assert "readable CSV" in message or "header line 'id,probability'" in message


@pytest.mark.parametrize("raw", [b"hello world\nthis is not a csv file\n", b"id;probability\n90616;0.5\n"],
                         ids=["prose", "semicolons"])
def test_not_csv(raw):
    message = rejected(raw)
    assert "'id,probability'" in message and "not found" in message


def test_missing_probability_column():
    message = rejected(csv("id,prob", "90616,0.5"))
    assert "'probability'" in message and "not found" in message
    assert "'prob'" in message  # says what it found instead


def test_missing_id_column():
    message = rejected(csv("ident,probability", "90616,0.5"))
    assert "'id'" in message and "not found" in message
    assert "'ident'" in message


def test_missing_both_columns():
    message = rejected(csv("a,b", "1,2"))
    assert "'id'" in message and "'probability'" in message


@pytest.mark.parametrize("cell", ["nan", "NaN", "", "  "], ids=["nan", "NaN", "empty", "blank"])
def test_missing_probability_value(cell):
    message = rejected(csv("id,probability", "90616,0.5", "148473,%s" % cell, "72743,0.5", "32457,0.5"))
    assert "missing" in message
    assert "row 2" in message and "148473" in message
    assert "1 rows" in message


@pytest.mark.parametrize("cell", ["abc", "0,5", "50%", "0.5.1"])
def test_text_probability(cell):
    lines = ["id,probability", "90616,0.5", "148473,\"%s\"" % cell, "72743,0.5", "32457,0.5"]
    message = rejected(csv(*lines))
    assert "not a number" in message and repr(cell) in message
    assert "148473" in message


@pytest.mark.parametrize("cell", ["-0.1", "1.5", "inf", "-inf", "1.0000001", "-1e-9"])
def test_probability_outside_unit_interval(cell):
    message = rejected(csv("id,probability", "90616,0.5", "148473,0.5", "72743,%s" % cell, "32457,0.5"))
    assert "outside [0, 1]" in message
    assert "row 3" in message and "72743" in message


def test_count_of_bad_rows_is_reported():
    message = rejected(csv("id,probability", "90616,2", "148473,-1", "72743,0.5", "32457,7"))
    assert "3 rows" in message


def test_out_of_range_message_quotes_the_plain_value():
    message = rejected(csv("id,probability", "90616,-0.1", "148473,0.5", "72743,0.5", "32457,0.5"))
    assert "np.float64" not in message and "-0.1" in message


def test_duplicate_ids_are_named():
    message = rejected(csv("id,probability", "90616,0.1", "148473,0.2", "72743,0.3", "32457,0.4", "148473,0.2"))
    assert "more than once" in message and "'148473'" in message
    # the same id with stray spaces is still the same id
    message = rejected(csv("id,probability", "90616,0.1", "148473,0.2", "72743,0.3", "32457,0.4", "\"148473 \",0.2"))
    assert "more than once" in message and "'148473'" in message


def test_many_duplicates_quote_a_few():
    lines = good_lines(INT_IDS) + good_lines(INT_IDS)[1:]
    message = rejected(csv(*lines))
    assert "more than once" in message and "..." in message


def test_missing_ids_give_count_and_example():
    message = rejected(csv(*good_lines(INT_IDS[:1])))
    assert "no prediction" in message
    assert message.startswith("3 ids")
    assert "'148473'" in message


def test_one_missing_id():
    message = rejected(csv(*good_lines(STRING_IDS.delete(2))), STRING_IDS)
    assert "1 ids of the round have no prediction" in message and "'n0038e640522c4a6'" in message


def test_many_missing_ids_quote_a_few():
    round_ids = pd.Index(["%d" % i for i in range(100)])
    message = rejected(csv(*good_lines(round_ids[:10])), round_ids)
    assert message.startswith("90 ids") and "no prediction" in message and "..." in message


def test_unknown_extra_ids():
    lines = good_lines(list(INT_IDS) + ["999999"])
    message = rejected(csv(*lines))
    assert "not in the round" in message and "'999999'" in message and message.startswith("1 ids")


def test_missing_id_cell():
    message = rejected(csv("id,probability", "90616,0.1", ",0.2", "72743,0.3", "32457,0.4"))
    assert "id is missing" in message and "row 2" in message


def test_float_spelled_ids_do_not_match_integer_ids():
    """Ids are compared as text; '90616.0' is not '90616'."""
    message = rejected(csv(*good_lines(["%s.0" % i for i in INT_IDS])))
    assert "no prediction" in message


def test_submission_error_is_a_value_error():
    assert issubclass(SubmissionError, ValueError)


def test_uppercase_header_keeps_ids_as_text():
    round_ids = pd.Index(["007", "010", "3"])
    lines = ["ID,probability", "007,0.1", "010,0.2", "3,0.3"]
    np.testing.assert_array_equal(parse_submission(csv(*lines), round_ids), [0.1, 0.2, 0.3])


def test_lowercase_header_keeps_ids_as_text():
    round_ids = pd.Index(["007", "010", "3"])
    lines = ["id,probability", "007,0.1", "010,0.2", "3,0.3"]
    np.testing.assert_array_equal(parse_submission(csv(*lines), round_ids), [0.1, 0.2, 0.3])
