"""confluent-kafka client settings shared by the replay, tail, demo and benchmark tools."""

from __future__ import annotations

from typing import Any


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """murmur2 partitioning, as the Java client and faust do, so every producer of a user's
    events (whatever its language) agrees on that user's partition."""
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 2,
        "log_level": 3,
        "partitioner": "murmur2_random",
        **extra,
    }


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    """A consumer that joins fast: a short poll interval bounds the broker's join wait."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "session.timeout.ms": 6000,
        "max.poll.interval.ms": 10000,
        "log_level": 3,
        **extra,
    }


def produce(producer: Any, topic: str, key: bytes | None, value: bytes) -> None:
    """Produce, waiting for deliveries to drain while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)
