"""`make demo`: the pipeline end to end on the embedded broker, stopping by itself."""

from __future__ import annotations

import dataclasses
import time

from models.codec import DecodeError, decode_event
from models.config import Settings
from models.records import Event
from models.session import SessionConfig, sessionize
from models.shop import make_shop
from stream.broker import EmbeddedBroker
from stream.kafka import consumer_config
from stream.replay import produce_events, produce_items
from stream.topics import create_topics, topic_specs


def run_demo(settings: Settings, seconds: float, seed: int) -> int:
    shop = make_shop(seed=seed, users=60)
    with EmbeddedBroker(port=0) as broker:
        settings = dataclasses.replace(settings, bootstrap=broker.bootstrap)
        print(f"embedded broker at {broker.bootstrap}")
        create_topics(broker.bootstrap, topic_specs(settings))
        produce_items(broker.bootstrap, settings.topics.items, shop.items)
        n = produce_events(broker.bootstrap, settings.topics.events, shop.events)
        print(f"produced {len(shop.items)} items and {n} events")
        events = _read_back(settings, n, timeout_s=min(seconds, 30.0))
        sessions, late = sessionize(
            events, SessionConfig(settings.session_gap_ms, settings.max_session_len)
        )
        print(
            f"read back {len(events)} events; the sessionizer cut {len(sessions)} sessions "
            f"({len(late)} late events)"
        )
        for s in sessions[:10]:
            kinds = " ".join(f"{c.type}:{c.item_id}" for c in s.clicks[:6])
            print(f"  {s.user_id} {s.session_id} {len(s.clicks)} events  {kinds}")
    return 0


def _read_back(settings: Settings, expected: int, timeout_s: float) -> list[Event]:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(settings.bootstrap, f"demo-{time.time_ns()}"))
    consumer.subscribe([settings.topics.events])
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(events) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    continue
                try:
                    events.append(decode_event(msg.value() or b""))
                except DecodeError as exc:
                    print(f"rejected: {exc}")
    finally:
        consumer.close()
    events.sort(key=lambda e: e.ts)
    return events
