"""scoring.dataset: the round's CSVs as arrays, and clear DatasetErrors for malformed ones."""
import bz2
import io
import os

import numpy as np
import pandas as pd
import pytest

from scoring.dataset import DatasetError, Tournament, read_tournament, read_training_features
from tests.conftest import SAMPLES

DATA = SAMPLES


def real_path(name):
    path = os.path.join(DATA, "sample_%s.csv.bz2" % name)
    if not os.path.exists(path):
        pytest.skip("real 2017 sample %s not available" % path)
    return path


def as_file(frame):
    return io.BytesIO(frame.to_csv(index=False).encode())


def small_frame():
    return pd.DataFrame({
        "id": ["n1", "n2", "n3", "n4", "n5"],
        "era": ["era1", "era1", "era2", "eraX", "eraX"],
        "data_type": ["validation", "validation", "validation", "test", "live"],
        "feature1": [0.1, 0.2, 0.3, 0.4, 0.5],
        "feature2": [0.5, 0.4, 0.3, 0.2, 0.1],
        "target": [1.0, 0.0, 1.0, np.nan, np.nan],
    })


def assert_matches_frame(tournament, frame):
    """Compare with a direct pandas reading of the same frame."""
    columns = [c for c in frame.columns if "feature" in c]
    assert isinstance(tournament, Tournament)
    assert list(tournament.ids) == [str(i) for i in frame["id"]]
    assert tournament.ids.is_unique
    np.testing.assert_array_equal(tournament.data_types, frame["data_type"].astype(str).to_numpy())
    np.testing.assert_array_equal(tournament.eras, frame["era"].astype(str).to_numpy())
    assert tournament.targets.dtype == np.float64
    np.testing.assert_array_equal(tournament.targets, pd.to_numeric(frame["target"]).to_numpy(dtype=np.float64))
    assert tournament.features.dtype == np.float32
    np.testing.assert_array_equal(tournament.features, frame[columns].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(tournament.validation, (frame["data_type"] == "validation").to_numpy())


# ---------------------------------------------------------------- good data

def test_read_generated_round():
    demo = pytest.importorskip("queues.demo")
    training, tournament = demo.make_round(seed=4, train_rows=600, validation_rows=600, test_rows=300, live_rows=300)
    parsed = read_tournament(as_file(tournament))
    assert_matches_frame(parsed, tournament)
    assert parsed.features.shape == (1200, 21)
    live = parsed.data_types == "live"
    assert np.isnan(parsed.targets[live]).all()
    assert not np.isnan(parsed.targets[parsed.validation]).any()
    assert len(np.unique(parsed.eras[parsed.validation])) == 12

    features = read_training_features(as_file(training))
    columns = [c for c in training.columns if "feature" in c]
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, training[columns].to_numpy(dtype=np.float32))


def test_read_real_tournament_sample():
    path = real_path("tournament")
    frame = pd.read_csv(path, dtype={"id": str})
    with bz2.open(path) as handle:
        parsed = read_tournament(handle)
    assert_matches_frame(parsed, frame)
    assert parsed.features.shape == (1499, 21)
    assert parsed.validation.sum() == 499
    assert (parsed.data_types == "test").sum() == 500
    assert (parsed.data_types == "live").sum() == 500
    assert set(parsed.eras[parsed.validation]) == {"era97"}
    assert np.isnan(parsed.targets[parsed.data_types == "live"]).all()
    assert set(np.unique(parsed.targets[parsed.validation])) <= {0.0, 1.0}


def test_read_real_training_sample():
    path = real_path("training")
    frame = pd.read_csv(path)
    columns = ["feature%d" % i for i in range(1, 22)]
    assert [c for c in frame.columns if "feature" in c] == columns
    with bz2.open(path) as handle:
        features = read_training_features(handle)
    assert features.dtype == np.float32 and features.shape == (1499, 21)
    np.testing.assert_array_equal(features, frame[columns].to_numpy(dtype=np.float32))


def test_feature_columns_are_those_containing_feature_in_file_order():
    frame = small_frame()
    frame.insert(3, "feature10", [1.0, 2.0, 3.0, 4.0, 5.0])
    frame["my_feature_x"] = [9.0, 8.0, 7.0, 6.0, 5.0]
    frame["notes"] = ["a", "b", "c", "d", "e"]  # not a feature, and not numeric: ignored
    parsed = read_tournament(as_file(frame))
    expected = frame[["feature10", "feature1", "feature2", "my_feature_x"]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(parsed.features, expected)
    features = read_training_features(as_file(frame))
    np.testing.assert_array_equal(features, expected)


def test_live_targets_left_empty_become_nan():
    raw = (b"id,era,data_type,feature1,target\n"
           b"1,era1,validation,0.1,1\n2,era1,validation,0.2,0\n3,eraX,test,0.3,\n4,eraX,live,0.4,\n")
    parsed = read_tournament(io.BytesIO(raw))
    np.testing.assert_array_equal(parsed.targets[:2], [1.0, 0.0])
    assert np.isnan(parsed.targets[2:]).all()


def test_integer_ids_are_kept_as_text():
    raw = b"id,era,data_type,feature1,target\n0090616,era1,validation,0.1,1\n148473,eraX,live,0.2,\n"
    parsed = read_tournament(io.BytesIO(raw))
    assert list(parsed.ids) == ["0090616", "148473"]


def test_whitespace_around_ids_and_data_types_is_stripped():
    frame = small_frame()
    frame["id"] = [" n1", "n2 ", "n3", "n4", "n5"]
    frame["data_type"] = [" validation", "validation ", "validation", "test", "live"]
    parsed = read_tournament(as_file(frame))
    assert list(parsed.ids) == ["n1", "n2", "n3", "n4", "n5"]
    assert parsed.validation.tolist() == [True, True, True, False, False]


def test_training_features_with_empty_cells_are_nan():
    raw = b"id,era,data_type,feature1,feature2,target\n1,era1,train,0.1,,1\n2,era1,train,0.2,0.3,0\n"
    features = read_training_features(io.BytesIO(raw))
    assert np.isnan(features[0, 1]) and features[1, 1] == np.float32(0.3)


# ---------------------------------------------------------------- malformed data

@pytest.mark.parametrize("column", ["id", "era", "data_type", "target"])
def test_missing_required_column(column):
    frame = small_frame().drop(columns=[column])
    with pytest.raises(DatasetError) as info:
        read_tournament(as_file(frame))
    assert repr(column) in str(info.value) and "lacks" in str(info.value)


def test_no_feature_columns():
    frame = small_frame().rename(columns={"feature1": "f1", "feature2": "f2"})
    with pytest.raises(DatasetError, match="feature"):
        read_tournament(as_file(frame))
    with pytest.raises(DatasetError, match="feature"):
        read_training_features(as_file(frame))


def test_duplicate_ids():
    frame = small_frame()
    frame.loc[3, "id"] = "n2"
    with pytest.raises(DatasetError, match="repeats ids"):
        read_tournament(as_file(frame))


def test_ids_duplicated_only_up_to_whitespace():
    frame = small_frame()
    frame.loc[3, "id"] = "n2 "
    with pytest.raises(DatasetError, match="repeats ids"):
        read_tournament(as_file(frame))


def test_no_validation_rows():
    frame = small_frame()
    frame["data_type"] = ["test", "test", "test", "test", "live"]
    with pytest.raises(DatasetError, match="no validation rows"):
        read_tournament(as_file(frame))


@pytest.mark.parametrize("target", [np.nan, "x"], ids=["empty", "text"])
def test_validation_rows_without_target(target):
    frame = small_frame().astype({"target": object})
    frame.loc[1, "target"] = target
    with pytest.raises(DatasetError, match="validation rows without a target"):
        read_tournament(as_file(frame))


def test_header_only_has_no_validation_rows():
    frame = small_frame().iloc[:0]
    with pytest.raises(DatasetError, match="no validation rows"):
        read_tournament(as_file(frame))


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_empty_tournament_file_is_a_dataset_error():
    with pytest.raises(DatasetError):
        read_tournament(io.BytesIO(b""))


def test_text_in_a_tournament_feature_is_a_dataset_error():
    frame = small_frame().astype({"feature2": object})
    frame.loc[4, "feature2"] = "abc"
    with pytest.raises(DatasetError):
        read_tournament(as_file(frame))


def test_text_in_a_training_feature_is_a_dataset_error():
    frame = small_frame().astype({"feature2": object})
    frame.loc[4, "feature2"] = "abc"
    with pytest.raises(DatasetError):
        read_training_features(as_file(frame))
