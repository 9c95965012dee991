"""Metrics: what an operator's scrape shows, parsed as Prometheus would."""
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queues.metrics import Metrics
from queues.pipeline import CONCORDANCE, DISPATCH, ORIGINALITY, STAGES, Job
from queues.supervisor import Supervisor


def scrape(metrics):
    """``{(sample name, frozenset(labels)): value}`` from the rendered text."""
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def watched(metrics, pipeline, supervisor):
    metrics.watch(pipeline, supervisor)
    return metrics


def test_queue_depth_and_age_per_queue(watched, pipeline):
    samples = scrape(watched)
    for stage in STAGES:
        assert value(samples, "criteria_queue_depth", queue=stage) == 0
        assert value(samples, "criteria_queue_oldest_age_seconds", queue=stage) == 0

    dispatch = Job("a")
    pipeline.put(DISPATCH, dispatch)
    pipeline.put(ORIGINALITY, Job("b", enqueued=time.monotonic() - 42))
    pipeline.put(ORIGINALITY, Job("c"))
    samples = scrape(watched)
    assert value(samples, "criteria_queue_depth", queue=DISPATCH) == 1
    assert value(samples, "criteria_queue_depth", queue=ORIGINALITY) == 2
    assert value(samples, "criteria_queue_depth", queue=CONCORDANCE) == 0
    assert value(samples, "criteria_queue_oldest_age_seconds", queue=DISPATCH) >= 0
    assert 42 <= value(samples, "criteria_queue_oldest_age_seconds", queue=ORIGINALITY) < 100
    assert value(samples, "criteria_queue_oldest_age_seconds", queue=CONCORDANCE) == 0

    pipeline.done(DISPATCH, dispatch)
    assert value(scrape(watched), "criteria_queue_depth", queue=DISPATCH) == 0


def test_stage_duration_histogram(metrics):
    metrics.stage_finished(CONCORDANCE, 0.003)
    metrics.stage_finished(CONCORDANCE, 0.2)
    metrics.stage_finished(DISPATCH, 45)
    samples = scrape(metrics)
    name = "criteria_stage_duration_seconds"
    assert value(samples, name + "_count", stage=CONCORDANCE) == 2
    assert value(samples, name + "_sum", stage=CONCORDANCE) == pytest.approx(0.203)
    assert value(samples, name + "_bucket", stage=CONCORDANCE, le="0.0025") == 0
    assert value(samples, name + "_bucket", stage=CONCORDANCE, le="0.005") == 1
    assert value(samples, name + "_bucket", stage=CONCORDANCE, le="0.25") == 2
    assert value(samples, name + "_count", stage=DISPATCH) == 1
    assert value(samples, name + "_bucket", stage=DISPATCH, le="30.0") == 0
    assert value(samples, name + "_bucket", stage=DISPATCH, le="60.0") == 1
    # every stage is reported from the start, at zero
    assert value(samples, name + "_count", stage=ORIGINALITY) == 0


def test_outcome_counters(metrics):
    samples = scrape(metrics)
    for outcome in ("done", "failed", "retried"):
        assert value(samples, "criteria_submissions_total", outcome=outcome) == 0
    metrics.outcome("done")
    metrics.outcome("done")
    metrics.outcome("failed")
    samples = scrape(metrics)
    assert value(samples, "criteria_submissions_total", outcome="done") == 2
    assert value(samples, "criteria_submissions_total", outcome="failed") == 1
    assert value(samples, "criteria_submissions_total", outcome="retried") == 0


def test_request_and_restart_counters(metrics):
    metrics.request("/", 200)
    metrics.request("/", 200)
    metrics.request("/", 401)
    metrics.thread_restarted("originality-1")
    samples = scrape(metrics)
    assert value(samples, "criteria_http_requests_total", endpoint="/", status="200") == 2
    assert value(samples, "criteria_http_requests_total", endpoint="/", status="401") == 1
    assert value(samples, "criteria_thread_restarts_total", thread="originality-1") == 1


def test_expected_and_unexpected_answers_count_on_their_own_counters(metrics):
    """Counters are looked up once and kept: each (endpoint, status) still counts on its own."""
    metrics.expect_requests("/", (202, 401))
    for status in (202, 202, 401, 418, 418, 418):
        metrics.request("/", status)
    metrics.request("/health", 202)
    samples = scrape(metrics)
    assert value(samples, "criteria_http_requests_total", endpoint="/", status="202") == 2
    assert value(samples, "criteria_http_requests_total", endpoint="/", status="401") == 1
    assert value(samples, "criteria_http_requests_total", endpoint="/", status="418") == 3
    assert value(samples, "criteria_http_requests_total", endpoint="/health", status="202") == 1
    untouched = scrape(Metrics())  # another instance keeps counters of its own
    assert ("criteria_http_requests_total", frozenset({"endpoint": "/", "status": "202"}.items())) not in untouched


def test_thread_alive_gauges_follow_the_supervisor(metrics, pipeline):
    supervisor = Supervisor(pipeline.stop, metrics, check_interval=3600)
    supervisor.add("dispatcher", pipeline.stop.wait)
    metrics.watch(pipeline, supervisor)
    assert value(scrape(metrics), "criteria_thread_alive", thread="supervisor") == 0

    supervisor.start()
    try:
        samples = scrape(metrics)
        assert value(samples, "criteria_thread_alive", thread="dispatcher") == 1
        assert value(samples, "criteria_thread_alive", thread="supervisor") == 1
    finally:
        assert supervisor.stop(5) == []
    samples = scrape(metrics)
    assert value(samples, "criteria_thread_alive", thread="dispatcher") == 0
    assert value(samples, "criteria_thread_alive", thread="supervisor") == 0


def test_instances_do_not_share_a_registry(pipeline, supervisor):
    first, second = Metrics(), Metrics()  # a shared default registry would refuse the second
    first.outcome("done")
    first.stage_finished(DISPATCH, 1.0)
    first.watch(pipeline, supervisor)
    pipeline.put(DISPATCH, Job("a"))
    assert value(scrape(first), "criteria_submissions_total", outcome="done") == 1
    samples = scrape(second)
    assert value(samples, "criteria_submissions_total", outcome="done") == 0
    assert value(samples, "criteria_stage_duration_seconds_count", stage=DISPATCH) == 0
    assert not any(name == "criteria_queue_depth" for name, _ in samples)


def test_restart_counters_exist_at_zero_before_any_restart(metrics, pipeline):
    """``increase(criteria_thread_restarts_total[...])`` needs a sample before the first restart."""
    supervisor = Supervisor(pipeline.stop, metrics, check_interval=3600)
    for name in ("dispatcher", "concordance", "originality-0"):
        supervisor.add(name, pipeline.stop.wait)
    samples = scrape(metrics)
    for name in ("dispatcher", "concordance", "originality-0"):
        assert value(samples, "criteria_thread_restarts_total", thread=name) == 0
    metrics.thread_restarted("concordance")
    assert value(scrape(metrics), "criteria_thread_restarts_total", thread="concordance") == 1


def test_request_counters_exist_at_zero_for_every_answer_an_endpoint_gives(store, pipeline, config, supervisor, metrics):
    from queues.app import ANSWERS, create_app
    client = create_app(store, pipeline, config, supervisor, metrics).test_client()
    samples = scrape(metrics)
    for endpoint, statuses in ANSWERS.items():
        for status in statuses:
            assert value(samples, "criteria_http_requests_total", endpoint=endpoint, status=str(status)) == 0
    assert client.post("/", json={}).status_code == 401
    assert value(scrape(metrics), "criteria_http_requests_total", endpoint="/", status="401") == 1


@pytest.mark.parametrize("state, up, misconfigured", [
    ("ok", 1, 0),
    ("unavailable (ServerSelectionTimeoutError)", 0, 0),
    ("misconfigured: MongoDB rejected the server's credentials", 0, 1),
])
def test_database_gauges_follow_the_health_state(metrics, pipeline, supervisor, state, up, misconfigured):
    metrics.watch(pipeline, supervisor, database=lambda: state)
    samples = scrape(metrics)
    assert value(samples, "criteria_database_up") == up
    assert value(samples, "criteria_database_misconfigured") == misconfigured
