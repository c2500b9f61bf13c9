"""Produce events and items to Kafka with the project's codecs, optionally at a fixed rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..models.codec import encode
from ..models.config import Settings
from ..models.records import Event, Item
from .kafka import produce, producer_config


def produce_items(
    settings: Settings,
    topic: str,
    items: Iterable[Item],
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Produce catalog items keyed by item id; `on_sent(n)` after each. Returns how many."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings))
    n = 0
    for item in items:
        produce(producer, topic, item.item_id.encode(), encode(item))
        producer.poll(0)
        n += 1
        if on_sent is not None:
            on_sent(n)
    left = producer.flush(30)
    if left:
        raise ValueError(f"{left} of {n} items were not delivered to {topic} within 30 s")
    return n


def produce_events(
    settings: Settings,
    topic: str,
    events: Iterable[Event],
    rate: float | None = None,
    on_sent: object = None,
) -> int:
    """Produce events keyed by user id; `rate` is events per second (None: as fast as it can)."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings))
    start = time.perf_counter()
    n = 0
    for event in events:
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        produce(producer, topic, event.user_id.encode(), encode(event))
        producer.poll(0)
        n += 1
        if callable(on_sent):
            on_sent(n)
    producer.flush(30)
    return n
