"""The operator's view: the Grafana dashboard and the alert rules ask for metrics the worker and
the training job really export, and compose provisions them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sessionrec.stream import metrics as worker_metrics  # registers the worker's metrics
from sessionrec.training import metrics as training_metrics

yaml = pytest.importorskip("yaml")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\bsessionrec_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def _exported(*registries: Any) -> set[str]:
    """Every series name the registries' metrics export (labelled ones too, before any value)."""
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "sessionrec.json").read_text())


def _queries() -> list[str]:
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    return exprs + [r["expr"] for r in rules]


def test_every_query_parses() -> None:
    promql = pytest.importorskip("promql_parser")
    for expr in _queries():
        promql.parse(expr)  # raises on a query Prometheus would refuse


def test_every_query_names_an_exported_metric() -> None:
    # The last success is registered with the first successful run; it is exported after it.
    exported = _exported(REGISTRY, training_metrics.REGISTRY, training_metrics.LAST_SUCCESS)
    assert "sessionrec_dlq_total" in exported and worker_metrics.DLQ  # what the test reads
    named = {name for expr in _queries() for name in NAME.findall(expr)}
    assert named, "no query names a sessionrec metric"
    assert sorted(named - exported) == []


def test_the_dashboard_shows_what_an_operator_asks() -> None:
    text = " | ".join(p["title"].lower() for p in _dashboard()["panels"])
    for topic in (
        "events per second",
        "recommendations per second",
        "latency",
        "consumer lag",
        "dlq by reason",
        "model version",
        "model age",
        "swaps",
        "sessions in memory",
        "training runs",
        "holdout scores",
    ):
        assert topic in text, topic
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_lag_dlq_stale_model_and_no_answers() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert "sessionrec_consumer_lag" in by_name["SessionrecConsumerLag"]["expr"]
    assert "sessionrec_dlq_total" in by_name["SessionrecDLQSpike"]["expr"]
    assert "sessionrec_model_created" in by_name["SessionrecModelStale"]["expr"]
    assert "sessionrec_recommendations_emitted" in by_name["SessionrecNoAnswers"]["expr"]
    assert all(r["annotations"]["summary"] and r["for"] for r in rules)


def test_compose_provisions_grafana_and_the_rules() -> None:
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())["services"]
    mounts = " ".join(compose["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "sessionrec.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["type"] == "prometheus"
    # Every panel and query asks the data source the dashboard's variable names (whatever
    # the uid of the Prometheus it is imported next to); the variable lists Prometheus ones.
    panels = _dashboard()["panels"]
    uids = {p["datasource"]["uid"] for p in panels if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in panels for t in p.get("targets", [])}
    assert uids == {"${datasource}"}
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["prometheus"]["volumes"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    jobs = {j["job_name"] for j in prometheus["scrape_configs"]}
    assert jobs == {"sessionrec-worker", "sessionrec-query", "sessionrec-trainer"}
