"""The round's tournament and training data, as arrays.

The dataset zip holds ``numerai_training_data.csv`` and
``numerai_tournament_data.csv`` with columns ``id, era, data_type,
feature*, target``. This module turns those CSVs into the arrays the
rules need and says clearly what is wrong when they are malformed.
"""
import dataclasses
import functools

import numpy as np
import pandas as pd

from scoring.errors import DataError
from scoring.submission import RoundIds

TRAINING_FILE = "numerai_training_data.csv"
TOURNAMENT_FILE = "numerai_tournament_data.csv"


class DatasetError(DataError):
    """The round's data cannot be used; the message says why."""


@dataclasses.dataclass
class Tournament:
    """One round's tournament rows: what every submission is judged against."""

    ids: pd.Index          # row ids as strings, in file order
    data_types: np.ndarray  # 'validation' | 'test' | 'live' per row
    eras: np.ndarray        # era name per row
    targets: np.ndarray     # float64, NaN where unknown (live)
    features: np.ndarray    # float32 (rows x features)

    @property
    def validation(self):
        """Boolean mask of the validation rows."""
        return self.data_types == "validation"

    @functools.cached_property
    def validation_eras(self):
        """The validation rows' eras as a ``pandas.Categorical``, grouped once per round.

        Consistency is judged on these rows for every submission; with the
        eras as codes it no longer sorts and compares era names each time.
        """
        return pd.Categorical(self.eras[self.validation])

    @functools.cached_property
    def reader(self):
        """The round's ids prepared for reading its submissions (:class:`scoring.submission.RoundIds`), built once."""
        return RoundIds(self.ids)


def feature_columns(frame):
    """The columns whose name contains 'feature', in file order."""
    columns = [c for c in frame.columns if "feature" in c]
    if not columns:
        raise DatasetError("no column whose name contains 'feature'")
    return columns


def read_csv(fileobj, name, **options):
    """``pandas.read_csv`` whose failures become a DatasetError naming the file."""
    try:
        return pd.read_csv(fileobj, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError("%s cannot be read: %s" % (name, first_line)) from exc


def numeric(frame, columns, name):
    """The feature columns as float32, naming the first column that holds text."""
    try:
        return frame[columns].to_numpy(dtype=np.float32)
    except ValueError:
        for column in columns:
            if pd.to_numeric(frame[column], errors="coerce").isna().sum() > frame[column].isna().sum():
                raise DatasetError("%s: column %s holds values that are not numbers" % (name, column)) from None
        raise


def read_tournament(fileobj):
    """Parse the tournament CSV into a :class:`Tournament`."""
    frame = read_csv(fileobj, TOURNAMENT_FILE, dtype={"id": str, "era": str, "data_type": str})
    for column in ("id", "era", "data_type", "target"):
        if column not in frame.columns:
            raise DatasetError("%s lacks the column %r" % (TOURNAMENT_FILE, column))
    columns = feature_columns(frame)
    ids = pd.Index(frame["id"].astype(str).str.strip())
    if not ids.is_unique:
        raise DatasetError("%s repeats ids" % TOURNAMENT_FILE)
    data_types = frame["data_type"].astype(str).str.strip().to_numpy()
    if not (data_types == "validation").any():
        raise DatasetError("%s has no validation rows" % TOURNAMENT_FILE)
    targets = pd.to_numeric(frame["target"], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(targets[data_types == "validation"]).any():
        raise DatasetError("%s has validation rows without a target" % TOURNAMENT_FILE)
    return Tournament(
        ids=ids,
        data_types=data_types,
        eras=frame["era"].astype(str).to_numpy(),
        targets=targets,
        features=numeric(frame, columns, TOURNAMENT_FILE),
    )


def read_training_features(fileobj):
    """Feature matrix (float32) of the training CSV."""
    header = read_csv(fileobj, TRAINING_FILE, nrows=0)
    columns = feature_columns(header)
    fileobj.seek(0)
    return numeric(read_csv(fileobj, TRAINING_FILE, usecols=columns), columns, TRAINING_FILE)
