"""What the training job tells Prometheus, in a registry of its own (the worker's are in
`stream.metrics`): runs by outcome, when the last run and the last good run ended, how long the
last one took, its holdout scores and cases, and the version it made.

A scheduled job (`sessionrec train --every ...`) serves them on `--metrics-port` while it runs;
a job that ends after one run (a Kubernetes CronJob) pushes them to a Pushgateway
(`--pushgateway URL`) when it ends. A push that fails is logged; the run's outcome stands.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, push_to_gateway
from prometheus_client import start_http_server as _serve

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
RUNS = Counter(
    "sessionrec_training_runs_total",
    "Training runs by outcome: promoted (the new version is CURRENT), kept (significantly "
    "worse on the holdout, so not promoted), failed",
    ["outcome"],
    registry=REGISTRY,
)
LAST_RUN = Gauge(
    "sessionrec_training_last_run_timestamp_seconds",
    "When the last training run ended (Unix time)",
    registry=REGISTRY,
)
# Registered with the first run that makes a version: before it there is no such time, and a
# 0 would read as "failing since 1970" to an alert on its age.
LAST_SUCCESS = Gauge(
    "sessionrec_training_last_success_timestamp_seconds",
    "When the last training run that made a version ended (Unix time; absent before the first)",
    registry=None,
)
DURATION = Gauge(
    "sessionrec_training_duration_seconds",
    "How long the last run that made a version took, loading and evaluating included",
    registry=REGISTRY,
)
HOLDOUT = Gauge(
    "sessionrec_training_holdout_score",
    "The last new version's score on the held-out latest sessions, in percent",
    ["metric"],
    registry=REGISTRY,
)
HOLDOUT_CASES = Gauge(
    "sessionrec_training_holdout_cases",
    "Prefix -> next-item cases in the last run's holdout",
    registry=REGISTRY,
)
VERSION = Info(
    "sessionrec_training_version",
    "The version the last run made, and whether it was promoted",
    registry=REGISTRY,
)
DATA = Gauge(
    "sessionrec_training_data",
    "What the last run read: sessions (of two events or more), their events, catalog items",
    ["kind"],
    registry=REGISTRY,
)
DATA_SPAN = Gauge(
    "sessionrec_training_data_timestamp_seconds",
    "The first and the last session start the last run read (Unix time)",
    ["edge"],
    registry=REGISTRY,
)
REJECTED = Gauge(
    "sessionrec_training_rejected_rows",
    "Rows, records and sessions the last run refused, by reason",
    ["reason"],
    registry=REGISTRY,
)
SCORES = ("recall_at_20", "mrr_at_20", "recall_at_10", "mrr_at_10", "recall_at_5", "mrr_at_5")


def observe(run: dict[str, Any] | None) -> None:
    """Record a run: its metrics as `run_once` returns them, or None for a failed run."""
    now = time.time()
    LAST_RUN.set(now)
    if run is None:
        RUNS.labels("failed").inc()
        return
    RUNS.labels("promoted" if run["promoted"] else "kept").inc()
    LAST_SUCCESS.set(now)
    with contextlib.suppress(ValueError):  # registered by an earlier run
        REGISTRY.register(LAST_SUCCESS)
    DURATION.set(run["seconds"])
    VERSION.info({"version": run["version"], "promoted": str(run["promoted"]).lower()})
    holdout = run.get("holdout") or {}
    for name in SCORES:
        if name in holdout:
            HOLDOUT.labels(name).set(holdout[name])
    HOLDOUT_CASES.set(holdout.get("cases", 0))


def observe_data(
    sessions: int,
    events: int,
    items: int,
    rejected: dict[str, int],
    first_ts: int | None,
    last_ts: int | None,
) -> None:
    """Record what a run read (before it trains: a run that fails later still shows it)."""
    DATA.labels("sessions").set(sessions)
    DATA.labels("events").set(events)
    DATA.labels("catalog_items").set(items)
    REJECTED.clear()  # reasons of an earlier run that this one did not meet
    for reason, n in rejected.items():
        REJECTED.labels(reason).set(n)
    for edge, ts in (("first", first_ts), ("last", last_ts)):
        if ts is not None:
            DATA_SPAN.labels(edge).set(ts / 1000)


def serve(port: int, address: str) -> None:
    """Expose the training metrics on `address`:`port` (0: not served)."""
    if port:
        _serve(port, addr=address, registry=REGISTRY)
        log.info("training metrics on http://%s:%d/metrics", address, port)


def push(gateway: str | None, job: str = "sessionrec-train") -> None:
    """Push the training metrics to a Pushgateway (None: nothing to do); a failure is logged."""
    if not gateway:
        return
    try:
        push_to_gateway(gateway, job=job, registry=REGISTRY, timeout=10)
    except Exception as exc:  # the run is done either way; the gateway is only told about it
        log.warning("could not push the training metrics to %s: %s", gateway, exc)
