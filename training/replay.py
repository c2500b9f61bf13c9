"""Read a Kafka topic from its beginning to its end (for training from topics)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..models.config import Settings


@dataclass
class TopicRead:
    """What reading a topic found: per partition, the first offset read and the offset after
    the last (the partition's end when the read finished), and the records read."""

    topic: str
    starts: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    records: int = 0  # with a value
    tombstones: int = 0  # a key and no value

    def line(self) -> str:
        held = sum(self.ends[p] - self.starts.get(p, self.ends[p]) for p in self.ends)
        return (
            f"{self.topic}: {self.records:,} records and {self.tombstones:,} tombstones read to "
            f"the end of its {len(self.ends)} partitions (offsets {held:,} in all)"
        )


def read_topic(
    settings: Settings, topic: str, timeout_s: float = 30.0, read: TopicRead | None = None
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """The topic's records (key, value; a tombstone's value is None) from its beginning to its
    end, at least its end when reading began; `read`, when given, is filled with what was read.
    Each partition is read until the broker says it is at its end (librdkafka's end-of-partition
    event), not to the high watermark it reports: the embedded broker reports the last record
    batch's base offset + 1, short of the end when that batch holds several records. A broker
    that cannot be reached, or a partition that stops short of its end for `timeout_s`, is a
    one-line ValueError."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    bootstrap = settings.bootstrap
    found = read if read is not None else TopicRead(topic)
    consumer = Consumer(
        settings.client_config(
            {"log_level": 3},
            **{
                "group.id": f"sessionrec-train-{topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
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
        reported: dict[int, int] = {}  # partition -> the high watermark reported at the start
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            found.starts[p], found.ends[p] = low, low
            if high > low:
                reported[p] = high
        consumer.assign([TopicPartition(topic, p, found.starts[p]) for p in reported])
        progress = time.monotonic()
        while reported:
            messages = consumer.consume(1000, 0.5)
            if messages:
                progress = time.monotonic()
            for msg in messages:
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                error = msg.error()
                if error is not None:
                    # At its end: past the reported watermark, so at least where it ended then.
                    if error.code() == KafkaError._PARTITION_EOF and offset >= reported.get(
                        partition, 0
                    ):
                        reported.pop(partition, None)
                    continue
                found.ends[partition] = max(found.ends[partition], offset + 1)
                value = msg.value()
                if value is None:
                    found.tombstones += 1
                else:
                    found.records += 1
                yield msg.key(), value
            if reported and time.monotonic() - progress > timeout_s:
                short = ", ".join(
                    f"partition {p} read to {found.ends[p]} of at least {high}"
                    for p, high in sorted(reported.items())
                )
                raise ValueError(
                    f"topic {topic!r} at {bootstrap} stopped short of its end for "
                    f"{timeout_s:g} s ({short}); nothing was trained"
                )
    finally:
        consumer.close()
