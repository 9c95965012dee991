"""Fixtures the crash-at-every-write tests share (test_crash.py, test_notify_crash.py)."""
import numpy as np
import pymongo
import pytest

from queues.files import LocalFiles


@pytest.fixture(scope="module")
def crash_setting(real_mongo_url, round_frames, round_zip, tmp_path_factory):
    """The crash tests' world: ``(client, files, cache folder, tournament frame, round zip)``."""
    folder = tmp_path_factory.mktemp("crash")
    files = LocalFiles(str(folder / "files"))
    files.put_dataset(41, str(round_zip))  # once: its version names the cached clusters
    client = pymongo.MongoClient(real_mongo_url, serverSelectionTimeoutMS=5000)
    yield client, files, str(folder / "cache"), round_frames[1], round_zip
    client.close()


@pytest.fixture(scope="module")
def model_values(round_frames):
    """Two plausible, different prediction vectors (round order), and "scaled 1": a scaled,
    slightly noisy copy of the first, original only under a looser correlation limit."""
    rng = np.random.default_rng(3)
    n = len(round_frames[1])
    base = np.clip(rng.normal(0.5, 0.04, size=n), 0.01, 0.99).round(5)
    other = np.clip(rng.normal(0.5, 0.05, size=n), 0.01, 0.99).round(5)
    noise = np.random.default_rng(5).normal(0, 0.002, n)
    scaled = np.clip(0.5 + 1.5 * (base - 0.5) + noise, 0.01, 0.99).round(5)
    return {1: base, 2: other, "scaled 1": scaled}
