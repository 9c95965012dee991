"""Runs the pipeline threads, restarts any that die, and stops them all together.

Every thread runs a ``loop`` that returns when the shared stop event is
set. The supervisor's own loop checks once a second that each is alive
and starts a new one in place of any that died, the way huey's consumer
health check does.
"""
import logging
import threading
import time

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0


class Supervisor:
    """Named loops on threads, kept alive until ``stop``."""

    def __init__(self, stop, metrics=None, check_interval=CHECK_INTERVAL):
        self.stop_event = stop
        self.metrics = metrics
        self.check_interval = check_interval
        self._loops = {}
        self._threads = {}
        self._watcher = None

    def add(self, name, loop):
        """Register ``loop`` (a callable that returns when stop is set) as ``name``."""
        self._loops[name] = loop
        if self.metrics is not None:
            self.metrics.thread_added(name)

    def _spawn(self, name):
        thread = threading.Thread(target=self._loops[name], name=name, daemon=True)
        thread.start()
        self._threads[name] = thread

    def start(self):
        """Start every loop and the watcher."""
        for name in self._loops:
            self._spawn(name)
        self._watcher = threading.Thread(target=self.loop, name="supervisor", daemon=True)
        self._watcher.start()

    def check(self):
        """Restart any loop whose thread has died; return the names restarted."""
        restarted = []
        for name, thread in list(self._threads.items()):
            if not thread.is_alive() and not self.stop_event.is_set():
                log.error("thread %s died; starting a new one", name)
                if self.metrics is not None:
                    self.metrics.thread_restarted(name)
                self._spawn(name)
                restarted.append(name)
        return restarted

    def loop(self):
        while not self.stop_event.wait(self.check_interval):
            self.check()

    def alive(self):
        """``{name: bool}`` for every loop, plus the watcher itself."""
        status = {name: thread.is_alive() for name, thread in self._threads.items()}
        status["supervisor"] = bool(self._watcher and self._watcher.is_alive())
        return status

    def stop(self, timeout):
        """Set the stop flag and join every thread within ``timeout`` seconds in all.

        Returns the names of threads still busy at the deadline; their work
        stays recorded as unfinished and is picked up by the next start.
        """
        log.info("stopping the pipeline (up to %.0fs for work in progress)", timeout)
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        busy = []
        for name, thread in list(self._threads.items()) + [("supervisor", self._watcher)]:
            if thread is None:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                busy.append(name)
        if busy:
            log.warning("stopped with %s still working; recovery will finish their submissions", ", ".join(busy))
        return busy
