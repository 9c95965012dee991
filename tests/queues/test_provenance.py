"""Provenance: the scorer's version from git, the server's name, the fields written with a verdict."""
import dataclasses
import datetime
import os
import socket
import subprocess

import pytest

import scoring
from queues import provenance
from queues.provenance import Provenance, scorer_version, server_name
from scoring.rules import Rules


def run_git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                   check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    """A git work tree with one commit; returns (root, commit)."""
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "rules.txt").write_text("one\n")
    run_git(root, "init", "-q")
    run_git(root, "add", "rules.txt")
    run_git(root, "commit", "-q", "-m", "first")
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return root, commit


def test_version_of_a_clean_checkout_names_the_commit(checkout):
    root, commit = checkout
    assert len(commit) == 40
    assert scorer_version(str(root)) == "%s+git.%s" % (scoring.__version__, commit)


def test_local_changes_are_marked_dirty(checkout):
    root, commit = checkout
    (root / "rules.txt").write_text("two\n")
    assert scorer_version(str(root)) == "%s+git.%s.dirty" % (scoring.__version__, commit)
    (root / "new.txt").write_text("untracked files do not change what runs from tracked ones\n")
    (root / "rules.txt").write_text("one\n")
    assert scorer_version(str(root)) == "%s+git.%s" % (scoring.__version__, commit)


def test_no_git_checkout_gives_the_package_version(tmp_path, monkeypatch):
    assert scorer_version(str(tmp_path)) == scoring.__version__
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # a broken work tree: git cannot answer
    assert scorer_version(str(tmp_path)) == scoring.__version__


def test_missing_git_program_gives_the_package_version(checkout, monkeypatch):
    root, _ = checkout
    monkeypatch.setenv("PATH", str(root))  # no git here
    assert scorer_version(str(root)) == scoring.__version__


def test_this_checkout_is_read_once_at_start(monkeypatch):
    calls = []
    real = provenance.git
    monkeypatch.setattr(provenance, "git", lambda *args: calls.append(args) or real(*args))
    made = Provenance.current()
    read = len(calls)
    for _ in range(3):
        made.fields("consistency", {}, type("R", (), {"version": "v"})(), Rules())
    assert len(calls) == read
    assert made.scorer.startswith(scoring.__version__)


def test_server_name():
    assert server_name("judge-eu-1") == "judge-eu-1"
    assert server_name("") == "%s:%d" % (socket.gethostname(), os.getpid())


def test_fields_written_with_a_verdict():
    rules = Rules(concordance_threshold=0.1)
    rnd = type("Round", (), {"version": "etag-123"})()
    found = {"concordant": True, "mean": 0.05}
    fields = Provenance("1.1.0+git.abc", "judge-1").fields("concordance", found, rnd, rules)
    judged = fields.pop("provenance.judged_at.concordance")
    assert isinstance(judged, datetime.datetime) and judged.tzinfo is None
    assert fields == {
        "evidence.concordance": found,
        "provenance.scorer_version": "1.1.0+git.abc",
        "provenance.rules": dataclasses.asdict(rules),
        "provenance.dataset_version": "etag-123",
        "provenance.server": "judge-1",
        "provenance.judged_by.concordance": {"server": "judge-1", "scorer_version": "1.1.0+git.abc",
                                             "dataset_version": "etag-123"},  # what this check was judged on
    }
