"""The wiring: what build_service starts, and what a stop hands back."""
import logging

import mongomock
import pymongo.errors

from queues import service, store
from queues.config import Config


def test_a_failure_to_create_indexes_is_logged(caplog, monkeypatch, tmp_path):
    def refused(self):
        raise pymongo.errors.OperationFailure("not authorized on numerai to execute command { createIndexes }", code=13)
    monkeypatch.setattr(store.Store, "ensure_indexes", refused)
    config = Config(api_key="k", local=True, local_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                    originality_threads=1)
    app, stop = service.build_service(config, lambda: mongomock.MongoClient().numerai)
    try:
        (line,) = [r.getMessage() for r in caplog.records if "indexes" in r.getMessage()]
        assert "Unauthorized" in line and "MONGO_DB_NAME" in line
        assert app.test_client().get("/metrics").status_code == 200
    finally:
        assert stop() == []




# -- stopping says what it hands back ----------------------------------------------------------
class Stub:
    """Stands in for the supervisor, store, pipeline and rescorer at a stop."""

    def __init__(self, tokens=(), driving=(), fail=False):
        self.driving = set(driving)
        self.released = []
        self._tokens, self.fail = set(tokens), fail

    def stop(self, timeout):
        return []

    def tokens(self):
        return set(self._tokens)

    def release(self, tokens=None):
        if self.fail:
            raise pymongo.errors.AutoReconnect("connection closed")
        self.released.append(tokens)
        return 2 * len(tokens or ())  # an intake token is shared by its batch: two submissions each


def test_a_stop_says_how_many_leases_and_runs_it_hands_back(caplog):
    caplog.set_level(logging.INFO)
    config = Config(api_key="k", stop_timeout=1, lease_seconds=30)
    parts = Stub(tokens=["t1", "t2", "t3"], driving=[41])
    assert service.stop(parts, parts, parts, config, parts) == []
    assert parts.released == [{"t1", "t2", "t3"}, None]
    assert caplog.records[-1].getMessage() == ("handed back to recovery: 6 submission leases and 1 re-score run; "
                                               "another server, or the next start, takes them at once")
    idle = Stub()
    service.stop(idle, idle, idle, config, idle)
    assert caplog.records[-1].getMessage() == "handed back to recovery: 0 submission leases and 0 re-score runs"
    away = Stub(tokens=["t1"], fail=True)
    service.stop(away, away, away, config, away)
    assert caplog.records[-1].getMessage() == ("could not hand back the leases of 1 job and 0 re-score runs "
                                               "(AutoReconnect); they expire in 30s")
