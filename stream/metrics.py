"""Prometheus metrics of a worker, served on `metrics_port`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

EVENTS = Counter("sessionrec_events_total", "Events read from the events topic", ["outcome"])
DLQ = Counter(
    "sessionrec_dlq_total",
    "Events sent to the dead-letter topic, by what was wrong with them (stream.pipeline.dlq_kind)",
    ["reason"],
)
EMITTED = Counter("sessionrec_recommendations_emitted_total", "Recommendation messages sent")
UNKNOWN = Counter(
    "sessionrec_unknown_items_total", "Events whose item is not in the catalog (unknown or deleted)"
)
EXPIRED = Counter(
    "sessionrec_states_expired_total", "Users' states deleted after state_ttl_days without events"
)
USERS = Gauge("sessionrec_users_in_memory", "Users whose state this worker holds")
SESSIONS = Counter("sessionrec_sessions_closed_total", "Sessions closed and sent to sessions")
ODDITIES = Counter(
    "sessionrec_oddities_total",
    "Handled, but worth a look: late (an event too old to place in a session), bad_state "
    "(a stored state unreadable, restarted)",
    ["kind"],
)
DUPLICATES = Counter(
    "sessionrec_duplicates_dropped_total", "Messages a partition delivered again, dropped"
)
OUTPUTS_DROPPED = Counter(
    "sessionrec_outputs_dropped_total",
    "Output messages dropped as undeliverable (e.g. larger than the broker takes), per topic",
    ["topic"],
)
REDELIVERED = Counter(
    "sessionrec_outputs_redelivered_total",
    "Output messages the broker refused and that were sent again",
)
LATENCY = Histogram(
    "sessionrec_end_to_end_latency_seconds",
    "Event produced (Kafka timestamp) to its recommendation sent",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
BATCH = Histogram(
    "sessionrec_batch_size",
    "Events per processed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
)
API_REQUESTS = Counter(
    "sessionrec_api_requests_total",
    "Query API requests answered here (forwarded ones are counted by the worker that answered "
    "them too), per route and status",
    ["route", "status"],
)
API_LATENCY = Histogram(
    "sessionrec_api_request_seconds",
    "Query API request received to answer ready, per route",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0),
)
LAG = Gauge("sessionrec_consumer_lag", "Events not yet processed, per partition", ["partition"])
INDEX_SIZE = Gauge("sessionrec_index_items", "Items live in the index")
MODEL = Info("sessionrec_model", "The model version being served")
MODEL_CREATED = Gauge(
    "sessionrec_model_created_timestamp_seconds",
    "When the served model version was made (Unix time; 0: none served or not recorded)",
)
MODEL_SWAPS = Counter("sessionrec_model_swaps_total", "Model versions swapped in")
WATCHER_UP = Gauge(
    "sessionrec_watcher_up",
    "1 while the watcher follows items, model-updates and CURRENT; 0 after a failure until it "
    "has started again",
)
WATCHER_ERRORS = Counter("sessionrec_watcher_errors_total", "Failures the watcher restarted after")
MODEL_REFUSED = Counter("sessionrec_model_refused_total", "Model versions refused as unusable")
MODEL_FETCH_FAILED = Counter(
    "sessionrec_model_fetch_failed_total", "Failed reads of the remote model store (retried)"
)
ITEMS = Counter("sessionrec_item_upserts_total", "Catalog upserts applied to the live index")
LOOP_LAG = Histogram(
    "sessionrec_event_loop_lag_seconds",
    "How late the event loop woke a task sleeping LOOP_PROBE_S: time it spent on other work",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LOOP_LAG_MAX = Gauge(
    "sessionrec_event_loop_lag_max_seconds",
    "The longest event-loop lag in the last LOOP_WINDOW_S seconds",
)
LOOP_PROBE_S = 0.05
LOOP_WINDOW_S = 5.0
ITEMS_FAILED = Counter(
    "sessionrec_item_upserts_failed_total", "Catalog upserts the live index could not take"
)


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Expose /metrics on `address`:`port` (port 0 disables)."""
    if port:
        start_http_server(port, addr=address)


def observe_model(serving: Any) -> None:
    """The served model's version and index size (`serving`: a ServingModel or None)."""
    MODEL.info({"version": serving.version if serving is not None else "none"})
    MODEL_CREATED.set(_created(serving.model.manifest) if serving is not None else 0.0)
    INDEX_SIZE.set(len(serving.index) if serving is not None else 0)


async def probe_loop() -> None:
    """Measure, forever, how late the event loop wakes a sleeping task: a stall of the loop
    (work that should not run on it) shows here before anywhere else."""
    recent: deque[tuple[float, float]] = deque()  # (when, lag), the last LOOP_WINDOW_S
    while True:
        due = time.monotonic() + LOOP_PROBE_S
        await asyncio.sleep(LOOP_PROBE_S)
        now = time.monotonic()
        late = max(0.0, now - due)
        LOOP_LAG.observe(late)
        recent.append((now, late))
        while recent[0][0] < now - LOOP_WINDOW_S:
            recent.popleft()
        LOOP_LAG_MAX.set(max(lag for _, lag in recent))


def observe_batch(batch: list[Any]) -> None:
    """A finished batch of `Incoming`: its size and each event's produce-to-answer latency."""
    now = time.time()
    BATCH.observe(len(batch))
    for msg in batch:
        if msg.produced_ms:
            LATENCY.observe(max(0.0, now - msg.produced_ms / 1000.0))


def observe_lag(positions: dict[int, int], highwater: Callable[[int], int | None]) -> None:
    """Each partition's lag: its high watermark minus the offset after the last event
    answered (`positions`)."""
    for partition, position in positions.items():
        high = highwater(partition)
        if high is not None:
            LAG.labels(str(partition)).set(max(0, int(high) - position))


def forget_lag(partitions: set[int]) -> None:
    """No lag shown for partitions given away (another worker shows theirs)."""
    for partition in partitions:
        with contextlib.suppress(KeyError):  # never shown here
            LAG.remove(str(partition))


class BatchStats:
    """Rolling figures for the periodic log line: events, batches, compute and publish time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events = self.batches = 0
        self.compute_s = self.publish_s = self.age_ms_sum = 0.0
        self.aged = 0
        self.since = time.monotonic()

    def ingest(self, batch: list[Any]) -> None:
        """How old a batch's `Incoming` events are when it starts (produced -> picked up)."""
        now_ms = time.time() * 1000
        ages = [now_ms - m.produced_ms for m in batch if m.produced_ms]
        if ages:
            self.age_ms_sum += sum(ages)
            self.aged += len(ages)

    def add(self, events: int, compute_s: float, publish_s: float) -> None:
        self.events += events
        self.batches += 1
        self.compute_s += compute_s
        self.publish_s += publish_s

    def line(self) -> str:
        span = max(time.monotonic() - self.since, 1e-9)
        b = max(self.batches, 1)
        return (
            f"{self.events / span:,.0f} events/s over {span:.0f}s: {self.batches} batches "
            f"(mean {self.events / b:.0f} events), compute {1000 * self.compute_s / b:.1f} "
            f"ms/batch, publish {1000 * self.publish_s / b:.1f} ms/batch, picked up "
            f"{self.age_ms_sum / max(self.aged, 1):.1f} ms after produce"
        )


def observe_request(route: str, status: int, seconds: float) -> None:
    """One query API request: `route` is its path template (unknown paths: "other")."""
    API_REQUESTS.labels(route, str(status)).inc()
    API_LATENCY.labels(route).observe(seconds)


def _created(manifest: dict[str, Any]) -> float:
    """A manifest's `created` time (ISO 8601) as Unix time; 0 if it has none that parses."""
    try:
        return datetime.fromisoformat(str(manifest["created"])).timestamp()
    except (KeyError, ValueError):
        return 0.0
