"""confluent-kafka client settings shared by the replay, tail, demo and benchmark tools."""

from __future__ import annotations

import threading
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


def ready_messages(consumer: Any, wait_s: float, most: int = 1000) -> list[Any]:
    """The messages ready now, waiting up to `wait_s` for the first one.

    `Consumer.consume(n, timeout)` waits the whole timeout unless n messages arrive, which
    adds up to `timeout` to every message's latency; polling for the first and then taking
    what is already there does not."""
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)]


def produce(producer: Any, topic: str, key: bytes | None, value: bytes) -> None:
    """Produce, waiting for deliveries to drain while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)


class Refused:
    """Collects the messages the broker did not take, from librdkafka's delivery reports, so
    they can be produced again before a batch is acknowledged (at-least-once). Give
    `producer_config(..., **refused.producer_settings())` so only failures are reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: list[tuple[str, bytes | None, bytes, str]] = []

    def producer_settings(self) -> dict[str, Any]:
        return {"on_delivery": self.report, "delivery.report.only.error": True}

    def report(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed.append((msg.topic(), msg.key(), msg.value(), err.str()))

    def take(self) -> list[tuple[str, bytes | None, bytes, str]]:
        with self._lock:
            failed, self._failed = self._failed, []
        return failed
