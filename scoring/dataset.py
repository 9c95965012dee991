"""The round's tournament and training data, as arrays.

The dataset zip holds ``numerai_training_data.csv`` and
``numerai_tournament_data.csv`` with columns ``id, era, data_type,
feature*, target``. This module turns those CSVs into the arrays the
rules need and says clearly what is wrong when they are malformed.
"""
import dataclasses

import numpy as np
import pandas as pd

TRAINING_FILE = "numerai_training_data.csv"
TOURNAMENT_FILE = "numerai_tournament_data.csv"
DATA_TYPES = ("validation", "test", "live")


class DatasetError(ValueError):
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


def feature_columns(frame):
    """The columns whose name contains 'feature', in file order."""
    columns = [c for c in frame.columns if "feature" in c]
    if not columns:
        raise DatasetError("no column whose name contains 'feature'")
    return columns


def read_tournament(fileobj):
    """Parse the tournament CSV into a :class:`Tournament`."""
    frame = pd.read_csv(fileobj, dtype={"id": str, "era": str, "data_type": str})
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
        features=frame[columns].to_numpy(dtype=np.float32),
    )


def read_training_features(fileobj):
    """Feature matrix (float32) of the training CSV."""
    header = pd.read_csv(fileobj, nrows=0)
    columns = feature_columns(header)
    fileobj.seek(0)
    return pd.read_csv(fileobj, usecols=columns, dtype=np.float32)[columns].to_numpy()
