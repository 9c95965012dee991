"""Rounds: each round loaded once, clusters fitted once and kept on disk, prepared submissions."""
import collections
import dataclasses
import glob
import io
import os
import threading
import zipfile

import numpy as np
import pytest

from queues import demo
from queues.errors import MissingFile
from queues.rounds import Rounds
from scoring import concordance, evidence, originality
from scoring.dataset import TOURNAMENT_FILE, TRAINING_FILE, DatasetError
from scoring.prepared import PreparedRound
from scoring.submission import SubmissionError, parse_submission

ROUND = 41


class Counting:
    """Wraps ``files`` and counts (thread-safely) calls to each method, and the most at once."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = collections.Counter()
        self.running = collections.Counter()
        self.most_at_once = collections.Counter()
        self.lock = threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self.inner, name)

        def call(*args, **kwargs):
            with self.lock:
                self.calls[name] += 1
                self.running[name] += 1
                self.most_at_once[name] = max(self.most_at_once[name], self.running[name])
            try:
                return attr(*args, **kwargs)
            finally:
                with self.lock:
                    self.running[name] -= 1
        return call


@pytest.fixture
def counting(files):
    return Counting(files)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def quick_fit(training_features, tournament_features, rules):
    """Stands in for K-Means where only *whether* it runs matters: labels that depend on the settings."""
    rows = np.arange(len(tournament_features))
    return ((rows * rules.concordance_seed) % rules.concordance_clusters).astype(np.int8)


@pytest.fixture
def fits(monkeypatch):
    """Count clustering fits (a quick stand-in; test_groups_fit_once_and_are_saved runs the real K-Means)."""
    calls = []

    def fit(training_features, tournament_features, rules):
        calls.append(rules)
        assert training_features.shape[1] == tournament_features.shape[1]
        return quick_fit(training_features, tournament_features, rules)
    monkeypatch.setattr(concordance, "fit_clusters", fit)
    return calls


def same_groups(a, b):
    assert sorted(a) == sorted(b)
    for cluster in a:
        assert sorted(a[cluster]) == sorted(b[cluster])
        for data_type in a[cluster]:
            np.testing.assert_array_equal(a[cluster][data_type], b[cluster][data_type])


# -- loading ---------------------------------------------------------------------------
def test_get_loads_a_round_once(counting, cache, rules, round_frames):
    rounds = Rounds(counting, cache, rules, PreparedRound)
    rnd = rounds.get(ROUND)
    assert rounds.get(ROUND) is rnd
    assert rounds.get(str(ROUND)) is rnd
    assert counting.calls["dataset"] == 1
    tournament = round_frames[1]
    assert list(rnd.tournament.ids) == list(tournament["id"])
    assert list(rnd.tournament.data_types) == list(tournament["data_type"])
    assert rnd.competition_id == ROUND
    assert rnd.version == counting.inner.dataset_version(ROUND)
    assert isinstance(rnd.index, PreparedRound) and len(rnd.index) == 0


def test_concurrent_gets_load_once(counting, cache, rules):
    rounds = Rounds(counting, cache, rules, PreparedRound)
    threads = 8
    barrier = threading.Barrier(threads)
    got = [None] * threads

    def get(i):
        barrier.wait()
        got[i] = rounds.get(ROUND)

    workers = [threading.Thread(target=get, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert all(rnd is got[0] for rnd in got) and got[0] is not None
    assert counting.calls["dataset"] == 1
    assert counting.most_at_once["dataset"] == 1


def test_different_rounds_are_loaded_separately(files, counting, cache, rules, round_zip):
    files.put_dataset(42, str(round_zip))
    rounds = Rounds(counting, cache, rules, PreparedRound)
    assert rounds.get(41) is not rounds.get(42)
    assert rounds.get(42).competition_id == 42
    assert counting.calls["dataset"] == 2


def test_a_failed_load_is_not_cached(files, counting, cache, rules, round_zip):
    rounds = Rounds(counting, cache, rules, PreparedRound)
    with pytest.raises(MissingFile, match="no dataset"):
        rounds.get(42)
    with pytest.raises(MissingFile):
        rounds.get(42)
    assert counting.calls["dataset"] == 2  # tried again, not remembered as failed
    files.put_dataset(42, str(round_zip))
    assert rounds.get(42).competition_id == 42


def write_zip(path, members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_a_zip_without_the_tournament_file(files, rounds, tmp_path, round_frames):
    training = round_frames[0].to_csv(index=False)
    files.put_dataset(43, write_zip(tmp_path / "partial.zip", {TRAINING_FILE: training}))
    with pytest.raises(DatasetError, match=TOURNAMENT_FILE):
        rounds.get(43)
    # fixed by uploading the complete dataset
    files.put_dataset(43, write_zip(tmp_path / "full.zip", {TRAINING_FILE: training,
                                                             TOURNAMENT_FILE: round_frames[1].to_csv(index=False)}))
    assert len(rounds.get(43).tournament.ids) == len(round_frames[1])


def test_a_dataset_that_is_not_a_zip(files, rounds, tmp_path):
    path = tmp_path / "junk.zip"
    path.write_bytes(b"<html>Access denied</html>")
    files.put_dataset(44, str(path))
    with pytest.raises(DatasetError, match="not a valid zip"):
        rounds.get(44)


# -- clusters ----------------------------------------------------------------------------
@pytest.fixture
def real_fits(monkeypatch):
    """Count K-Means fits, fitting for real."""
    calls = []
    real = concordance.fit_clusters

    def fit(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(concordance, "fit_clusters", fit)
    return calls


def test_groups_fit_once_and_are_saved(rounds, cache, real_fits, round_frames):
    fits = real_fits
    rnd = rounds.get(ROUND)
    groups = rounds.groups(rnd)
    assert rounds.groups(rnd) is groups
    assert len(fits) == 1
    saved = glob.glob(os.path.join(cache, "clusters", "*.npy"))
    assert len(saved) == 1
    labels = np.load(saved[0])
    assert len(labels) == len(round_frames[1])
    # the groups are the labels split by data type
    same_groups(groups, concordance.cluster_groups(labels, rnd.tournament.data_types))
    covered = np.sort(np.concatenate([idx for by_type in groups.values() for idx in by_type.values()]))
    np.testing.assert_array_equal(covered, np.arange(len(round_frames[1])))


def test_two_servers_sharing_the_cache_save_one_rounds_labels_at_once(files, cache, rules, fits, monkeypatch):
    """Servers on one machine share the cache folder: labels saved in the middle of another's save are no error.

    The second server fits and saves while the first has written its labels
    but not yet moved them into place (threads stand in for the processes).
    """
    second = Rounds(files, cache, rules, PreparedRound)
    found = {}
    real_replace = os.replace

    def replace_after_the_other(source, target):
        if threading.current_thread() is threading.main_thread() and "second" not in found:
            other = threading.Thread(target=lambda: found.setdefault("second", second.groups(second.get(ROUND))))
            other.start()
            other.join()
        real_replace(source, target)
    monkeypatch.setattr(os, "replace", replace_after_the_other)
    first = Rounds(files, cache, rules, PreparedRound)
    groups = first.groups(first.get(ROUND))
    assert len(fits) == 2
    same_groups(found["second"], groups)
    assert [os.path.basename(p) for p in glob.glob(os.path.join(cache, "clusters", "*"))] == \
           [os.path.basename(first._cluster_path(first.get(ROUND)))]  # no partial copy left behind


def test_a_restart_reads_the_labels_back_without_fitting(files, cache, rules, rounds, fits, monkeypatch):
    first = rounds.groups(rounds.get(ROUND))
    assert len(fits) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("fitted again instead of reading the saved labels")
    monkeypatch.setattr(concordance, "fit_clusters", refuse)
    restarted = Rounds(files, cache, rules, PreparedRound)
    same_groups(restarted.groups(restarted.get(ROUND)), first)


def test_a_new_dataset_version_is_clustered_again(files, cache, rules, rounds, fits, tmp_path):
    rounds.groups(rounds.get(ROUND))
    assert len(fits) == 1
    training, tournament = demo.make_round(seed=8, features=6, train_rows=800, validation_eras=4,
                                           validation_rows=800, test_rows=800, live_rows=400)
    replacement = tmp_path / "replacement.zip"
    replacement.write_bytes(demo.dataset_zip(training, tournament))
    old_version = files.dataset_version(ROUND)
    files.put_dataset(ROUND, str(replacement))
    stat = os.stat(files.dataset_path(ROUND))
    os.utime(files.dataset_path(ROUND), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert files.dataset_version(ROUND) != old_version

    restarted = Rounds(files, cache, rules, PreparedRound)
    restarted.groups(restarted.get(ROUND))
    assert len(fits) == 2
    assert len(glob.glob(os.path.join(cache, "clusters", "*.npy"))) == 2


@pytest.mark.parametrize("change", [{"concordance_seed": 7}, {"concordance_clusters": 3}])
def test_changed_clustering_rules_do_not_reuse_labels(files, cache, rules, rounds, fits, change):
    rounds.groups(rounds.get(ROUND))
    other = Rounds(files, cache, dataclasses.replace(rules, **change), PreparedRound)
    groups = other.groups(other.get(ROUND))
    assert len(fits) == 2
    assert fits[-1] == dataclasses.replace(rules, **change)  # fitted with the new settings
    if "concordance_clusters" in change:
        assert len(groups) <= change["concordance_clusters"]
    # the original settings still find their own labels
    again = Rounds(files, cache, rules, PreparedRound)
    again.groups(again.get(ROUND))
    assert len(fits) == 2


def npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", [
    lambda raw: raw[: len(raw) // 2],
    lambda raw: b"not a numpy file at all",
    lambda raw: npy(np.zeros(10, dtype=np.int8)),  # a valid array of the wrong length
], ids=["cut-short", "garbage", "wrong-length"])
def test_damaged_saved_labels_are_recomputed(files, cache, rules, rounds, fits, damage):
    first = rounds.groups(rounds.get(ROUND))
    (saved,) = glob.glob(os.path.join(cache, "clusters", "*.npy"))
    with open(saved, "rb") as handle:
        raw = handle.read()
    with open(saved, "wb") as handle:
        handle.write(damage(raw))
    restarted = Rounds(files, cache, rules, PreparedRound)
    same_groups(restarted.groups(restarted.get(ROUND)), first)
    assert len(fits) == 2


def test_an_empty_saved_labels_file_is_recomputed(files, cache, rules, rounds, fits):
    first = rounds.groups(rounds.get(ROUND))
    (saved,) = glob.glob(os.path.join(cache, "clusters", "*.npy"))
    open(saved, "wb").close()
    restarted = Rounds(files, cache, rules, PreparedRound)
    same_groups(restarted.groups(restarted.get(ROUND)), first)


# -- predictions and the originality index -----------------------------------------------------
@pytest.fixture
def uploaded(files, round_frames, model):
    values = model(3)
    raw = demo.submission_csv(round_frames[1]["id"], values, seed=5)
    files.put_submission("alice", "p.csv", raw)
    return values, raw


def test_predictions_are_the_parsed_file_in_round_order(rounds, uploaded):
    values, raw = uploaded
    rnd = rounds.get(ROUND)
    predictions = rounds.predictions(rnd, "alice", "p.csv")
    np.testing.assert_array_equal(predictions, parse_submission(raw, rnd.tournament.ids))
    np.testing.assert_allclose(predictions, values)


def test_predictions_of_a_bad_or_missing_file(files, rounds, round_frames):
    rnd = rounds.get(ROUND)
    files.put_submission("bob", "short.csv", demo.submission_csv(round_frames[1]["id"][:10], np.full(10, 0.5)))
    with pytest.raises(SubmissionError):
        rounds.predictions(rnd, "bob", "short.csv")
    with pytest.raises(MissingFile):
        rounds.predictions(rnd, "bob", "gone.csv")


def test_prepare_adds_to_the_index_once(counting, cache, rules, uploaded):
    values, raw = uploaded
    rounds = Rounds(counting, cache, rules, PreparedRound)
    rnd = rounds.get(ROUND)
    rounds.prepare(rnd, "s1", "alice", "p.csv")
    rounds.prepare(rnd, "s1", "alice", "p.csv")
    assert counting.calls["submission"] == 1
    assert "s1" in rnd.index and len(rnd.index) == 1
    assert rnd.sources["s1"] == ("alice", "p.csv")
    # the index holds exactly the parsed predictions: an identical copy is not original
    assert rnd.index.is_original(parse_submission(raw, rnd.tournament.ids), ["s1"], rules) is False


def test_prepare_with_values_does_not_read_the_file(counting, cache, rules, model):
    rounds = Rounds(counting, cache, rules, PreparedRound)
    rnd = rounds.get(ROUND)
    rounds.prepare(rnd, "s2", "carol", "never-uploaded.csv", values=model(4))
    assert counting.calls["submission"] == 0
    assert "s2" in rnd.index


# -- originality against others whose files fail when read again -------------------------------------
def precise_file(ids, values):
    """Every digit of float64 values: the index cannot rebuild them from its float32 copy."""
    return ("id,probability\n" + "".join("%s,%r\n" % (i, float(v)) for i, v in zip(ids, values))).encode()


@pytest.mark.parametrize("how", ["deleted", "broken", "changed"])
def test_compare_leaves_out_a_file_that_fails_when_read_again(files, cache, rules, round_frames, model, how):
    """fetch_exact raising for one other submission: that one is dropped from the index and left out with
    its reason, and the evidence is exactly the plain rule's over the submissions that counted."""
    ids = round_frames[1]["id"]
    rng = np.random.default_rng(11)
    rounds = Rounds(files, cache, rules, lambda fetch_exact: PreparedRound(fetch_exact, grid_points=1))
    rnd = rounds.get(ROUND)
    others, values = [], {}
    made = {"alice": np.clip(model(1) + rng.normal(scale=1e-9, size=len(ids)), 0, 1),
            "bob": rng.random(len(ids)), "carol": rng.beta(2, 5, size=len(ids))}  # unlike alice's
    for name in ["alice", "bob", "carol"]:
        files.put_submission(name, "p.csv", precise_file(ids, made[name]))
        values[name] = rounds.predictions(rnd, name, "p.csv")
        others.append({"submission_id": "s-" + name, "username": name, "filename": "p.csv", "created": None})
        rounds.prepare(rnd, "s-" + name, name, "p.csv")
    candidate = values["alice"] + rng.normal(scale=1e-7, size=len(ids))  # a near copy of alice's
    assert originality.is_original(candidate, list(values.values()), rules) is False
    if how == "deleted":
        os.remove(files.submission_path("alice", "p.csv"))
    elif how == "broken":
        files.put_submission("alice", "p.csv", b"id,probability\n")
    else:
        files.put_submission("alice", "p.csv", precise_file(ids, rng.random(len(ids))))
    found, left_out = rounds.compare(rnd, "s-cand", candidate, others, rules)
    reasons = {"deleted": "not in storage", "broken": "no predictions", "changed": "changed after"}
    assert [(o["submission_id"], o["username"]) for o in left_out] == [("s-alice", "alice")]
    assert reasons[how] in left_out[0]["reason"]
    assert "s-alice" not in rnd.index and "s-alice" not in rnd.sources
    counted = [("s-bob", values["bob"]), ("s-carol", values["carol"])]
    assert found == evidence.originality_evidence(candidate, counted, rules)
    assert found["original"] is originality.is_original(candidate, [v for _, v in counted], rules) is True


def test_compare_waits_for_a_late_file_and_leaves_out_what_cannot_arrive(files, cache, rules, model):
    import datetime
    from queues.errors import LateFile
    submitted = datetime.datetime(2026, 5, 1, 12, 0)
    now = [submitted + datetime.timedelta(seconds=59)]
    rounds = Rounds(files, cache, rules, PreparedRound, late_file_seconds=60, now=lambda: now[0])
    rnd = rounds.get(ROUND)
    late = {"submission_id": "s-late", "username": "mallory", "filename": "p.csv", "created": submitted}
    nameless = {"submission_id": "s-nameless", "username": "oscar", "filename": None, "created": submitted}
    with pytest.raises(LateFile, match="mallory's s-late"):
        rounds.compare(rnd, "s-cand", model(1), [late, nameless], rules)
    now[0] = submitted + datetime.timedelta(seconds=60)
    found, left_out = rounds.compare(rnd, "s-cand", model(1), [late, nameless], rules)
    assert found["compared"] == 0 and found["original"] is True
    assert [o["submission_id"] for o in left_out] == ["s-late", "s-nameless"]
    assert "not in storage" in left_out[0]["reason"] and "no filename" in left_out[1]["reason"]


# -- memory: idle rounds leave, a budget bounds the rest, held rounds stay -----------------------------
class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def ticks():
    return Ticks()


@pytest.fixture
def three_rounds(files, round_zip):
    for competition_id in (42, 43):
        files.put_dataset(competition_id, str(round_zip))
    return (41, 42, 43)


def evictions(metrics, why):
    return metrics.round_evictions.labels(why)._value.get()


def test_the_memory_budget_drops_the_least_recently_used_round(files, cache, rules, ticks, metrics, three_rounds):
    one = Rounds(files, cache, rules, PreparedRound).get(41).nbytes
    rounds = Rounds(files, cache, rules, PreparedRound, memory_bytes=int(2.5 * one), clock=ticks, metrics=metrics,
                    version_check_seconds=10 ** 6)
    first = rounds.get(41)
    ticks.now = 1
    rounds.get(42)
    ticks.now = 2
    assert rounds.get(41) is first  # 41 is now more recently used than 42
    ticks.now = 3
    rounds.get(43)
    assert sorted(rounds.memory()) == [41, 43]
    assert evictions(metrics, "memory") == 1 and evictions(metrics, "idle") == 0
    ticks.now = 3.5
    assert rounds.get(41) is first  # kept, not reloaded
    ticks.now = 4
    assert rounds.get(42) is not None and sorted(rounds.memory()) == [41, 42]  # 43 was the oldest use now
    assert sum(rounds.memory().values()) <= rounds.memory_bytes


def test_a_held_round_is_never_dropped_and_keeps_working_once_dropped(files, cache, rules, ticks, metrics,
                                                                       three_rounds, model):
    rounds = Rounds(files, cache, rules, PreparedRound, memory_bytes=1, clock=ticks, metrics=metrics,
                    idle_seconds=60, version_check_seconds=10 ** 6)
    with rounds.hold(41) as held:
        rounds.prepare(held, "s1", "alice", "a.csv", values=model(1))
        ticks.now = 1
        rounds.get(42)  # over the budget: 42 itself is kept while returned, 41 is held
        assert 41 in rounds.memory()
        ticks.now = 1000
        assert rounds.evict_idle() == [42]  # idle, and not held
        assert 41 in rounds.memory()
    ticks.now = 2000
    rounds.evict_idle()
    assert 41 not in rounds.memory()
    # whoever still has the dropped object can finish with it
    assert held.index.is_original(model(1), ["s1"], rules) is False
    assert rounds.get(41) is not held and "s1" not in rounds.get(41).index  # loaded afresh on demand


def test_idle_rounds_leave_memory_on_the_injected_clock(files, cache, rules, ticks, metrics, three_rounds):
    rounds = Rounds(files, cache, rules, PreparedRound, idle_seconds=600, clock=ticks, metrics=metrics,
                    version_check_seconds=10 ** 6)
    rounds.get(41)
    ticks.now = 300
    rounds.get(42)
    ticks.now = 599.5
    assert rounds.evict_idle() == []
    ticks.now = 600
    assert rounds.evict_idle() == [41]
    assert sorted(rounds.memory()) == [42]
    ticks.now = 900
    assert rounds.evict_idle() == [42] and rounds.memory() == {}
    assert evictions(metrics, "idle") == 2


def test_round_memory_is_exported(files, cache, rules, metrics, model):
    from tests.queues.test_metrics import scrape, value
    samples = scrape(metrics)
    assert value(samples, "criteria_rounds_memory_bytes") == 0
    for why in ("idle", "memory", "replaced"):
        assert value(samples, "criteria_round_evictions_total", reason=why) == 0
    rounds = Rounds(files, cache, rules, PreparedRound, metrics=metrics)
    rnd = rounds.get(ROUND)
    before = value(scrape(metrics), "criteria_round_memory_bytes", round=str(ROUND))
    assert before == rnd.nbytes > rnd.tournament.features.nbytes
    rounds.prepare(rnd, "s1", "alice", "a.csv", values=model(1))
    samples = scrape(metrics)
    assert value(samples, "criteria_round_memory_bytes", round=str(ROUND)) == rnd.nbytes > before
    assert value(samples, "criteria_rounds_memory_bytes") == rnd.nbytes


# -- a replaced dataset is noticed by its version ----------------------------------------------------
def replace_dataset(files, tmp_path, training, tournament):
    """Put another dataset in place, its version surely different (mtime moved on)."""
    old = files.dataset_version(ROUND)
    path = tmp_path / ("replacement-%s.zip" % old)
    path.write_bytes(demo.dataset_zip(training, tournament))
    files.put_dataset(ROUND, str(path))
    stat = os.stat(files.dataset_path(ROUND))
    os.utime(files.dataset_path(ROUND), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert files.dataset_version(ROUND) != old


def test_a_replaced_dataset_is_noticed_within_the_check_interval(counting, cache, rules, ticks, metrics, files,
                                                                  tmp_path, round_frames):
    rounds = Rounds(counting, cache, rules, PreparedRound, clock=ticks, metrics=metrics, version_check_seconds=5)
    old = rounds.get(ROUND)
    training, tournament = round_frames
    shuffled = tournament.sample(frac=1, random_state=3).reset_index(drop=True)
    replace_dataset(files, tmp_path, training, shuffled)
    ticks.now = 4.9
    assert rounds.get(ROUND) is old and counting.calls["dataset_version"] == 0  # no HEAD within the interval
    ticks.now = 5
    new = rounds.get(ROUND)
    assert new is not old and new.version == files.dataset_version(ROUND) != old.version
    assert list(new.tournament.ids) == list(shuffled["id"]) and len(new.index) == 0
    assert evictions(metrics, "replaced") == 1
    ticks.now = 6
    assert rounds.get(ROUND) is new and counting.calls["dataset_version"] == 1
    ticks.now = 10
    assert rounds.get(ROUND) is new and counting.calls["dataset_version"] == 2  # unchanged: kept
