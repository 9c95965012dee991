"""Prometheus metrics for the operators, on a registry of the app's own.

Every labelled counter is exported at 0 from the start, for every label
value known in advance (each pipeline thread, each endpoint's answers), so
that ``increase()`` sees the first event and an alert can be written on it.
"""
import prometheus_client
from prometheus_client.core import GaugeMetricFamily

from queues.pipeline import STAGES

#: Why a round leaves memory: unused for ROUND_IDLE_SECONDS, over ROUND_MEMORY_MB, its dataset replaced.
EVICTION_REASONS = ("idle", "memory", "replaced")
#: Why the leaderboard's reconciliation repairs an entry (queues.leaderboard.REPAIRS).
REPAIR_REASONS = ("missing", "stale", "verdicts", "duplicate")
#: What became of a webhook delivery attempt (queues.notify).
NOTIFY_OUTCOMES = ("delivered", "retried", "given_up")
#: A delivery attempt takes milliseconds on a healthy network, up to NOTIFY_TIMEOUT (at most 300 s) otherwise.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Stage durations span sub-millisecond checks to first-of-round clustering.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PipelineCollector:
    """Queue depth, oldest age, thread liveness and the database's state, read at scrape time.

    ``database`` returns the state /health reports: "ok", "unavailable (...)"
    or "misconfigured: ..."; without it no database gauges are exported.
    """

    def __init__(self, pipeline, supervisor, database=None):
        self.pipeline = pipeline
        self.supervisor = supervisor
        self.database = database

    def collect(self):
        depth = GaugeMetricFamily("criteria_queue_depth", "Submissions waiting or in work, by queue", labels=["queue"])
        age = GaugeMetricFamily("criteria_queue_oldest_age_seconds", "Age of the oldest submission in a queue", labels=["queue"])
        for stage in STAGES:
            depth.add_metric([stage], self.pipeline.depth(stage))
            age.add_metric([stage], self.pipeline.oldest_age(stage))
        alive = GaugeMetricFamily("criteria_thread_alive", "1 when a pipeline thread is running", labels=["thread"])
        for name, is_alive in self.supervisor.alive().items():
            alive.add_metric([name], 1.0 if is_alive else 0.0)
        families = [depth, age, alive]
        if self.database is not None:
            state = self.database()
            families.append(GaugeMetricFamily("criteria_database_up", "1 when the database answers and accepts "
                                              "the server's credentials", value=1.0 if state == "ok" else 0.0))
            families.append(GaugeMetricFamily("criteria_database_misconfigured", "1 when the database rejects the "
                                              "server's settings (credentials, rights): retrying cannot help",
                                              value=1.0 if state.startswith("misconfigured") else 0.0))
        return families


class RoundsCollector:
    """Memory held by loaded rounds, read at scrape time from ``source()`` (``{competition_id: bytes}``).

    The total is exported from the start, at 0 before any round is loaded
    (or when nothing reports rounds), so a panel or alert can rely on it.
    """

    def __init__(self):
        self.source = None

    def collect(self):
        sizes = self.source() if self.source is not None else {}
        per_round = GaugeMetricFamily("criteria_round_memory_bytes", "Memory held by one loaded round's data "
                                      "(tournament rows, clusters, prepared submissions)", labels=["round"])
        for competition_id, size in sorted(sizes.items()):
            per_round.add_metric([str(competition_id)], size)
        total = GaugeMetricFamily("criteria_rounds_memory_bytes", "Memory held by all loaded rounds' data",
                                  value=sum(sizes.values()))
        return [per_round, total]


class OutboxCollector:
    """Webhook events waiting in the database and the age of the oldest, read at scrape time from
    ``source()`` (``(count, seconds)``); 0 when webhooks are off, so panels and alerts can rely on them."""

    def __init__(self):
        self.source = None

    def collect(self):
        count, age = self.source() if self.source is not None else (0, 0.0)
        return [GaugeMetricFamily("criteria_notifications_pending", "Webhook events recorded and not yet delivered "
                                  "or given up, in the whole database", value=count),
                GaugeMetricFamily("criteria_notifications_oldest_pending_age_seconds", "Age of the oldest webhook "
                                  "event not yet delivered or given up", value=age)]


class Metrics:
    """Counters and histograms the service updates as it works."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        self.stage_seconds = prometheus_client.Histogram(
            "criteria_stage_duration_seconds", "Time to complete a pipeline stage", ["stage"],
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.outcomes = prometheus_client.Counter(
            "criteria_submissions", "Submissions by outcome (done, failed, retried)", ["outcome"], registry=self.registry)
        self.restarts = prometheus_client.Counter(
            "criteria_thread_restarts", "Pipeline threads restarted after dying", ["thread"], registry=self.registry)
        self.requests = prometheus_client.Counter(
            "criteria_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.waiting = prometheus_client.Gauge(
            "criteria_http_waiting_requests", "GET requests waiting (?wait=) for a submission to be judged",
            registry=self.registry)
        self.round_evictions = prometheus_client.Counter(
            "criteria_round_evictions", "Rounds dropped from memory, by reason (idle, memory budget, dataset "
            "replaced)", ["reason"], registry=self.registry)
        self.repairs = prometheus_client.Counter(
            "criteria_leaderboard_repairs", "Leaderboard entries the reconciliation found out of line and repaired, by "
            "reason (missing, stale, verdicts, duplicate)", ["reason"], registry=self.registry)
        self.notifications = prometheus_client.Counter(
            "criteria_notifications", "Webhook delivery attempts by outcome (delivered; retried: failed, tried again "
            "later; given_up: failed after NOTIFY_MAX_AGE)", ["outcome"], registry=self.registry)
        self.delivery_seconds = prometheus_client.Histogram(
            "criteria_notification_delivery_seconds", "Time of one webhook delivery attempt, until the receiver's "
            "answer, a timeout or an error", buckets=DELIVERY_BUCKETS, registry=self.registry)
        self.outbox = OutboxCollector()
        self.registry.register(self.outbox)
        self._answers = {}  # (endpoint, status) -> its request counter, looked up once
        self.rounds = RoundsCollector()
        self.registry.register(self.rounds)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for why in EVICTION_REASONS:
            self.round_evictions.labels(why)
        for outcome in ("done", "failed", "retried"):
            self.outcomes.labels(outcome)
        for why in REPAIR_REASONS:
            self.repairs.labels(why)
        for outcome in NOTIFY_OUTCOMES:
            self.notifications.labels(outcome)

    def watch(self, pipeline, supervisor, database=None):
        """Report the pipeline's queues and threads, and ``database()``'s state, at every scrape."""
        self.registry.register(PipelineCollector(pipeline, supervisor, database))

    def watch_rounds(self, memory):
        """Report ``memory()`` (``{competition_id: bytes}`` of the loaded rounds) at every scrape."""
        self.rounds.source = memory

    def watch_notifications(self, figures):
        """Report ``figures()`` (``(pending webhook events, oldest age in seconds)``) at every scrape."""
        self.outbox.source = figures

    def notification(self, outcome):
        self.notifications.labels(outcome).inc()

    def delivery_timed(self, seconds):
        self.delivery_seconds.observe(seconds)

    def round_evicted(self, why):
        self.round_evictions.labels(why).inc()

    def leaderboard_repaired(self, why, count=1):
        self.repairs.labels(why).inc(count)

    def thread_added(self, name):
        """Export the thread's restart counter at 0 before any restart."""
        self.restarts.labels(name)

    def expect_requests(self, endpoint, statuses):
        """Export the endpoint's request counters at 0 for each status it can answer."""
        for status in statuses:
            self._answers[(endpoint, status)] = self.requests.labels(endpoint, str(status))

    def stage_finished(self, stage, seconds):
        self.stage_seconds.labels(stage).observe(seconds)

    def outcome(self, outcome):
        self.outcomes.labels(outcome).inc()

    def thread_restarted(self, name):
        self.restarts.labels(name).inc()

    def request(self, endpoint, status):
        """Count one answer. Every request comes here, so its counter is found in a dict
        rather than through ``labels`` (which formats and locks on every call)."""
        counter = self._answers.get((endpoint, status))
        if counter is None:  # a status not expected: its counter starts now
            counter = self._answers[(endpoint, status)] = self.requests.labels(endpoint, str(status))
        counter.inc()

    def render(self):
        """The exposition text and its content type."""
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
