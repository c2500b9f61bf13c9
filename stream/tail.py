"""Follow the recommendations topic and print each message."""

from __future__ import annotations

import sys
import time

from ..models.codec import DecodeError, decode_recommendation
from ..models.config import Settings
from ..models.records import Recommendation
from .kafka import consumer_config

# An event answered this long after its event time is history being replayed (or very late):
# the gap says when the event happened, not how long the answer took.
HISTORICAL_MS = 3_600_000


def pretty(rec: Recommendation, width: int = 4) -> str:
    top = ", ".join(f"{i['item_id']}({i['score']:.2f}|{i['intent']})" for i in rec.items[:width])
    latency = rec.emitted_ts - rec.event_ts
    if latency > HISTORICAL_MS:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rec.event_ts / 1000))
        timing = f"event time {when} UTC, historical"
    else:
        timing = f"event time to answer {latency} ms"
    return (
        f"{rec.user_id:<12} {rec.type or '':<16} {rec.item_id or '':<12} -> {top}"
        f"  [{rec.reason}, {len(rec.intents)} intents, model {rec.model_version}, {timing}]"
    )


def tail(
    settings: Settings,
    as_json: bool = False,
    from_beginning: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer(
        consumer_config(
            settings,
            f"sessionrec-tail-{time.time_ns()}",
            **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
        )
    )
    consumer.subscribe([settings.topics.recommendations])
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if timeout_s is not None and time.monotonic() - last > timeout_s:
                    break
                continue
            last = time.monotonic()
            seen += 1
            raw = msg.value() or b""
            if as_json:
                print(raw.decode("utf-8", "replace"), flush=True)
                continue
            try:
                print(pretty(decode_recommendation(raw)), flush=True)
            except DecodeError as exc:
                print(f"undecodable message: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
