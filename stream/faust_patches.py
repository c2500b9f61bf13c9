"""Changes to faust-streaming 0.15.3 (pinned) that the worker's speed and restores depend on.

- `short_fetch_wait`: faust hard-codes fetch_max_wait_ms=1500 for its consumer. A broker that
  holds a fetch for its full wait when no data is ready (Tansu does) makes that the latency
  floor, so the worker asks for at most FETCH_MAX_WAIT_MS; on Apache Kafka it only means idle
  polls.
- `true_changelog_ends`: tables are restored up to the real end of each changelog partition, not
  to the high watermark the embedded broker reports (short of the end), so the changelog can be
  written in batches.
- `eager_delivery`: faust's consumer hands each message to the streams through `wait_first`,
  which creates and cancels four tasks per message (about 40 µs here) so that a delivery stuck
  behind flow control can be abandoned on a rebalance. Here a delivery first runs in place; only
  one that has to wait goes through `wait_first`, with the same abandon rule.
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


def eager_delivery() -> None:
    """Deliver each fetched message to the streams without tasks when nothing makes it wait."""
    import faust
    from faust.transport import consumer as consumer_module

    if "eager_delivery" in _applied:
        return
    if faust.__version__ != "0.15.3":
        log.warning(
            "faust %s is not 0.15.3: its message delivery is left as it is", faust.__version__
        )
        return
    consumer_module.Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    _applied.add("eager_delivery")


async def deliver(callback: Any, message: Any, consumer: Any) -> None:
    """`await callback(message)`, abandoned (cancelled) if the consumer suspends its flow while
    the callback waits, as faust's `wait_first(callback(message), suspend_flow.wait())`; but a
    callback that completes without waiting (the usual case) runs in place, with no tasks."""
    coro = callback(message)
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    await consumer.wait_first(Resumed(coro, waiting), consumer.suspend_flow.wait())


class Resumed:
    """An awaitable that continues a coroutine already started by hand, from the future it
    yielded: a task awaiting it drives the coroutine on, cancellation included."""

    def __init__(self, coro: Any, waiting: Any):
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Any:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # thrown in by the task: cancellation
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                waiting = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
    """faust 0.15.3's `Consumer._drain_messages`, delivering through `deliver`."""
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await deliver(callback, message, self)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value
                        )
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
