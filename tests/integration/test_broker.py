from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from faust.types import TP

from sessionrec.models.codec import DecodeError, decode_event, encode
from sessionrec.models.config import TopicConfig, to_env
from sessionrec.models.records import Event
from sessionrec.stream.broker import EmbeddedBroker, free_port
from sessionrec.stream.faust_adapter import log_ends
from sessionrec.stream.kafka import Outbox, consumer_config, producer_config
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import consume, unique_settings

READ_TIMEOUT_S = 30.0


def test_events_round_trip_through_the_broker(broker: EmbeddedBroker, unique: str) -> None:
    settings = unique_settings(broker.bootstrap, unique, "unused")
    topic = settings.topics.events
    create_topics(settings, topic_specs(settings))
    sent = [Event(f"u{i % 7}", f"i{i}", "view", 1_700_000_000_000 + i) for i in range(200)]
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for e in sent:
        producer.produce(topic, key=e.user_id.encode(), value=encode(e))
    producer.produce(topic, key=b"bad", value=b'{"user_id":"u"}')
    assert producer.flush(10) == 0

    consumer = Consumer(consumer_config(settings, f"g-{unique}"))
    consumer.subscribe([topic])
    got: list[Event] = []
    errors: list[str] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(got) + len(errors) < len(sent) + 1 and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            try:
                got.append(decode_event(msg.value()))
            except DecodeError as exc:
                errors.append(str(exc))
    consumer.close()
    assert sorted(got, key=lambda e: e.item_id) == sorted(sent, key=lambda e: e.item_id)
    assert errors == ["event: field 'item_id' is missing, expected a non-empty string"]


def test_topics_are_created_idempotently(broker: EmbeddedBroker, unique: str) -> None:
    settings = unique_settings(broker.bootstrap, unique, "unused", partitions=2)
    first = create_topics(settings, topic_specs(settings))
    second = create_topics(settings, topic_specs(settings))
    assert len(first) == 6 and second == []
    meta = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert len(meta.topics[settings.topics.events].partitions) == 2


def test_cli_broker_answers_metadata_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionrec.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"bootstrap: 127.0.0.1:{port}"
        meta = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert len(meta.brokers) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    with socket.socket() as s:  # the port is released
        s.bind(("127.0.0.1", port))


def test_cli_broker_says_when_the_port_is_taken(broker: EmbeddedBroker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionrec.cli", "broker", "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"port {broker.port} on 127.0.0.1 is already in use" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_broker_restarts_on_the_same_port_at_once(unique: str) -> None:
    """A broker stopped while clients were connected leaves its port's connections in
    TIME_WAIT; the next one takes the port all the same."""
    with EmbeddedBroker(port=0) as first:
        port = first.port
        producer = Producer({"bootstrap.servers": first.bootstrap})
        producer.produce(unique, b"x")
        assert producer.flush(10) == 0
    with EmbeddedBroker(port=port) as second:
        assert AdminClient({"bootstrap.servers": second.bootstrap}).list_topics(timeout=10).brokers


def test_context_manager_starts_and_stops() -> None:
    with EmbeddedBroker(port=0) as extra:
        port = extra.port
        assert AdminClient({"bootstrap.servers": extra.bootstrap}).list_topics(timeout=10).brokers
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_outbox_resolves_each_batch_once_the_broker_has_it(
    broker: EmbeddedBroker, unique: str
) -> None:
    settings = unique_settings(broker.bootstrap, unique, "unused")
    topic = settings.topics.recommendations
    create_topics(settings, topic_specs(settings))
    outbox = Outbox(producer_config(settings))

    async def send_all() -> list[bool]:
        batches = [
            outbox.send([(topic, f"u{b}".encode(), f"{b}-{i}".encode(), None) for i in range(50)])
            for b in range(5)
        ]
        batches.append(outbox.send([]))  # nothing to deliver: resolves at once
        await asyncio.wait_for(asyncio.gather(*batches), READ_TIMEOUT_S)
        return [b.done() and b.exception() is None for b in batches]

    try:
        assert asyncio.run(send_all()) == [True] * 6
        assert outbox.take_retried() == 0
    finally:
        assert outbox.close() == 0
    consumer = Consumer(consumer_config(settings, f"g-{unique}"))
    consumer.subscribe([topic])
    got: set[bytes] = set()
    deadline = time.monotonic() + READ_TIMEOUT_S
    while len(got) < 250 and time.monotonic() < deadline:
        got.update(m.value() for m in consumer.consume(500, 0.5) if not m.error())
    consumer.close()
    assert got == {f"{b}-{i}".encode() for b in range(5) for i in range(50)}


def test_log_ends_reads_past_a_short_high_watermark(broker: EmbeddedBroker, unique: str) -> None:
    """The embedded broker reports a partition's high watermark as its last record batch's
    base offset + 1: restoring a table up to it would miss the rest of that batch."""
    settings = unique_settings(broker.bootstrap, unique, "unused", partitions=1)
    topic = settings.topics.sessions
    create_topics(settings, topic_specs(settings))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for i in range(10):  # one record batch
        producer.produce(topic, key=b"u", value=str(i).encode(), partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(settings, f"g-{unique}"))
    _, reported = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    assert reported < 10  # the broker's view, short of the end
    tp = TP(topic, 0)
    assert log_ends(settings, {tp: reported}) == {tp: 10}
    assert log_ends(settings, {tp: 0}) == {tp: 0}  # empty: nothing to read


def test_topics_follow_the_layout_and_differences_are_reported(
    broker: EmbeddedBroker, unique: str
) -> None:
    settings = unique_settings(broker.bootstrap, unique, "unused", partitions=3)
    layout = settings.topic_layout
    settings = dataclasses.replace(
        settings,
        topic_layout=dataclasses.replace(
            layout,
            recommendations=TopicConfig(compact=True),
            events=TopicConfig(retention_hours=168),
            dlq=TopicConfig(partitions=1, retention_hours=-1),
        ),
    )
    # An existing topic made before, with 2 partitions and no compaction.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(settings.topics.recommendations, 2, 1)])[
        settings.topics.recommendations
    ].result(10)

    env = {**os.environ, **to_env(settings)}
    run = [sys.executable, "-m", "sessionrec.cli", "topics", "--check"]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert f"topic '{settings.topics.recommendations}': 2 partitions, the settings ask for 3" in (
        "\n".join(lines)
    )
    assert any("cleanup.policy delete, the settings ask for compact" in x for x in lines), lines
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[settings.topics.dlq].partitions) == 1
    assert len(meta[settings.topics.events].partitions) == 3
    found = {
        r.name: {k: v.value for k, v in f.result(10).items()}
        for r, f in admin.describe_configs(
            [
                ConfigResource("topic", settings.topics.events),
                ConfigResource("topic", settings.topics.dlq),
            ]
        ).items()
    }
    assert found[settings.topics.events]["retention.ms"] == str(168 * 3_600_000)
    assert found[settings.topics.dlq]["retention.ms"] == "-1"

    # Without --check the same differences are printed, and the command succeeds.
    again = subprocess.run(run[:-1], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0
    assert again.stdout.count("differs:") == done.stdout.count("differs:") == 2


def test_training_reads_a_topic_to_its_true_end(broker: EmbeddedBroker, unique: str) -> None:
    """Training from topics reads every record, also of a last record batch that holds
    several, and says how much it read, tombstones included."""
    from sessionrec.training.replay import TopicRead, read_topic

    settings = unique_settings(broker.bootstrap, unique, "unused", partitions=2)
    topic = settings.topics.items
    create_topics(settings, topic_specs(settings))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for i in range(25):  # one record batch per partition
        producer.produce(topic, key=f"i{i}".encode(), value=str(i).encode(), partition=i % 2)
    producer.produce(topic, key=b"i0", value=None, partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(settings, f"g-{unique}"))
    _, reported = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    assert reported < 14  # the broker's view of partition 0, short of its 14 records
    read = TopicRead(topic)
    records = list(read_topic(settings, topic, timeout_s=10, read=read))
    assert sorted(int(v) for _, v in records if v is not None) == list(range(25))
    assert records[-1] == (b"i0", None) or (b"i0", None) in records
    assert (read.records, read.tombstones, read.ends) == (25, 1, {0: 14, 1: 12})
    assert read.line() == (
        f"{topic}: 25 records and 1 tombstones read to the end of its 2 partitions "
        "(offsets 26 in all)"
    )


def _with_topics(broker: EmbeddedBroker, unique: str, tmp_path: Path) -> Any:
    settings = unique_settings(broker.bootstrap, unique, str(tmp_path), partitions=1)
    create_topics(settings, topic_specs(settings))
    return settings


def _cli(settings: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`sessionrec ARGS` in this process with `settings` in its environment: the exit code and
    what it wrote to stderr."""
    from sessionrec.cli import main

    with pytest.MonkeyPatch.context() as patch:
        for name, value in to_env(settings).items():
            patch.setenv(name, value)
        code = main(list(args))
    return code, capsys.readouterr().err


def test_replay_limit_0_sends_no_events_and_the_catalog(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessionrec.models.records import Item

    settings = _with_topics(broker, unique, tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(encode(Event("u", f"i{n}", "view", 1_000 + n)) for n in range(3)))
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(encode(Item("i0", name="a shoe")))
    args = ["replay", str(events), "--format", "jsonl", "--catalog", str(catalog)]
    code, err = _cli(settings, capsys, *args, "--limit", "0")
    assert code == 0 and "produced 0 events" in err
    code, err = _cli(settings, capsys, *args, "--limit", "-1")
    assert code == 2 and "--limit is -1: give a number of events, 0 or more" in err
    assert consume(settings.bootstrap, settings.topics.events, lambda v: False, idle_s=2) == []
    items = consume(settings.bootstrap, settings.topics.items, lambda v: len(v) >= 1, idle_s=5)
    assert len(items) == 1


def test_catalog_load_sends_a_catalog_file_to_items(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessionrec.models.codec import decode_item
    from sessionrec.models.records import Item

    settings = _with_topics(broker, unique, tmp_path)
    catalog = tmp_path / "catalog.jsonl"
    rows = [encode(Item(f"i{n}", name=f"shoe {n}", category="shoes", price=10.0)) for n in range(3)]
    catalog.write_bytes(b"\n".join([*rows, b'{"name": "no id"}']))
    code, err = _cli(settings, capsys, "catalog", "load", str(catalog), "--no-progress")
    summary = err.strip().splitlines()[-1]
    assert code == 0, err
    assert summary.startswith(f"loaded 3 catalog items from {catalog} to {settings.topics.items}")
    assert "rejected rows: 1 " in summary
    code, err = _cli(settings, capsys, "catalog", "load", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err
    got = consume(settings.bootstrap, settings.topics.items, lambda v: len(v) >= 3, idle_s=5)
    assert sorted(decode_item(v).item_id for v in got) == ["i0", "i1", "i2"]


def test_training_takes_an_item_tombstone_as_its_deletion(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    from sessionrec.models.records import Item
    from sessionrec.training.data import load_topic

    settings = _with_topics(broker, unique, tmp_path)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for item_id in ("kept", "gone"):
        producer.produce(settings.topics.items, key=item_id.encode(), value=encode(Item(item_id)))
    producer.produce(settings.topics.items, key=b"gone", value=None)
    assert producer.flush(10) == 0
    corpus = load_topic(settings, settings.topics.sessions, settings.topics.items, timeout_s=10)
    assert [item.item_id for item in corpus.items] == ["kept"]
    assert f"{settings.topics.items}: 2 records and 1 tombstones read" in corpus.report()
    # With a catalog file: its items, and the topic's records over them (they are newer).
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(
        b"\n".join(encode(Item(i, name="from the file")) for i in ("kept", "gone", "file-only"))
    )
    corpus = load_topic(
        settings, settings.topics.sessions, settings.topics.items, 10, catalog_file=catalog
    )
    assert {item.item_id: item.name for item in corpus.items} == {
        "kept": None,
        "file-only": "from the file",
    }
    assert f"{catalog}: 3 catalog items" in corpus.report()
