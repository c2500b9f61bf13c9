"""Frozen configuration records. Built once by the CLI; nothing here reads the environment.

Each setting's environment name is derived from its field path, here and nowhere else:
`SESSIONREC_BOOTSTRAP`, `SESSIONREC_TOPICS_EVENTS`, `SESSIONREC_WEIGHTS_VIEW`, ... The
`[kafka]` table holds librdkafka client properties by their documented names; in the
environment a property is `SESSIONREC_KAFKA_` and its name in capitals with `_` for `.`
(`SESSIONREC_KAFKA_SECURITY_PROTOCOL` is `security.protocol`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "SESSIONREC_"
KAFKA_ENV_PREFIX = f"{ENV_PREFIX}KAFKA_"
# Settings whose values are never shown (logs, errors, --help, repr): as a field path, and
# the librdkafka client properties.
SECRET_SETTINGS = frozenset({"api.token", "api.cluster_secret"})
# Client properties whose values are never shown (logs, errors, --help, repr).
SECRET_PROPERTIES = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)


class Secret(str):
    """A setting's value that must never be shown: its repr is masked."""

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics' names."""

    events: str = "events"  # interaction events from the shop, keyed by user_id
    items: str = "items"  # catalog upserts, keyed by item_id (compacted)
    sessions: str = "sessions"  # closed sessions: the nightly training's input
    recommendations: str = "recommendations"  # the workers' answers, keyed by user_id
    dlq: str = "events.dlq"  # events the workers refused, with the reason
    model_updates: str = "model-updates"  # new model versions announced to the workers

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
class TopicConfig:
    """How `sessionrec topics` creates one topic."""

    partitions: int = 0  # partitions of the topic; 0: the `partitions` setting
    # How long the topic keeps messages; 0: the broker's default; -1: forever.
    retention_hours: float = 0.0
    compact: bool = False  # keep the latest message per key (cleanup.policy=compact)


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """Each topic's partitions, retention and compaction, and the replication factor of every
    topic and of the session table's changelog. The defaults suit one local broker; docs/kafka.md
    gives values for a 3-broker cluster."""

    replication_factor: int = 1  # copies of every topic and of the changelog; 3 on a cluster
    events: TopicConfig = field(default_factory=TopicConfig)
    items: TopicConfig = field(default_factory=lambda: TopicConfig(compact=True))
    sessions: TopicConfig = field(default_factory=TopicConfig)
    recommendations: TopicConfig = field(default_factory=TopicConfig)
    dlq: TopicConfig = field(default_factory=TopicConfig)
    model_updates: TopicConfig = field(default_factory=lambda: TopicConfig(partitions=1))


@dataclass(frozen=True, slots=True)
class EventWeights:
    """How much each event type says about interest; negative pushes away."""

    view: float = 0.2  # a view's weight in the session's query and its intents
    cart: float = 0.5  # an add to cart's weight
    buy: float = 1.0  # a purchase's weight (bought items are never recommended back)
    remove_from_cart: float = -0.5  # a removal's weight: negative pushes its intent away

    def of(self, event_type: str) -> float:
        return float(getattr(self, event_type, 0.0))


@dataclass(frozen=True, slots=True)
class QueryDefaults:
    """Query-time parameters; an event may override them with its optional `params` field.
    Each weight is a number from 0 to 100 (`models.ranking.MAX_WEIGHT`), diversity 0 to 1."""

    k: int = 20  # items in a list (at most `limits.max_k`)
    diversity: float = 0.0  # 0 to 1: trade similarity for variety (maximal marginal relevance)
    past_weight: float = 0.3  # how much the user's past intents count beside the session
    exclude_seen: bool = False  # leave out every item of the open session
    # Leave out the item in hand (the latest event's item): a pushed list does not open with
    # the item the user is looking at. The offline protocol (`eval`, `bench quality`) counts
    # it as a candidate like any other.
    exclude_current: bool = True
    name_weight: float = 1.0  # how much the name space counts in the search (0: not at all)
    category_weight: float = 1.0  # how much the category space counts
    brand_weight: float = 1.0  # how much the brand space counts
    price_weight: float = 1.0  # how much the price space counts
    max_intents: int = 3  # intents a session is clustered into, at most
    # How much a retrieved item gains for having followed the session's latest click in the
    # training sessions (its share of that item's successors; models/transitions.py); 0: none.
    transition_weight: float = 0.4
    # How much a retrieved item already in the session gains, times how often the training
    # sessions went back to the item clicked that many steps before the latest
    # (models/transitions.py); the item in hand gains nothing from it; 0: none.
    return_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What a single event's `params` (or the defaults) may ask for: operator caps that bound
    the cost of one answer."""

    max_k: int = 100  # the largest `k` an event or request may ask for
    max_intents: int = 5  # the largest `max_intents` an event or request may ask for
    max_search_depth: int = 500  # items one query may fetch (k, overfetch, bought, seen)


@dataclass(frozen=True, slots=True)
class Api:
    """The workers' HTTP query API (`stream/api.py`)."""

    port: int = 8080  # the API's port; 0: any free port (the worker logs which)
    address: str = "127.0.0.1"  # where it listens; 0.0.0.0 in a container that others call
    # How the other workers reach this one; empty: http://<address or host name>:<port>. In
    # Kubernetes, the pod's IP (see deploy/k8s/worker.yaml).
    url: str = ""
    # When set, every request but /healthz, /readyz and /openapi.json needs
    # "Authorization: Bearer <token>"; the same token on every worker.
    token: str = ""
    # The workers' shared key for a request one forwards to a partition's owner: the request
    # and the owner's answer are signed with it, and the client's token is never forwarded.
    # Empty: derived from `token`; with neither set, forwarded requests are not signed.
    cluster_secret: str = ""
    max_items: int = 200  # events of one ad-hoc session request
    # Users whose latest answer (default parameters) is kept to answer a request without
    # ranking again, while their state and the catalog stay as they were; 0: none.
    cached_answers: int = 20_000


# The HNSW search beam (at least k): higher finds more of the exact top-k, and is slower.
DEFAULT_INDEX_EF = 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, in one frozen object (defaults < TOML < env < flags)."""

    bootstrap: str = "127.0.0.1:9092"  # Kafka's bootstrap servers, comma-separated
    # Partitions of `events` and the session table (the most workers that can share the
    # load), and of the other topics unless [topic_layout] says otherwise.
    partitions: int = 4
    session_gap_minutes: float = 20.0  # inactivity that ends a session
    max_session_len: int = 50  # clicks a session keeps, the latest
    state_ttl_days: float = 30.0  # a user's state (past intents, bought) after the last event
    # The HNSW search beam (at least k): higher finds more of the exact top-k, and is slower.
    index_ef: int = DEFAULT_INDEX_EF
    # Where model versions live: a directory, or a remote store's URL (s3://bucket/prefix).
    model_dir: str = "var/models"
    model_cache: str = "var/model-cache"  # where a worker keeps copies from a remote store
    # Model versions kept in the store (and in a worker's cache): the newest this many, and
    # always the one CURRENT names and its predecessor. Older ones are deleted after each
    # training run (and each copy into a cache). 0: keep every version.
    keep_versions: int = 10
    metrics_port: int = 9100  # the worker's Prometheus metrics port; 0: off
    # Where the metrics port listens; 0.0.0.0 in a container that Prometheus scrapes.
    metrics_address: str = "127.0.0.1"
    worker_group: str = "sessionrec-worker"  # the workers' consumer group (and table prefix)
    # Other workers that keep a copy of each partition's sessions, to take over a lost worker's
    # users without first reading the partition's whole changelog (faust's standby replicas).
    standby_replicas: int = 1
    # A worker that stops without leaving the group (killed, hung, cut off) loses its partitions
    # after this long. 6 is Apache Kafka's smallest by default (group.min.session.timeout.ms).
    session_timeout_s: float = 6.0
    log_format: str = "text"  # text, or json: one JSON object a line
    topics: Topics = field(default_factory=Topics)
    topic_layout: TopicLayout = field(default_factory=TopicLayout)
    weights: EventWeights = field(default_factory=EventWeights)
    query: QueryDefaults = field(default_factory=QueryDefaults)
    limits: Limits = field(default_factory=Limits)
    api: Api = field(default_factory=Api)
    # librdkafka client properties ([kafka] table), sorted by name; secrets are `Secret`s.
    kafka: tuple[tuple[str, str], ...] = ()

    def client_config(
        self, defaults: dict[str, Any] | None = None, **required: Any
    ) -> dict[str, Any]:
        """Properties for a confluent-kafka client: bootstrap, then `defaults`, then the
        [kafka] table (which may override them), then `required` (the client's own: group,
        offsets). Every client the project builds takes its configuration from here."""
        return {
            "bootstrap.servers": self.bootstrap,
            **(defaults or {}),
            **dict(self.kafka),
            **required,
        }

    @property
    def session_gap_ms(self) -> int:
        return int(self.session_gap_minutes * 60_000)


def env_fields(obj: Any = None, prefix: str = ENV_PREFIX) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(environment name, field path) of every setting of `obj` (default: `Settings()`)."""
    obj = obj if obj is not None else Settings()
    for f in dataclasses.fields(obj):
        if f.name == "kafka":  # a table of any client properties: see kafka_env_name
            continue
        name, value = f"{prefix}{f.name.upper()}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            for nested, path in env_fields(value, f"{name}_"):
                yield nested, (f.name, *path)
        else:
            yield name, (f.name,)


def env_names() -> list[str]:
    """Every environment variable the settings read, for `--help` and the docs."""
    return [name for name, _ in env_fields()]


def to_env(settings: Settings) -> dict[str, str]:
    """The SESSIONREC_* variables that reproduce `settings` (e.g. in a child process)."""
    out: dict[str, str] = {}
    for name, path in env_fields(settings):
        value: Any = settings
        for part in path:
            value = getattr(value, part)
        out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    for prop, value in settings.kafka:
        out[kafka_env_name(prop)] = value
    return out


def kafka_env_name(prop: str) -> str:
    """`security.protocol` -> `SESSIONREC_KAFKA_SECURITY_PROTOCOL`."""
    return KAFKA_ENV_PREFIX + prop.replace(".", "_").upper()


def kafka_property(env_name: str) -> str:
    """`SESSIONREC_KAFKA_SECURITY_PROTOCOL` -> `security.protocol` (librdkafka's names use
    dots, never underscores)."""
    return env_name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")


_FIELD = re.compile(r"    (\w+): [^=]+=(.*)$")  # a field of a class body


def field_notes(cls: type) -> dict[str, str]:
    """Each field's comment in this file: the comment lines right above it and the one beside
    it. The one place a setting's meaning is written; the settings reference and the API's
    description read it here."""
    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match:
            beside = match.group(2).partition("  # ")[2].strip()
            notes[match.group(1)] = " ".join([*pending, beside] if beside else pending)
        pending = []
    return notes
