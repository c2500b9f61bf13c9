"""Frozen configuration records. Built once by the CLI; nothing here reads the environment."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Topics:
    events: str = "events"
    items: str = "items"
    sessions: str = "sessions"
    recommendations: str = "recommendations"
    dlq: str = "events.dlq"
    model_updates: str = "model-updates"

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.items,
            self.sessions,
            self.recommendations,
            self.dlq,
            self.model_updates,
        )


@dataclass(frozen=True, slots=True)
class EventWeights:
    """How much each event type says about interest; negative pushes away."""

    view: float = 0.2
    cart: float = 0.5
    buy: float = 1.0
    remove_from_cart: float = -0.5

    def of(self, event_type: str) -> float:
        return float(getattr(self, event_type, 0.0))


@dataclass(frozen=True, slots=True)
class QueryDefaults:
    """Query-time parameters; an event may override them with its optional `params` field."""

    k: int = 20
    diversity: float = 0.0
    past_weight: float = 0.3
    exclude_seen: bool = False
    name_weight: float = 1.0
    category_weight: float = 1.0
    brand_weight: float = 1.0
    price_weight: float = 1.0
    max_intents: int = 3


# The HNSW search beam (at least k): higher finds more of the exact top-k, and is slower.
DEFAULT_INDEX_EF = 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, in one frozen object (defaults < TOML < env < flags)."""

    bootstrap: str = "127.0.0.1:9092"
    partitions: int = 4
    session_gap_minutes: float = 20.0
    max_session_len: int = 50
    index_ef: int = DEFAULT_INDEX_EF
    model_dir: str = "var/models"
    metrics_port: int = 9100
    worker_group: str = "sessionrec-worker"
    log_format: str = "text"
    topics: Topics = field(default_factory=Topics)
    weights: EventWeights = field(default_factory=EventWeights)
    query: QueryDefaults = field(default_factory=QueryDefaults)

    @property
    def session_gap_ms(self) -> int:
        return int(self.session_gap_minutes * 60_000)
