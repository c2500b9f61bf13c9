"""Prometheus metrics of a worker, served on `metrics_port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

EVENTS = Counter("sessionrec_events_total", "Events read from the events topic", ["outcome"])
EMITTED = Counter("sessionrec_recommendations_emitted_total", "Recommendation messages sent")
UNKNOWN = Counter("sessionrec_unknown_items_total", "Events whose item the model does not know")
SESSIONS = Counter("sessionrec_sessions_closed_total", "Sessions closed and sent to sessions")
ODDITIES = Counter(
    "sessionrec_oddities_total",
    "Handled, but worth a look: late (an event too old to place in a session), key_mismatch "
    "(message key is not the event's user), bad_state (a stored state unreadable, restarted)",
    ["kind"],
)
DUPLICATES = Counter(
    "sessionrec_duplicates_dropped_total", "Messages a partition delivered again, dropped"
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
LAG = Gauge("sessionrec_consumer_lag", "Events not yet processed, per partition", ["partition"])
INDEX_SIZE = Gauge("sessionrec_index_items", "Items live in the index")
MODEL = Info("sessionrec_model", "The model version being served")
MODEL_SWAPS = Counter("sessionrec_model_swaps_total", "Model versions swapped in")
MODEL_REFUSED = Counter("sessionrec_model_refused_total", "Model versions refused as unusable")
ITEMS = Counter("sessionrec_item_upserts_total", "Catalog upserts applied to the live index")


def serve(port: int) -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port)
