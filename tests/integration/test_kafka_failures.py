"""Each command that talks to Kafka fails in one line, within a bounded time and without a
traceback or the password, when the broker refuses its credentials, does not offer its SASL
mechanism, or does not answer: against real brokers (the embedded broker with and without
SASL authentication). A worker whose partitions do not match the events topic does not start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionrec.models.config import to_env
from sessionrec.stream.broker import CONNECT_TIMEOUT_S, EmbeddedBroker, free_port
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import unique_settings

PASSWORD = "not-a-real-password-7d1f"
COMMANDS = {
    "worker": ["worker"],
    "tail": ["tail", "--max", "1"],
    "topics": ["topics"],
    "train": ["train", "--format", "topic", "--epochs", "1"],
}


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[EmbeddedBroker]:
    """A broker that requires SASL (SCRAM) from every client; it knows no users."""
    with EmbeddedBroker(port=0, authentication=True) as running:
        yield running


def _run(command: list[str], bootstrap: str, tmp_path: Path, mechanism: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "SESSIONREC_BOOTSTRAP": bootstrap,
        "SESSIONREC_MODEL_DIR": str(tmp_path / "models"),
        "SESSIONREC_METRICS_PORT": "0",
        "SESSIONREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SESSIONREC_KAFKA_SASL_MECHANISM": mechanism,
        "SESSIONREC_KAFKA_SASL_USERNAME": "shop",
        "SESSIONREC_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    done = subprocess.run(
        [sys.executable, "-m", "sessionrec.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=CONNECT_TIMEOUT_S + 30,
        cwd=tmp_path,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_wrong_credentials_fail_in_one_line(
    sasl_broker: EmbeddedBroker, tmp_path: Path, name: str
) -> None:
    started = time.monotonic()
    code, out = _run(COMMANDS[name], sasl_broker.bootstrap, tmp_path, "SCRAM-SHA-256")
    assert time.monotonic() - started < 20  # refused credentials are not retried
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith(f"sessionrec: error: Kafka at {sasl_broker.bootstrap} refused")
    assert "SASL authentication error" in lines[0]
    assert PASSWORD not in out


def test_a_mechanism_the_broker_does_not_offer_fails_in_one_line(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    code, out = _run(COMMANDS["worker"], broker.bootstrap, tmp_path, "SCRAM-SHA-512")
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "Unsupported SASL mechanism" in lines[0], out
    assert PASSWORD not in out


def test_a_worker_with_no_broker_gives_up_in_bounded_time(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, out = _run(COMMANDS["worker"], nobody, tmp_path, "SCRAM-SHA-256")
    took = time.monotonic() - started
    assert code == 2 and CONNECT_TIMEOUT_S <= took < CONNECT_TIMEOUT_S + 15, (took, out)
    lines = out.strip().splitlines()
    assert lines == [lines[0]] and f"Kafka at {nobody} did not answer" in lines[0], out
    assert PASSWORD not in out


def test_a_worker_refuses_partitions_that_do_not_match_the_events_topic(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    settings = unique_settings(broker.bootstrap, unique, str(tmp_path / "models"), partitions=4)
    create_topics(settings, topic_specs(settings))
    env = {**os.environ, **to_env(settings), "SESSIONREC_PARTITIONS": "6"}
    done = subprocess.run(
        [sys.executable, "-m", "sessionrec.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert lines == [
        f"sessionrec: error: topic '{settings.topics.events}' has 4 partitions but the setting "
        "'partitions' is 6: set partitions = 4 (the session table is partitioned as events)"
    ]


def test_a_worker_whose_topics_vanish_with_a_restarted_broker_stops_in_one_line(
    unique: str, tmp_path: Path
) -> None:
    from sessionrec.stream.app import TOPIC_CHECK_S
    from sessionrec.stream.launch import WorkerProcess
    from sessionrec.stream.topics import GONE_CHECKS

    first = EmbeddedBroker(port=0).start()
    port = first.port
    settings = unique_settings(first.bootstrap, unique, str(tmp_path / "models"), partitions=2)
    create_topics(settings, topic_specs(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(60)
        time.sleep(TOPIC_CHECK_S)  # the worker's check has seen its topics
        first.stop()
        with EmbeddedBroker(port=port):  # the same address, memory storage: no topics
            assert worker.proc is not None
            code = worker.proc.wait(timeout=(GONE_CHECKS + 2) * TOPIC_CHECK_S + 30)
    finally:
        worker.stop()
        first.stop()
    log = worker.log_path.read_text(errors="replace")
    assert code == 2, worker.tail_log()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == (
        f"sessionrec: error: topic '{settings.topics.events}' is gone from the broker at "
        f"{settings.bootstrap} (an embedded broker keeps nothing when it restarts): create the "
        "topics ('sessionrec topics') and start the worker again"
    )
