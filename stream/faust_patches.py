"""Changes to faust-streaming 0.15.3 (pinned) that the worker's speed and restores depend on.

- `short_fetch_wait`: faust hard-codes fetch_max_wait_ms=1500 for its consumer. A broker that
  holds a fetch for its full wait when no data is ready (Tansu does) makes that the latency
  floor, so the worker asks for at most FETCH_MAX_WAIT_MS; on Apache Kafka it only means idle
  polls.
- `true_changelog_ends`: tables are restored up to the real end of each changelog partition, not
  to the high watermark the embedded broker reports (short of the end), so the changelog can be
  written in batches.
- `keep_queued_on_resume`: resuming flow that is already flowing no longer empties the stream
  queues. faust resumes flow once to restore the tables, then again when the restore completes,
  after it has resumed the event partitions and while it seeks them: events fetched in that
  window sat in a queue that the second resume emptied, and since later events of their
  partition were acked, their offsets were committed. A restarted worker with a backlog lost
  about one event in ten runs this way under load, always the first one of a partition.
- `no_event_sensors`: faust's Monitor sensor times every message and event in Python that
  nothing here reads (faust's web view is off; the worker serves its own Prometheus metrics), so
  it no longer receives the per-event calls; it still runs, for faust's own uses of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 10
PROBE_TIMEOUT_S = 10.0
_applied: set[str] = set()


def short_fetch_wait() -> None:
    import aiokafka

    if "short_fetch_wait" in _applied:
        return
    original = aiokafka.AIOKafkaConsumer

    class ShortWaitConsumer(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = min(
                kwargs.get("fetch_max_wait_ms", 500), FETCH_MAX_WAIT_MS
            )
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = ShortWaitConsumer
    _applied.add("short_fetch_wait")


def true_changelog_ends(bootstrap: str) -> None:
    """Restore tables up to the real end of their changelog partitions.

    faust restores a table partition up to the high watermark the broker reports. The embedded
    broker (Tansu) reports the last record batch's base offset + 1, which is short of the end
    when that batch holds several records, so a restarted worker would restore part of the
    sessions. Here each reported high watermark is checked by reading from it - 1 to the end;
    on Apache Kafka that read finds exactly the reported value."""
    from faust.tables.recovery import Recovery

    if "true_changelog_ends" in _applied:
        return
    original = Recovery._build_highwaters

    async def _build_highwaters(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        ends = cast(Any, _TrueEnds(consumer, bootstrap))
        await original(self, ends, tps, destination, title)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    _applied.add("true_changelog_ends")


class _TrueEnds:
    """A faust consumer whose `highwaters` are the partitions' real log ends."""

    def __init__(self, consumer: Any, bootstrap: str):
        self.consumer = consumer
        self.bootstrap = bootstrap

    async def highwaters(self, *tps: Any) -> dict[Any, int | None]:
        reported = dict(await self.consumer.highwaters(*tps))
        return await asyncio.to_thread(log_ends, self.bootstrap, reported)


def log_ends(
    bootstrap: str, reported: dict[Any, int | None], timeout_s: float = PROBE_TIMEOUT_S
) -> dict[Any, int | None]:
    """The offset after the last record of each partition, reading from `reported` - 1.
    `reported` maps faust TPs (topic, partition) to the broker's high watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka import consumer_config

    probe = {tp: high for tp, high in reported.items() if high}
    if not probe:
        return reported
    consumer = Consumer(
        consumer_config(
            bootstrap,
            "sessionrec-log-ends",
            **{"enable.auto.commit": False, "fetch.wait.max.ms": 10},
        )
    )
    ends = dict(reported)
    found: dict[tuple[str, int], int] = {}
    try:
        consumer.assign(
            [TopicPartition(tp.topic, tp.partition, high - 1) for tp, high in probe.items()]
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            messages = consumer.consume(1000, 0.2)
            for msg in messages:
                if msg.error() is None:
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    found[key] = max(found.get(key, -1), int(msg.offset() or 0) + 1)
            if not messages and len(found) == len(probe):
                break
    finally:
        consumer.close()
    for tp, high in probe.items():
        end = found.get((tp.topic, tp.partition))
        if end is None:
            log.warning("could not read the end of %s[%d]: restoring up to %d", *tp, high)
        elif end > high:
            log.info("%s[%d] ends at %d (broker reported %d)", tp.topic, tp.partition, end, high)
            ends[tp] = end
    return ends


def keep_queued_on_resume(app: Any) -> None:
    """Make `app.flow_control.resume()` empty the queues it manages only when flow was
    suspended. Queues are emptied on resume to drop what was read before a rebalance; faust
    suspends flow (and empties them) when a rebalance starts, so what is queued while flow is
    active was read since and is still wanted. The streams also drop anything read in an
    earlier generation."""
    flow = app.flow_control
    resume = flow.resume

    def resume_keeping_queued() -> None:
        if flow.is_active():
            return
        resume()

    flow.resume = resume_keeping_queued


def no_event_sensors(app: Any) -> None:
    """Take faust's Monitor out of the sensors that are called for every message (after the
    app added it at startup)."""
    if app.monitor in set(app.sensors):
        app.sensors.remove(app.monitor)
        log.info("faust's per-event monitor sensor is off")
