"""Read a Kafka topic from its beginning to its current end (for training from topics)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..models.config import Settings


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> Iterator[bytes]:
    """The topic's values from its beginning to its end as they were when it started; a
    broker that cannot be reached within `timeout_s` is a one-line ValueError."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    bootstrap = settings.bootstrap
    consumer = Consumer(
        settings.client_config(
            {"log_level": 3},
            **{
                "group.id": f"sessionrec-train-{topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise ValueError(
                f"cannot read topic {topic!r} from Kafka at {bootstrap} within {timeout_s:g} s "
                f"({exc.args[0].str()})"
            ) from None
        if meta is None or meta.error is not None:
            raise ValueError(f"topic {topic!r} does not exist at {bootstrap}")
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                partition, offset, value = msg.partition(), msg.offset(), msg.value()
                if partition is None or offset is None:
                    continue
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                if value is not None:
                    yield value
    finally:
        consumer.close()
