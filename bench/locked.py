"""mongomock behind one lock, for the benchmarks' multi-threaded service.

mongomock is not thread-safe (an ``aggregate`` copying a document while
another thread updates it raises "dictionary changed size during
iteration"), whereas the service's threads share one database as they
would share a MongoDB server. This wrapper runs every operation under one
lock and materialises cursors inside it, so the benchmarks measure the
service on a database that answers one operation at a time. Because
operations are serialised, the time spent inside them (``busy``) is the
database's share of a run.
"""
import threading
import time


class Clock:
    """Seconds spent inside the lock, summed."""

    def __init__(self):
        self.lock = threading.RLock()
        self.busy = 0.0

    def __enter__(self):
        self.lock.acquire()
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.busy += time.perf_counter() - self.started
        self.lock.release()


class Results(list):
    """A materialised cursor; ``sort`` is the only cursor method the store uses."""

    def __init__(self, documents, lock):
        super().__init__(documents)
        self._lock = lock

    def sort(self, key, direction=1):
        return Results(sorted(self, key=lambda doc: doc.get(key), reverse=direction < 0), self._lock)


class LockedCollection:
    def __init__(self, collection, lock):
        self._collection = collection
        self._lock = lock

    def __getattr__(self, name):
        method = getattr(self._collection, name)

        def locked(*args, **kwargs):
            with self._lock:
                answer = method(*args, **kwargs)
                if name in ("find", "aggregate"):
                    answer = Results(answer, self._lock)
                return answer
        return locked


class LockedDatabase:
    """A mongomock Database whose collections share one lock (and its clock)."""

    @property
    def busy(self):
        """Seconds spent inside database operations so far."""
        return self._lock.busy

    def __init__(self, db):
        self._db = db
        self._lock = Clock()

    def __getattr__(self, name):
        if name == "command":
            def command(*args, **kwargs):
                with self._lock:
                    return self._db.command(*args, **kwargs)
            return command
        return LockedCollection(getattr(self._db, name), self._lock)

    def __getitem__(self, name):
        return LockedCollection(self._db[name], self._lock)
