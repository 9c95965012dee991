"""ops/: the Prometheus alert rules and the Grafana dashboard shipped for operators.

The rules must load in Prometheus (``promtool check rules``) and fire when
they should (``promtool test rules ops/alerts.test.yml``); every query of
the rules and of the dashboard must name metrics a real server exports,
read from a real Metrics instance's /metrics text, not from a list here.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queues.app import create_app, database_status
from queues.config import Config
from queues.metrics import Metrics
from queues.pipeline import Pipeline
from queues.supervisor import Supervisor

OPS = Path(__file__).resolve().parents[1] / "ops"
RULES = OPS / "alerts.yml"
RULE_TESTS = OPS / "alerts.test.yml"
DASHBOARD = OPS / "grafana-dashboard.json"
METRIC = re.compile(r"\bcriteria_[a-z_]+\b")
#: Series Prometheus itself makes, which a rule may use beside the server's.
PROMETHEUS_OWN = {"up"}


@pytest.fixture(scope="module")
def exported():
    """Every sample name a fully wired server exports, from its rendered /metrics."""
    import mongomock

    from queues.store import Store
    store = Store(mongomock.MongoClient().numerai)
    pipeline = Pipeline()
    metrics = Metrics()
    supervisor = Supervisor(pipeline.stop, metrics)
    supervisor.add("dispatcher", pipeline.stop.wait)
    metrics.watch(pipeline, supervisor, lambda: database_status(store))
    create_app(store, pipeline, Config(api_key="k"), supervisor, metrics)
    text, _ = metrics.render()
    names = {sample.name for family in text_string_to_metric_families(text.decode()) for sample in family.samples}
    assert {"criteria_queue_depth", "criteria_thread_restarts_total", "criteria_database_up"} <= names
    return names


def promtool(*args):
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=OPS)


def test_alert_rules_load_in_prometheus():
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rules_fire_when_they_should():
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def rule_expressions():
    yaml = pytest.importorskip("yaml", reason="PyYAML (installed with moto) reads the rules file")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_the_alerts_the_readme_asks_for_are_there(exported):
    expressions = rule_expressions()
    named = {metric for expr in expressions.values() for metric in METRIC.findall(expr)}
    for metric in ("criteria_queue_oldest_age_seconds", "criteria_submissions_total",
                   "criteria_thread_restarts_total", "criteria_database_up"):
        assert metric in named, "no alert on %s" % metric


def test_every_alert_names_only_exported_metrics(exported):
    for alert, expr in rule_expressions().items():
        metrics = set(METRIC.findall(expr))
        assert metrics, "%s names no metric of the server: %s" % (alert, expr)
        assert metrics <= exported, "%s names metrics the server does not export: %s" % (alert, metrics - exported)


def dashboard_queries():
    """(where, query) for every panel target and templating query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    found = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # rows hold panels
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append(("panel %r" % panel["title"], target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            found.append(("variable %r" % variable["name"], query["query"] if isinstance(query, dict) else query))
    return board, found


def test_the_dashboard_is_grafana_json_with_queries(exported):
    board, queries = dashboard_queries()
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert len(queries) >= 8


def test_every_dashboard_query_names_metrics_the_server_exports(exported):
    board, queries = dashboard_queries()
    shown = set()
    for where, query in queries:
        metrics = set(METRIC.findall(query))
        assert metrics, "%s queries no metric of the server: %s" % (where, query)
        assert metrics <= exported, "%s queries metrics the server does not export: %s" % (where, metrics - exported)
        shown |= metrics
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in exported}
    missing = {family for family in families if not any(name.startswith(family) for name in shown)}
    assert not missing, "the dashboard shows nothing of %s" % sorted(missing)
