"""Topic definitions, idempotent creation, and what differs in topics that already exist."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..models.config import Settings, TopicConfig

log = logging.getLogger(__name__)
HOUR_MS = 3_600_000
SESSION_TABLE = "user-sessions"  # the worker's faust table; its changelog is named after it


def changelog_topic(settings: Settings) -> str:
    """The session table's changelog topic, as faust names it."""
    return f"{settings.worker_group}-{SESSION_TABLE}-changelog"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()
    replication_factor: int = 1


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics sessionrec uses, as `settings.topic_layout` describes them (by default
    `items` is compacted: the latest upsert per item wins)."""
    layout = settings.topic_layout
    return [
        _spec(name, getattr(layout, field), settings)
        for field, name in zip(
            ("events", "items", "sessions", "recommendations", "dlq", "model_updates"),
            settings.topics.all(),
            strict=True,
        )
    ]


def _spec(name: str, topic: TopicConfig, settings: Settings) -> TopicSpec:
    config: dict[str, str] = {}
    if topic.compact:
        # With a retention, compaction also deletes what is older than it.
        config["cleanup.policy"] = "compact,delete" if topic.retention_hours > 0 else "compact"
    if topic.retention_hours:
        retention = -1 if topic.retention_hours < 0 else round(topic.retention_hours * HOUR_MS)
        config["retention.ms"] = str(retention)
    return TopicSpec(
        name,
        topic.partitions or settings.partitions,
        tuple(sorted(config.items())),
        settings.topic_layout.replication_factor,
    )


def create_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 15.0) -> list[str]:
    """Create missing topics; existing ones are left as they are (see `topic_differences`).
    Returns the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # untyped re-export

    admin = AdminClient(settings.client_config())
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in specs
    ]
    created: list[str] = []
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("topics: created %s, %d already existed", created or "none", len(specs) - len(created))
    return created


def topic_differences(
    settings: Settings, specs: list[TopicSpec], timeout_s: float = 15.0
) -> list[str]:
    """For each existing topic whose partitions, replication factor, cleanup policy or
    retention differ from its spec, a line saying what it has and what the settings ask for.
    Nothing is changed: partitions can only grow, and a topic's key -> partition mapping
    changes when they do, so that is the operator's call."""
    from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]  # untyped re-export

    admin = AdminClient(settings.client_config())
    topics = admin.list_topics(timeout=timeout_s).topics
    existing = [s for s in specs if s.name in topics]
    resources = [ConfigResource("topic", s.name) for s in existing]
    configs: dict[str, dict[str, str]] = {}
    if resources:
        for resource, future in admin.describe_configs(
            resources, request_timeout=timeout_s
        ).items():
            entries = future.result(timeout=timeout_s)
            configs[resource.name] = {k: str(v.value) for k, v in entries.items()}
    out: list[str] = []
    for spec in existing:
        partitions = topics[spec.name].partitions
        replicas = min((len(p.replicas) for p in partitions.values()), default=0)
        has = configs.get(spec.name, {})
        found = _differences(spec, len(partitions), replicas, has)
        out.extend(f"topic '{spec.name}': {line}" for line in found)
    for line in out:
        log.warning("%s", line)
    return out


def _differences(spec: TopicSpec, partitions: int, replicas: int, has: dict[str, str]) -> list[str]:
    out = []
    if partitions != spec.partitions:
        out.append(f"{partitions} partitions, the settings ask for {spec.partitions}")
    if replicas != spec.replication_factor:
        out.append(f"replication factor {replicas}, the settings ask for {spec.replication_factor}")
    want = dict(spec.config)
    policy = has.get("cleanup.policy", "delete")
    if _policy(policy) != _policy(want.get("cleanup.policy", "delete")):
        out.append(
            f"cleanup.policy {policy}, the settings ask for {want.get('cleanup.policy', 'delete')}"
        )
    if "retention.ms" in want and has.get("retention.ms") != want["retention.ms"]:
        out.append(
            f"retention.ms {has.get('retention.ms', 'unset')}, the settings ask for "
            f"{want['retention.ms']}"
        )
    return out


def _policy(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def partition_problem(settings: Settings, timeout_s: float = 15.0) -> str | None:
    """Why a worker must not start with these partitions (None: nothing). A state is written
    to the changelog partition of its user's events partition, and faust restores a worker's
    users from the changelog partitions of the events partitions it owns: the three counts
    (`events`, the `partitions` setting, the changelog) must agree. Topics not created yet
    are not checked."""
    from confluent_kafka.admin import AdminClient

    topics = AdminClient(settings.client_config()).list_topics(timeout=timeout_s).topics
    events, changelog = settings.topics.events, changelog_topic(settings)
    found = {name: len(topics[name].partitions) for name in (events, changelog) if name in topics}
    if events in found and found[events] != settings.partitions:
        return (
            f"topic '{events}' has {found[events]} partitions but the setting 'partitions' is "
            f"{settings.partitions}: set partitions = {found[events]} (the session table is "
            "partitioned as events)"
        )
    if changelog in found and found[changelog] != settings.partitions:
        return (
            f"the session changelog '{changelog}' has {found[changelog]} partitions but "
            f"'{events}' has {settings.partitions}: grow it to {settings.partitions} (users "
            "whose events moved to another partition start new sessions; docs/kafka.md)"
        )
    return None


GONE_CHECKS = 2  # consecutive checks a topic seen before must be missing to count as gone


class TopicsGone(RuntimeError):
    """Topics a running worker had read from are gone from the broker; the message says so in
    one line."""


class TopicWatch:
    """Notices topics that this process has seen on the broker and that are gone from it since:
    an embedded broker restarted keeps nothing (memory storage); on Apache Kafka, a topic
    deleted by hand. A broker that cannot be asked is not taken as an answer."""

    def __init__(self, settings: Settings, names: list[str]):
        from confluent_kafka.admin import AdminClient

        from .kafka import LIBRDKAFKA_LOG

        self.settings = settings
        self.names = names
        self.admin = AdminClient(settings.client_config({"log_level": 3, "logger": LIBRDKAFKA_LOG}))
        self.seen: set[str] = set()
        self.misses = 0

    def check(self, timeout_s: float = 10.0) -> str | None:
        """Why the worker must stop (a topic it had is gone), or None."""
        from confluent_kafka import KafkaException

        try:
            topics = self.admin.list_topics(timeout=timeout_s).topics
        except KafkaException:
            return None  # the broker is down or unreachable: its clients log that
        present = {n for n in self.names if n in topics and topics[n].error is None}
        self.seen |= present
        gone = sorted(self.seen - present)
        self.misses = self.misses + 1 if gone else 0
        if self.misses < GONE_CHECKS:
            return None
        return (
            f"topic '{gone[0]}' is gone from the broker at {self.settings.bootstrap} (an embedded "
            "broker keeps nothing when it restarts): create the topics ('sessionrec topics') and "
            "start the worker again"
        )
