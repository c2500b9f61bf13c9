"""confluent-kafka clients: settings shared by the tools, and the worker's output `Outbox`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import murmur2

from ..models.config import Settings

log = logging.getLogger(__name__)
# librdkafka's own lines (a broker down, a TLS failure) go through Python's logging under this
# name, delivered when the client is polled, so that the worker folds their repeats as it does
# faust's (stream.faust_adapter.RepeatFilter) instead of librdkafka writing to stderr.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

# An output message: topic, key, value, and its partition (None: the key's partition).
OutMessage = tuple[str, bytes | None, bytes | None, int | None]  # value None: a tombstone


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """murmur2 partitioning, as the Java client and faust do, so every producer of a user's
    events (whatever its language) agrees on that user's partition. Idempotent: a retried
    send is not written twice, and a partition's messages stay in order (a broker without
    idempotent producers needs `enable.idempotence = false` in [kafka])."""
    defaults = {
        "linger.ms": 2,
        "log_level": 3,
        "enable.idempotence": True,
        "logger": LIBRDKAFKA_LOG,
        **extra,
    }
    return settings.client_config(defaults, partitioner="murmur2_random")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition `producer_config`'s partitioner gives a message keyed `key` (Kafka's
    murmur2, as the Java client computes it)."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


def consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """A consumer that joins fast: a short poll interval bounds the broker's join wait."""
    defaults = {
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "session.timeout.ms": 6000,
        "max.poll.interval.ms": 10000,
        "log_level": 3,
        "logger": LIBRDKAFKA_LOG,
    }
    return settings.client_config(defaults, **{"group.id": group, **extra})


def ready_messages(consumer: Any, wait_s: float, most: int = 1000) -> list[Any]:
    """The messages ready now, waiting up to `wait_s` for the first one.

    `Consumer.consume(n, timeout)` waits the whole timeout unless n messages arrive, which
    adds up to `timeout` to every message's latency; polling for the first and then taking
    what is already there does not."""
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)]


def produce(
    producer: Any,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    on_delivery: Any = None,
    partition: int | None = None,
) -> None:
    """Produce, waiting for deliveries to drain while librdkafka's local queue is full.
    Without `partition`, the producer's partitioner picks one from the key."""
    extra: dict[str, Any] = {} if on_delivery is None else {"on_delivery": on_delivery}
    if partition is not None:
        extra["partition"] = partition
    while True:
        try:
            producer.produce(topic, key=key, value=value, **extra)
            return
        except BufferError:
            producer.poll(0.05)


class Outbox:
    """Output messages sent in batches and acknowledged per batch.

    `send(messages)` produces a batch's messages (topic, key, value, partition or None for the
    key's partition) and returns an asyncio future that resolves once the broker has
    acknowledged every one of them, so a caller can ack the events behind them then
    (at-least-once) while it already works on the next batch. A message the broker refuses is
    produced again, up to `attempts` times in all; after that the future fails with the broker's
    reason. A message that can never be delivered as it is (larger than the producer or the
    broker takes, or malformed) is dropped, logged and counted (`take_dropped`), never retried:
    it fails that message, not its batch. `delivered` names, per topic, a function called
    with (partition, offset) of each message delivered there.

    librdkafka's delivery reports are served on the event loop's own thread, every `poll_s`
    while batches wait: a report served in another thread would take the GIL from the event
    loop once per message."""

    def __init__(
        self,
        config: dict[str, Any],
        attempts: int = 5,
        poll_s: float = 0.005,
        delivered: dict[str, Callable[[int, int], None]] | None = None,
    ):
        from confluent_kafka import Producer

        self.attempts = attempts
        self._on_delivered = delivered or {}  # topic -> called with (partition, offset)
        self._producer = Producer(config)
        self._left: dict[int, int] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._next = 0
        self._retried = 0
        self._dropped: dict[str, int] = {}
        self._poll_s = poll_s
        self._serving: asyncio.Task[None] | None = None

    def send(self, messages: list[OutMessage]) -> asyncio.Future[None]:
        """Produce `messages`; the future resolves once all are delivered. Call from the event
        loop's thread."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not messages:
            done.set_result(None)
            return done
        batch = self._next
        self._next += 1
        self._left[batch] = len(messages)
        self._waiting[batch] = done
        for topic, key, value, partition in messages:
            self._produce(batch, 1, topic, key, value, partition)
        self._producer.poll(0)
        if self._serving is None or self._serving.done():
            self._serving = loop.create_task(self._serve())
        return done

    def take_retried(self) -> int:
        """Messages produced again since the last call."""
        retried, self._retried = self._retried, 0
        return retried

    def take_dropped(self) -> dict[str, int]:
        """Messages dropped as undeliverable since the last call, per topic."""
        dropped, self._dropped = self._dropped, {}
        return dropped

    def close(self, timeout_s: float = 30.0) -> int:
        """Deliver what is queued (outside the event loop, which may be gone); returns
        messages left."""
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()
        return int(self._producer.flush(timeout_s))

    async def _serve(self) -> None:
        """Serve delivery reports while batches wait for them."""
        while self._waiting:
            await asyncio.sleep(self._poll_s)
            try:
                self._producer.poll(0)
            except Exception:  # a report's handler failed: keep serving the others
                log.exception("serving delivery reports failed")

    def _produce(
        self,
        batch: int,
        attempt: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
    ) -> None:
        from confluent_kafka import KafkaException

        def report(err: Any, msg: Any) -> None:
            self._report(batch, attempt, err, msg, partition)

        try:
            produce(self._producer, topic, key, value, report, partition)
        except KafkaException as exc:
            if not _undeliverable(exc.args[0]):
                raise
            self._drop(batch, topic, len(value or b""), exc.args[0].str())

    def _drop(self, batch: int, topic: str, size: int, reason: str) -> None:
        self._dropped[topic] = self._dropped.get(topic, 0) + 1
        log.error("output message to %s dropped, %d bytes: %s", topic, size, reason)
        self._delivered(batch)

    def _report(self, batch: int, attempt: int, err: Any, msg: Any, partition: int | None) -> None:
        if err is not None and _undeliverable(err):
            self._drop(batch, msg.topic(), len(msg.value() or b""), err.str())
            return
        if err is not None and attempt < self.attempts:
            self._retried += 1
            log.warning(
                "output to %s refused (%s): producing it again, attempt %d of %d",
                msg.topic(),
                err.str(),
                attempt + 1,
                self.attempts,
            )
            try:
                self._produce(batch, attempt + 1, msg.topic(), msg.key(), msg.value(), partition)
            except Exception as exc:  # cannot even be produced again: the batch fails
                self._fail(batch, RuntimeError(f"output message to {msg.topic()}: {exc}"))
            return
        if err is not None:
            reason = f"output message to {msg.topic()} refused {attempt} times: {err.str()}"
            self._fail(batch, RuntimeError(reason))
            return
        note = self._on_delivered.get(msg.topic())
        if note is not None:
            note(msg.partition(), msg.offset())
        self._delivered(batch)

    def _delivered(self, batch: int) -> None:
        """One message of `batch` is settled."""
        if batch not in self._left:  # already failed
            return
        self._left[batch] -= 1
        if not self._left[batch]:
            del self._left[batch]
            _settle(self._waiting.pop(batch), None)

    def _fail(self, batch: int, failure: BaseException) -> None:
        if batch in self._left:
            del self._left[batch]
            _settle(self._waiting.pop(batch), failure)


def _undeliverable(err: Any) -> bool:
    """Whether a produce error is the message's own and permanent (retrying cannot help)."""
    from confluent_kafka import KafkaError

    return err.code() in {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }


def _settle(done: asyncio.Future[None], failure: BaseException | None) -> None:
    if done.done():
        return
    try:
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
    except RuntimeError:  # its event loop is closed (reports served by `close`)
        pass
