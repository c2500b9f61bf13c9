"""Small producer/consumer helpers for integration tests (named timeouts, no sleeps to tune)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer

from sessionrec.models.codec import encode
from sessionrec.models.config import Api, Settings, Topics
from sessionrec.models.records import Event, Item

CONSUME_IDLE_S = 20.0


def unique_settings(bootstrap: str, tag: str, model_dir: str, partitions: int = 4) -> Settings:
    topics = Topics(
        events=f"events-{tag}",
        items=f"items-{tag}",
        sessions=f"sessions-{tag}",
        recommendations=f"recs-{tag}",
        dlq=f"dlq-{tag}",
        model_updates=f"updates-{tag}",
    )
    return Settings(
        bootstrap=bootstrap,
        partitions=partitions,
        topics=topics,
        model_dir=model_dir,
        metrics_port=0,
        worker_group=f"worker-{tag}",
        api=Api(port=0),
    )


def producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 2}
    )


def produce(
    settings: Settings,
    events: Iterable[Event],
    raw: Iterable[bytes] = (),
    delivered: list[tuple[int, int, bytes]] | None = None,
    keyed: Iterable[tuple[bytes | None, Event]] = (),
) -> int:
    """Produce events (keyed by user), raw values and `keyed` events (with the key given) to
    `events`; fails unless the broker acknowledged every one. `delivered` gets each message's
    (partition, offset, value) as the broker reported."""
    p = producer(settings.bootstrap)
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.key()!r}: {err}")
        elif delivered is not None:
            delivered.append((msg.partition(), msg.offset(), msg.value()))

    n = 0
    for e in events:
        p.produce(
            settings.topics.events, key=e.user_id.encode(), value=encode(e), on_delivery=report
        )
        p.poll(0)
        n += 1
    for value in raw:
        p.produce(settings.topics.events, key=b"garbage", value=value, on_delivery=report)
        n += 1
    for key, e in keyed:
        p.produce(settings.topics.events, key=key, value=encode(e), on_delivery=report)
        n += 1
    assert p.flush(30) == 0
    assert not errors, f"{len(errors)} events refused by the broker: {errors[:3]}"
    return n


def produce_items(settings: Settings, items: Iterable[Item]) -> None:
    p = producer(settings.bootstrap)
    for item in items:
        p.produce(settings.topics.items, key=item.item_id.encode(), value=encode(item))
    assert p.flush(30) == 0


def consume(
    bootstrap: str,
    topic: str,
    until: Callable[[list[bytes]], bool],
    idle_s: float = CONSUME_IDLE_S,
    group: str | None = None,
) -> list[bytes]:
    """Read `topic` from the beginning until `until(values)` holds or nothing came for idle_s."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"t-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    values: list[bytes] = []
    last = time.monotonic()
    try:
        while not until(values) and time.monotonic() - last < idle_s:
            for msg in c.consume(2000, 0.5):
                if not msg.error() and msg.value() is not None:
                    values.append(msg.value())
                    last = time.monotonic()
    finally:
        c.close()
    return values
