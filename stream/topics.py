"""Topic definitions and idempotent creation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from models.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics sessionrec uses; `items` is compacted (latest upsert per item wins)."""
    t, p = settings.topics, settings.partitions
    return [
        TopicSpec(t.events, p),
        TopicSpec(t.items, p, (("cleanup.policy", "compact"),)),
        TopicSpec(t.sessions, p),
        TopicSpec(t.recommendations, p),
        TopicSpec(t.dlq, p),
        TopicSpec(t.model_updates, 1),
    ]


def create_topics(settings: Settings, specs: list[TopicSpec], timeout_s: float = 15.0) -> list[str]:
    """Create missing topics; existing ones are left as they are. Returns the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # untyped re-export

    admin = AdminClient(settings.client_config())
    new = [NewTopic(s.name, s.partitions, 1, config=dict(s.config)) for s in specs]
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
