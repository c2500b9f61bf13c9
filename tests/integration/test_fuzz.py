"""Any record is safe: hostile events, catalog records and model-updates through a live worker."""

from __future__ import annotations

from pathlib import Path

from sessionrec.benchmarks.reliability import fuzz
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.launch import WorkerProcess
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import unique_settings

EVENTS = 10_000
ITEMS = 500
UPDATES = 200


def test_hostile_records_never_stop_the_worker_nor_lose_a_good_event(
    broker: EmbeddedBroker, unique: str, retailrocket_model: Path, tmp_path: Path
) -> None:
    settings = unique_settings(broker.bootstrap, unique, str(retailrocket_model))
    create_topics(settings, topic_specs(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        result = fuzz(settings, EVENTS, ITEMS, UPDATES)
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail_log()
    finally:
        worker.stop()
    assert result.bad_events > EVENTS // 2
    assert result.dlq == result.bad_events  # every bad record, once per (partition, offset)
    assert result.dlq_missing_reason == 0
    assert result.good_answered == result.good > EVENTS // 5
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log, log[-3000:]
